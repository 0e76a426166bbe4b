"""`gx bench`: commands that measure the exchange and print figures (never timed assertions).

Each benchmark lives in its own module and registers one subcommand of the `bench` group here.
"""

from __future__ import annotations

import argparse

from exchange.bench import feed as bench_feed
from exchange.bench import flood as bench_flood
from exchange.bench import gateway_start as bench_gateway_start
from exchange.bench import journey as bench_journey
from exchange.bench import matching as bench_matching
from exchange.bench import orders as bench_orders
from exchange.bench import pipeline as bench_pipeline
from exchange.bench import soak as bench_soak
from exchange.bench import writes as bench_writes

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `bench` group and every benchmark under it."""
    parser = subparsers.add_parser("bench", help="measure throughput and memory")
    group = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    bench_feed.register(group)
    bench_flood.register(group)
    bench_gateway_start.register(group)
    bench_journey.register(group)
    bench_matching.register(group)
    bench_orders.register(group)
    bench_pipeline.register(group)
    bench_soak.register(group)
    bench_writes.register(group)
