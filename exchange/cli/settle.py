"""`gx settle`: run the settlement writer, gx.events into the PostgreSQL ledger, until stopped."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from streams.embedded.postgres import open_database
from streams.process import lower_priority, run_loop
from streams.settings import Settings, load_settings
from streams.settlement import CONSUMER_DEFAULT, SettlementWriter

__all__ = ["register", "run"]

progress_interval_s = 10.0
log = logging.getLogger("gx.settle")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `settle` to the `gx` command line."""
    p = subparsers.add_parser(
        "settle",
        help="settle gx.events into the PostgreSQL ledger",
        description="Consume gx.events into the ledger (postings, trades, orders, positions, "
        "deliveries), idempotent on the record position. Stop with Ctrl-C or SIGTERM.",
    )
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: GX_KAFKA_BOOTSTRAP)")
    p.add_argument("--dsn", help="PostgreSQL URL (default: GX_DATABASE_URL, else an embedded one)")
    p.add_argument("--consumer", default=CONSUMER_DEFAULT, help="name of the stored position")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the writer until SIGINT or SIGTERM; return the exit status."""
    try:
        settings = load_settings()
    except ValueError as error:
        print(f"gx settle: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s %(message)s"
    )
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    if not bootstrap:
        print(
            "gx settle: no Kafka cluster: set GX_KAFKA_BOOTSTRAP=host:port (or pass --bootstrap). "
            "The embedded broker lives inside one process, so a separate settlement process "
            "needs a real Kafka cluster.",
            file=sys.stderr,
        )
        return 2
    dsn = args.dsn or settings.database_url
    if dsn:
        return _serve(settings, dsn, bootstrap, args.consumer)
    print(
        "gx settle: GX_DATABASE_URL is not set: settling into an embedded PostgreSQL that "
        "is deleted on exit",
        file=sys.stderr,
    )
    with open_database() as embedded_dsn:
        return _serve(settings, embedded_dsn, bootstrap, args.consumer)


def _serve(settings: Settings, dsn: str, bootstrap: str, consumer: str) -> int:
    writer = SettlementWriter(settings, dsn, bootstrap, consumer=consumer)
    lower_priority(settings.settle_nice)
    run_loop(_supervise(writer))
    return 0


async def _supervise(writer: SettlementWriter) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(writer.stop()))
    task = asyncio.ensure_future(writer.run())
    while not task.done():
        await asyncio.wait([task], timeout=progress_interval_s)
        log.info("progress %s", writer.counters)
    with contextlib.suppress(asyncio.CancelledError):
        await task
