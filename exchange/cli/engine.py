"""`gx engine --shard N`: one shard's matching engine between gx.commands and gx.events."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import msgspec

from exchange.cli.process import add_broker, add_database, serve_command
from matching.engine import EngineConfig
from schemas.catalog import load_catalog
from streams.engine_runner import EngineRunner, RecoveryError
from streams.snapshots import LeaseError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `engine`."""
    parser = subparsers.add_parser(
        "engine", help="run one shard's matching engine between gx.commands and gx.events"
    )
    parser.add_argument("--shard", type=int, required=True, help="the shard (partition) to run")
    add_broker(parser)
    add_database(parser, "snapshot database (default: GX_DATABASE_URL)")
    parser.add_argument(
        "--no-snapshots", action="store_true", help="replay the log from its start on restart"
    )
    parser.add_argument(
        "--engine-config",
        help="EngineConfig fields as a JSON object, or @path of a JSON file (default sizes)",
    )
    parser.add_argument("--catalog", type=Path, help="catalog file (default: the packaged one)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the engine runner until it stops; return the exit status."""
    return serve_command(
        "engine",
        args,
        lambda settings: EngineRunner(
            settings,
            args.shard,
            load_catalog(args.catalog),
            engine_config(args.engine_config, args.shard),
            mock_broker=args.mock_broker,
            snapshots=not args.no_snapshots,
        ),
        fatal=(RecoveryError, LeaseError),
        stats=lambda runner: runner.stats,
    )


def engine_config(text: str | None, shard: int) -> EngineConfig:
    """The `--engine-config` option: a JSON object of EngineConfig fields, or @path of one."""
    if not text:
        return EngineConfig(shard=shard)
    raw = Path(text[1:]).read_bytes() if text.startswith("@") else text.encode()
    try:
        fields = msgspec.json.decode(raw, type=dict[str, Any])
    except msgspec.DecodeError as error:
        raise ValueError(f"--engine-config: expected a JSON object, {error}") from None
    fields["shard"] = shard
    return msgspec.convert(fields, EngineConfig)
