"""`gx sandbox` (what `make sandbox` runs): the whole exchange embedded, with a living market.

    gx sandbox                    # page on http://127.0.0.1:8080/, bots trading
    gx sandbox --no-bots          # an empty market
    gx sandbox --port 9000 --seed 42

Settings come from `GX_*` (streams/settings.py) too: `GX_GATEWAY_HOST`, `GX_GATEWAY_PORT`,
`GX_GATEWAY_MASTER_KEY` (else a random one), `GX_DATABASE_URL` (an empty database; else a
private PostgreSQL), `GX_LOG_LEVEL`. The broker is always the embedded one. Ctrl-C or SIGTERM
stops everything and leaves no process behind; exit status 0 after a clean stop, 1 when a part
failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

import msgspec
import uvloop

from exchange.gateway.keys import check_master_key
from exchange.sandbox.run import Sandbox, SandboxError, SandboxOptions, run_sandbox
from streams.settings import Settings, load_settings

__all__ = ["register", "run", "main"]

_PROG = "gx sandbox"
DEFAULT_SEED = 7


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sandbox's options."""
    parser.add_argument(
        "--no-bots", action="store_true", help="start no simulated traders: an empty market"
    )
    parser.add_argument("--host", help="listen address (default: GX_GATEWAY_HOST, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: GX_GATEWAY_PORT, 8080)")
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"the bots' random seed ({DEFAULT_SEED})"
    )
    # For `gx bench soak`, which starts the sandbox as a child process and drives it.
    parser.add_argument("--gate-closure-lead-s", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", type=Path, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sandbox` to the `gx` command line."""
    parser = subparsers.add_parser(
        "sandbox",
        help="run the whole exchange embedded, with demo keys and simulated traders",
        description="Start an embedded broker and PostgreSQL, the engine, settlement, market "
        "data, provisioning, the clock and the gateway with the market page, fund demo "
        "accounts, print their API keys, and let bots trade. Ctrl-C stops everything.",
    )
    add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run the sandbox until SIGINT or SIGTERM; return the exit status."""
    try:
        settings = load_settings()
        if settings.gateway_master_key:  # else the sandbox makes a random one
            check_master_key(settings.gateway_master_key)
    except ValueError as error:
        print(f"{_PROG}: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if settings.kafka_bootstrap:
        print(f"{_PROG}: GX_KAFKA_BOOTSTRAP is ignored: the sandbox runs its own broker")
    options = SandboxOptions(
        host=args.host or settings.gateway_host,
        port=settings.gateway_port if args.port is None else args.port,
        bots=not args.no_bots,
        seed=args.seed,
        gate_closure_lead_s=getattr(args, "gate_closure_lead_s", None),
    )
    try:
        uvloop.run(_serve(options, settings, getattr(args, "ready_file", None)))
    except (SandboxError, ValueError, OSError) as error:
        print(f"{_PROG}: {error}", file=sys.stderr)
        return 1
    return 0


def write_ready_file(path: Path, sandbox: Sandbox) -> None:
    """Write where the running sandbox's parts are, as JSON, for a program that drives it."""
    assert sandbox.broker is not None
    info = {
        "pid": os.getpid(),
        "url": sandbox.url,
        "ws_url": sandbox.ws_url,
        "bootstrap": sandbox.broker.bootstrap_servers,
        "broker_pid": sandbox.broker.pid,
        "dsn": sandbox.dsn,
        "postgres_pid": sandbox.postgres_pid,
        "gate_closure_lead_ns": sandbox.catalog.gate_closure_lead_ns,
        "demo_keys": {name: msgspec.to_builtins(key) for name, key in sandbox.demo_keys.items()},
    }
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(msgspec.json.encode(info))
    partial.replace(path)  # a reader polling for the file never sees half of it


async def _serve(options: SandboxOptions, settings: Settings, ready_file: Path | None) -> None:
    """Run until a signal; a second signal while stopping is reported, not fatal."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            print(f"{_PROG}: already stopping; please wait", flush=True)
            return
        print(f"\n{_PROG}: {signal.Signals(signum).name}: stopping", flush=True)
        stop.set()

    def own_signals(_: object = None) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)

    def on_ready(sandbox: Sandbox) -> None:
        own_signals()
        if ready_file is not None:
            write_ready_file(ready_file, sandbox)

    own_signals()
    try:
        # uvicorn takes SIGINT and SIGTERM when the gateway starts (it would stop the gateway
        # alone, before the bots); take them back once everything runs, to stop in order.
        await run_sandbox(options, stop, settings=settings, ready=on_ready)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    """Run `gx sandbox` on its own (`python -m exchange.cli.sandbox`)."""
    parser = argparse.ArgumentParser(prog=_PROG, description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
