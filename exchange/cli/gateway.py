"""`gx gateway`: serve REST and WebSocket over the exchange's topics until stopped."""

from __future__ import annotations

import argparse

from exchange.cli.process import add_broker, add_database, serve_command
from exchange.gateway.app import GatewayServer
from exchange.gateway.keys import check_master_key
from streams.settings import Settings

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
    add_broker(p)
    add_database(p, "PostgreSQL URL (default: GX_DATABASE_URL, else an embedded one)")
    p.add_argument("--host", help="listen address (default: GX_GATEWAY_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default: GX_GATEWAY_PORT, 8080)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM; return the exit status."""

    def build(settings: Settings) -> GatewayServer:
        check_master_key(settings.gateway_master_key)
        assert settings.database_url is not None  # serve_command's embedded database
        return GatewayServer(
            settings,
            settings.database_url,
            mock_broker=args.mock_broker,
            host=args.host,
            port=args.port,
        )

    return serve_command(
        "gateway", args, build, fatal=(RuntimeError, OSError), embedded_database=True
    )
