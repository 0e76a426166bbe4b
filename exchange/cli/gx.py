"""The `gx` command line: one entry point for every process and tool of the exchange."""

from __future__ import annotations

import argparse
import signal
import sys

from exchange.cli import (
    admin,
    audit,
    bench,
    clock,
    engine,
    funds,
    gateway,
    keys,
    marketdata,
    provision,
    sandbox,
    settle,
    sim,
    topics,
)
from streams.process import tune_gc


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser; each subcommand registers itself here."""
    parser = argparse.ArgumentParser(prog="gx", description="GPU-hour exchange")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in (engine, clock, topics, settle, marketdata, provision, audit, gateway):
        command.register(subparsers)  # the processes, in the order data flows through them
    for command in (keys, funds, admin, sandbox, bench, sim):
        command.register(subparsers)
    return parser


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # SIGTERM (a timeout, a supervisor) unwinds like Ctrl-C, so `with` blocks stop what they
    # started: an embedded PostgreSQL is a separate process and would outlive us otherwise.
    # Long-running processes install their own handlers on their event loop.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Run the `gx` command line."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    tune_gc()  # every gx command is a long-running process or a benchmark of one
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
