"""`gx clock`: a clock tick to every shard every `GX_CLOCK_INTERVAL_MS`."""

from __future__ import annotations

import argparse

from exchange.cli.process import add_bootstrap, serve_command
from streams.clock import Clock

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `clock`."""
    parser = subparsers.add_parser("clock", help="send a clock tick to every shard every second")
    add_bootstrap(parser)
    parser.add_argument(
        "--interval-ms", type=int, help="milliseconds between ticks (default: GX_CLOCK_INTERVAL_MS)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the clock until stopped; return the exit status."""
    overrides = {} if args.interval_ms is None else {"clock_interval_ms": args.interval_ms}
    return serve_command("clock", args, Clock, **overrides)
