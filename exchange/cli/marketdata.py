"""`gx marketdata`: the market-data process (books, trades, candles, index, forward curve).

The process lives in `streams/marketdata/process.py`; this module only puts it under `gx`.
"""

from __future__ import annotations

import argparse

from streams.marketdata import process as marketdata

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `marketdata`."""
    parser = subparsers.add_parser(
        "marketdata",
        help="publish L2 books, trades, candles, index and forward curves to gx.marketdata",
    )
    marketdata.add_arguments(parser)
    parser.set_defaults(handler=marketdata.run_from_args)
