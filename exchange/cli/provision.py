"""`gx provision`: the provisioning process (obligations <-> provider agents <-> engine)."""

from __future__ import annotations

import argparse

from exchange.cli.process import add_broker, serve_command
from schemas.units import NS_PER_SECOND
from streams.provisioning import ProvisioningProcess

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `provision`."""
    parser = subparsers.add_parser(
        "provision", help="send provisioning requests to providers and their outcomes to the engine"
    )
    add_broker(
        parser,
        mock_help="the broker is librdkafka's mock cluster: skip CRC checks, declare no topics",
    )
    parser.add_argument(
        "--deadline-s",
        type=int,
        default=None,
        help="seconds after delivery start to wait for a confirmation (default: the catalog's)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the provisioning process until stopped; return the exit status."""
    deadline_ns = None if args.deadline_s is None else args.deadline_s * NS_PER_SECOND
    return serve_command(
        "provision",
        args,
        lambda settings: ProvisioningProcess(
            settings, deadline_ns=deadline_ns, mock_broker=args.mock_broker
        ),
        fatal=(RuntimeError,),
        stats=lambda process: process.stats,
    )
