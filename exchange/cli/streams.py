"""`gx engine`, `gx clock`, `gx topics create`: the stream processes and their topics.

Each process lives in `streams/` with its own options; this module only puts them under `gx`.
"""

from __future__ import annotations

import argparse

from streams import admin, clock, engine_runner

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `engine`, `clock` and the `topics` group."""
    engine = subparsers.add_parser(
        "engine", help="run one shard's matching engine between gx.commands and gx.events"
    )
    engine_runner.add_arguments(engine)
    engine.set_defaults(handler=engine_runner.run_from_args)

    ticker = subparsers.add_parser("clock", help="send a clock tick to every shard every second")
    clock.add_arguments(ticker)
    ticker.set_defaults(handler=clock.run_from_args)

    topics = subparsers.add_parser("topics", help="manage the exchange's Kafka topics")
    group = topics.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    create = group.add_parser(
        "create", help="create the topics with partitions, replication and retention"
    )
    admin.add_arguments(create)
    create.set_defaults(handler=admin.run_from_args)
