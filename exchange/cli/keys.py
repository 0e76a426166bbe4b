"""`gx keys`: create, list and revoke API keys in the exchange's PostgreSQL database.

    gx keys create --account 12 --scopes read,trade
    gx keys create --account 12 --scopes read,admin
    gx keys list --account 12
    gx keys revoke --account 12 --key gx0123456789abcdef01234567

Each prints one JSON object. A key's secret is derived from `GX_GATEWAY_MASTER_KEY`
(exchange/gateway/keys.py), so this command needs the same master key as the gateways; `create`
prints the secret once and nothing stores it. Only an operator's key can be made here without a
parent; the `admin` scope lets a key create and revoke the account's keys over REST, and revoking
a key (here or there) revokes every key minted under it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import asyncpg
import msgspec

from exchange.gateway.keys import SCOPES, ApiKey, KeyStore, check_master_key
from exchange.wire import ns_to_str
from streams.embedded.postgres import open_database
from streams.ledger.schema import migrate
from streams.settings import load_settings

__all__ = ["register", "run"]

_PROG = "gx keys"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `keys` with its actions `create`, `list` and `revoke`."""
    parser = subparsers.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="Manage the gateway's API keys. Needs GX_GATEWAY_MASTER_KEY (the gateways' "
        "master key) and the database (GX_DATABASE_URL or --database-url).",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key and print its secret (only now)")
    create.add_argument("--scopes", required=True, help=f"comma-separated, from {','.join(SCOPES)}")
    actions.add_parser("list", help="list an account's keys")
    revoke = actions.add_parser("revoke", help="revoke a key")
    revoke.add_argument("--key", required=True, help="the key id (gx...)")
    for action in (create, actions.choices["list"], revoke):
        action.add_argument("--account", required=True, type=int, help="the account number")
        action.add_argument(
            "--database-url",
            "--dsn",
            dest="database_url",
            help="PostgreSQL URL (default: GX_DATABASE_URL, else an embedded one)",
        )
        action.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run one `gx keys` action; return the exit status (2: configuration, 1: refused)."""
    try:
        settings = load_settings()
    except ValueError as error:
        print(f"{_PROG}: {error}", file=sys.stderr)
        return 2
    # Until `gateway_master_key` is a field of Settings.
    master_key = str(getattr(settings, "gateway_master_key", "") or "")
    if not master_key:
        print(
            f"{_PROG}: no gateway master key: set GX_GATEWAY_MASTER_KEY to the master key the "
            "gateways run with; key secrets are derived from it",
            file=sys.stderr,
        )
        return 2
    try:
        check_master_key(master_key)
    except ValueError as error:
        print(f"{_PROG}: {error}", file=sys.stderr)
        return 2
    dsn = args.database_url or settings.database_url
    if dsn:
        return _run_on(dsn, master_key, args)
    print(
        f"{_PROG}: GX_DATABASE_URL is not set: using an embedded PostgreSQL that is deleted on "
        "exit, so these keys will not exist afterwards",
        file=sys.stderr,
    )
    with open_database() as embedded_dsn:
        return _run_on(embedded_dsn, master_key, args)


def _run_on(dsn: str, master_key: str, args: argparse.Namespace) -> int:
    try:
        answer = asyncio.run(_act(dsn, master_key, args))
    except (ValueError, OSError, asyncpg.PostgresError) as error:
        # ValueError covers WireError: a refused account, scope or key count.
        print(f"{_PROG} {args.action}: {error}", file=sys.stderr)
        return 1 if isinstance(error, ValueError) else 2
    if answer is None:
        print(
            f"{_PROG} revoke: expected a key of account {args.account}, found no key {args.key} "
            "for it; `gx keys list --account N` shows the account's keys",
            file=sys.stderr,
        )
        return 1
    print(msgspec.json.encode(answer).decode())
    return 0


async def _act(dsn: str, master_key: str, args: argparse.Namespace) -> dict[str, Any] | None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        store = KeyStore(pool, master_key)
        if args.action == "create":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            key, secret = await store.create(args.account, scopes)
            return {
                "key": key.key_id,
                "secret": secret,
                "account": key.account,
                "scopes": list(key.scopes),
            }
        if args.action == "list":
            keys = await store.list(args.account)
            return {"account": args.account, "keys": [_listed(key) for key in keys]}
        revoked = await store.revoke(args.account, args.key)
        if revoked:
            return {"key": args.key, "revoked": True, "revoked_keys": revoked}
        return None
    finally:
        await pool.close()


def _listed(key: ApiKey) -> dict[str, Any]:
    """A key as `GET /keys` lists it."""
    return {
        "key": key.key_id,
        "scopes": list(key.scopes),
        "created_ns": ns_to_str(key.created_ns),
        "revoked": key.revoked,
        "parent": key.parent_key_id,
    }
