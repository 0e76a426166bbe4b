"""`gx gateway`: serve REST and WebSocket over the exchange's topics until stopped."""

from __future__ import annotations

import argparse
import logging
import sys

import msgspec
import uvloop

from exchange.gateway.app import GatewayServer
from streams.embedded.postgres import open_database
from streams.settings import Settings, load_settings

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `gateway` to the `gx` command line."""
    p = subparsers.add_parser(
        "gateway",
        help="serve the REST and WebSocket API (default http://127.0.0.1:8080)",
        description="Read gx.events, gx.marketdata and gx.provisioning from their start, then "
        "serve /api/v1 and /ws. Needs GX_KAFKA_BOOTSTRAP and GX_GATEWAY_MASTER_KEY; "
        "`make sandbox` runs everything embedded instead. Stop with Ctrl-C or SIGTERM.",
    )
    p.add_argument("--bootstrap", help="Kafka bootstrap servers (default: GX_KAFKA_BOOTSTRAP)")
    p.add_argument("--dsn", help="PostgreSQL URL (default: GX_DATABASE_URL)")
    p.add_argument("--host", help="listen address (default: GX_GATEWAY_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default: GX_GATEWAY_PORT, 8080)")
    p.add_argument(
        "--mock-broker",
        action="store_true",
        help="the broker is librdkafka's mock cluster: skip CRC checks (never on real Kafka)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status."""
    try:
        settings = load_settings()
    except ValueError as error:
        print(f"gx gateway: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if args.bootstrap:
        settings = msgspec.structs.replace(settings, kafka_bootstrap=args.bootstrap)
    if not settings.kafka_bootstrap:
        print(
            "gx gateway: no Kafka cluster: set GX_KAFKA_BOOTSTRAP=host:port (or pass --bootstrap); "
            "`make sandbox` runs the whole exchange embedded",
            file=sys.stderr,
        )
        return 2
    if len(settings.gateway_master_key) < 32:
        print(
            "gx gateway: set GX_GATEWAY_MASTER_KEY to a random string of at least 32 characters "
            "(the same on every gateway): API secrets are derived from it",
            file=sys.stderr,
        )
        return 2
    dsn = args.dsn or settings.database_url
    if dsn:
        return _serve(settings, dsn, args)
    print("gx gateway: GX_DATABASE_URL is not set: using an embedded PostgreSQL", file=sys.stderr)
    with open_database() as embedded_dsn:
        return _serve(settings, embedded_dsn, args)


def _serve(settings: Settings, dsn: str, args: argparse.Namespace) -> int:
    server = GatewayServer(
        settings, dsn, mock_broker=args.mock_broker, host=args.host, port=args.port
    )
    try:
        uvloop.run(server.run())
    except (RuntimeError, OSError) as error:
        print(f"gx gateway: {error}", file=sys.stderr)
        return 3
    return 0
