"""`gx settle`: run the settlement writer, gx.events into the PostgreSQL ledger, until stopped."""

from __future__ import annotations

import argparse

from exchange.cli.process import add_bootstrap, add_database, serve_command
from streams.settings import Settings
from streams.settlement import CONSUMER_DEFAULT, SettlementWriter

__all__ = ["register", "run"]

progress_interval_s = 10.0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `settle` to the `gx` command line."""
    p = subparsers.add_parser(
        "settle",
        help="settle gx.events into the PostgreSQL ledger",
        description="Consume gx.events into the ledger (postings, trades, orders, positions, "
        "deliveries), idempotent on the record position. Stop with Ctrl-C or SIGTERM.",
    )
    add_bootstrap(p)
    add_database(p, "PostgreSQL URL (default: GX_DATABASE_URL, else an embedded one)")
    p.add_argument("--consumer", default=CONSUMER_DEFAULT, help="name of the stored position")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the writer until SIGINT or SIGTERM, `GX_SETTLE_NICE` steps nicer; return the status."""
    return serve_command(
        "settle",
        args,
        lambda settings: SettlementWriter(
            settings, _database(settings), settings.broker(), consumer=args.consumer
        ),
        stats=lambda writer: writer.stats,
        embedded_database=True,
        nice=lambda settings: settings.settle_nice,
        progress_s=progress_interval_s,
    )


def _database(settings: Settings) -> str:
    assert settings.database_url is not None  # serve_command's embedded database, at worst
    return settings.database_url
