"""`gx topics create`: the exchange's topics with their partitions, replication and retention."""

from __future__ import annotations

import argparse
import asyncio

from exchange.cli.process import add_bootstrap, load, usage_error
from streams.admin import TopicsError, create_topics
from streams.topics import topics

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `topics` group."""
    parser = subparsers.add_parser("topics", help="manage the exchange's Kafka topics")
    group = parser.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    create = group.add_parser(
        "create", help="create the topics with partitions, replication and retention"
    )
    add_bootstrap(create)
    create.set_defaults(handler=run_create)


def run_create(args: argparse.Namespace) -> int:
    """Create the topics; print one line per topic; return the exit status."""
    try:
        settings = load(args)
        settings.broker()
        outcome = asyncio.run(create_topics(settings))
    except (ValueError, TopicsError) as error:
        return usage_error("topics create", error)
    for role, t in topics(settings).items():
        retention = "forever" if t.retention_ms < 0 else f"{t.retention_ms} ms"
        print(
            f"{t.name}: {outcome.get(t.name, '?')} ({role}, {t.partitions} partitions, "
            f"replication {settings.replication_factor}, retention {retention})"
        )
    return 0
