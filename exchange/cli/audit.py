"""`gx audit`: replay gx.events from the start (or a checkpoint), check it and the ledger."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import msgspec

from exchange.cli.process import add_bootstrap, add_database, load, usage_error
from streams.audit import CheckpointError, audit, dump_checkpoint, load_checkpoint

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `audit` to the `gx` command line."""
    p = subparsers.add_parser(
        "audit",
        help="replay gx.events, check invariants and the hash chain, compare with the ledger",
        description="Replay gx.events to its end offsets, recompute balances and positions, "
        "check sequence contiguity, the per-shard hash chain and the invariants, and compare "
        "the PostgreSQL ledger with the replay at the ledger's position. Prints a JSON report; "
        "exits 1 on any violation, 2 on a usage or connection error.",
    )
    add_bootstrap(p)
    add_database(p, "PostgreSQL URL of the ledger (default: GX_DATABASE_URL, else no ledger)")
    p.add_argument("--from-checkpoint", type=Path, help="resume from a checkpoint file")
    p.add_argument(
        "--write-checkpoint", type=Path, help="write a checkpoint here when the audit passes"
    )
    p.add_argument("--consumer", default="settlement", help="the settlement writer's name")
    p.add_argument("--no-check-crcs", action="store_true", help="for the embedded mock broker")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the audit; print the report on stdout; return 0 (pass), 1 (violations) or 2."""
    try:
        settings = load(args)
        bootstrap = settings.broker()
        checkpoint = (
            load_checkpoint(args.from_checkpoint.read_bytes()) if args.from_checkpoint else None
        )
    except (ValueError, OSError) as error:  # CheckpointError is a ValueError
        return usage_error("audit", error)
    try:
        report, auditor, ends = asyncio.run(
            audit(
                settings,
                bootstrap,
                settings.database_url,
                checkpoint=checkpoint,
                consumer=args.consumer,
                check_crcs=not args.no_check_crcs,
            )
        )
    except (OSError, LookupError, TimeoutError, CheckpointError) as error:
        return usage_error("audit", error)
    print(msgspec.json.format(msgspec.json.encode(report)).decode())
    if report.ok and args.write_checkpoint:
        args.write_checkpoint.write_bytes(dump_checkpoint(auditor.checkpoint(ends)))
    return 0 if report.ok else 1
