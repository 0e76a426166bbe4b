"""`gx marketdata`: the market-data process (books, trades, candles, index, forward curve)."""

from __future__ import annotations

import argparse

from exchange.cli.process import add_broker, serve_command
from streams.marketdata.process import MarketDataProcess, snapshot_every_deltas

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `marketdata`."""
    parser = subparsers.add_parser(
        "marketdata",
        help="publish L2 books, trades, candles, index and forward curves to gx.marketdata",
    )
    add_broker(parser)
    parser.add_argument(
        "--snapshot-every",
        type=int,
        default=snapshot_every_deltas,
        help="publish a full book after every N-th delta of a symbol (0: never)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the market-data process until stopped; return the exit status."""
    return serve_command(
        "marketdata",
        args,
        lambda settings: MarketDataProcess(
            settings, mock_broker=args.mock_broker, snapshot_every=args.snapshot_every
        ),
        fatal=(RuntimeError,),
        stats=lambda process: process.stats,
    )
