"""API keys in PostgreSQL: issued, listed and revoked; secrets derived, never stored; requests
verified with a stable code for every refusal; nonces and client order ids taken once."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec
import pytest

from exchange import wire
from exchange.cli import keys as cli_keys
from exchange.gateway import auth
from exchange.gateway import keys as keys_module
from exchange.gateway.keys import (
    CLIENT_ORDER_PRUNE_INTERVAL_S,
    CLIENT_ORDER_PRUNE_ROWS_MAX,
    CLIENT_ORDER_RETENTION_NS,
    KEY_CACHE_TTL_S,
    KEY_LOOKUPS_CONCURRENT_MAX,
    KEY_LOOKUPS_WAITING_MAX,
    KEY_PRUNE_INTERVAL_S,
    KEY_REVOKED_RETENTION_NS,
    KEY_UNKNOWN_CACHE_TTL_S,
    KEYS_PER_ACCOUNT_MAX,
    NONCE_HORIZON_MS,
    NONCE_PRUNE_INTERVAL_S,
    ApiKey,
    KeyStore,
    MasterKeyMismatch,
    check_master_key,
    derive_secret,
    is_key_id,
)
from exchange.wire import ErrorCode, WireError
from streams.ledger.schema import migrate
from tests.support.gateway_harness import KeyQueries

from .conftest import run

pytestmark = pytest.mark.timeout(60)

MASTER_KEY = "test-master-key-0123456789abcdefghijklmnop"
OTHER_MASTER_KEY = "another-master-key-0123456789abcdefghijklm"
ALICE, BOB = 10, 11
NOW_MS = 1_790_000_000_000


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@asynccontextmanager
async def opened(dsn: str, **store_options: Any) -> AsyncIterator[tuple[asyncpg.Pool, KeyStore]]:
    """A migrated database's pool and a KeyStore over it."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
        yield pool, KeyStore(pool, store_options.pop("master_key", MASTER_KEY), **store_options)
    finally:
        await pool.close()


def with_store(dsn: str, body: Callable[[asyncpg.Pool, KeyStore], Awaitable[None]]) -> None:
    async def main() -> None:
        async with opened(dsn) as (pool, store):
            await body(pool, store)

    run(main())


class Request(msgspec.Struct, kw_only=True):
    """A signed request's parts, as verify() takes them."""

    key_id: object
    ts_ms: object = NOW_MS
    nonce: object = "nonce-0001"
    signature_hex: object = ""
    method: str = "POST"
    path: str = "/api/v1/orders?symbol=H100-SXM.us-east.1h.2026-12-01T14"
    body: bytes = b'{"symbol":"H100-SXM.us-east.1h.2026-12-01T14","side":"buy"}'
    sig_version: object = "2"  # the GX-SIGN-VERSION header as sent (None: absent)


def signed(secret: str, key_id: object, **parts: Any) -> Request:
    """A request signed with `secret` as a client would sign it (version 2 unless
    `sig_version` says 1 or None)."""
    request = Request(key_id=key_id, **parts)
    assert isinstance(request.ts_ms, int | str) and isinstance(request.nonce, str)
    if request.sig_version in (None, "", 1, "1"):
        request.signature_hex = wire.signature_v1(
            secret, request.ts_ms, request.nonce, request.method, request.path, request.body
        )
    else:
        assert isinstance(request.key_id, str)
        request.signature_hex = wire.signature(
            secret,
            request.key_id,
            request.ts_ms,
            request.nonce,
            request.method,
            request.path,
            request.body,
        )
    return request


async def verify(store: KeyStore, request: Request, now_ms: int = NOW_MS) -> ApiKey:
    return await auth.verify(
        store,
        request.key_id,
        request.ts_ms,
        request.nonce,
        request.signature_hex,
        request.method,
        request.path,
        request.body,
        now_ms,
        sig_version=request.sig_version,
    )


async def refused(store: KeyStore, request: Request, now_ms: int = NOW_MS) -> WireError:
    with pytest.raises(WireError) as caught:
        await verify(store, request, now_ms)
    return caught.value


# ============================================================================ keys


def test_create_get_list_and_revoke_only_by_the_owner(dsn):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        key, secret = await store.create(ALICE, ["trade", "read", "trade"])
        assert is_key_id(key.key_id) and len(key.key_id) == 26
        assert key.account == ALICE and key.scopes == ("read", "trade") and not key.revoked
        assert secret == store.secret_of(key.key_id) and len(secret) == 43
        assert await store.get(key.key_id) == key
        assert await store.get("gx" + "0" * 24) is None
        other, _ = await store.create(ALICE, ["provide"])
        await store.create(BOB, ["read"])
        assert [k.key_id for k in await store.list(ALICE)] == [key.key_id, other.key_id]

        assert not await store.revoke(BOB, key.key_id)  # not Bob's key
        assert not (await store.get(key.key_id)).revoked  # type: ignore[union-attr]
        assert await store.revoke(ALICE, key.key_id)
        assert await store.revoke(ALICE, key.key_id)  # again: still revoked, still True
        assert not await store.revoke(ALICE, "gx" + "0" * 24)
        assert (await store.get(key.key_id)).revoked  # type: ignore[union-attr]
        listed = {k.key_id: k.revoked for k in await store.list(ALICE)}
        assert listed == {key.key_id: True, other.key_id: False}

    with_store(dsn, body)


def test_create_refuses_unknown_scopes_system_accounts_and_too_many_keys(dsn):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        for scopes in ([], ["root"], "read"):
            with pytest.raises(WireError, match="scopes") as caught:
                await store.create(ALICE, scopes)
            assert caught.value.code == ErrorCode.BAD_REQUEST
        with pytest.raises(WireError, match="user account"):
            await store.create(1, ["read"])  # the fee account
        keys = [(await store.create(ALICE, ["read"]))[0] for _ in range(KEYS_PER_ACCOUNT_MAX)]
        with pytest.raises(WireError, match="active keys"):
            await store.create(ALICE, ["read"])
        await store.revoke(ALICE, keys[0].key_id)
        await store.create(ALICE, ["read"])  # a revoked key frees its place

    with_store(dsn, body)


def test_revoking_a_key_revokes_every_key_minted_under_it(dsn):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        root, _ = await store.create(ALICE, ["read", "trade", "admin"])  # gx keys create
        child, _ = await store.create(ALICE, ["read", "admin"], parent_key_id=root.key_id)
        grandchild, _ = await store.create(ALICE, ["trade"], parent_key_id=child.key_id)
        sibling, _ = await store.create(ALICE, ["read"], parent_key_id=root.key_id)
        apart, _ = await store.create(ALICE, ["read", "admin"])
        assert (child.parent_key_id, grandchild.parent_key_id) == (root.key_id, child.key_id)
        assert (await store.get(grandchild.key_id)).parent_key_id == child.key_id  # type: ignore[union-attr]

        assert await store.revoke(BOB, root.key_id) == []  # not Bob's: nothing happens
        assert await store.revoke(ALICE, child.key_id) == [child.key_id, grandchild.key_id]
        assert (await store.get(sibling.key_id)).revoked is False  # type: ignore[union-attr]
        revoked = await store.revoke(ALICE, root.key_id)
        assert revoked[0] == root.key_id
        assert set(revoked) == {root.key_id, child.key_id, grandchild.key_id, sibling.key_id}
        listed = {k.key_id: k.revoked for k in await store.list(ALICE)}
        assert listed == {k: k != apart.key_id for k in listed} and len(listed) == 5
        everyone = [root.key_id, child.key_id, grandchild.key_id, sibling.key_id, apart.key_id]
        assert set(await store.revoked_among(everyone)) == set(everyone) - {apart.key_id}

        # A revoked key mints nothing, even on a gateway that still has it cached as active.
        with pytest.raises(WireError) as caught:
            await store.create(ALICE, ["read"], parent_key_id=root.key_id)
        assert caught.value.code == ErrorCode.UNAUTHORIZED and "revoked" in caught.value.msg
        with pytest.raises(WireError):
            await store.create(BOB, ["read"], parent_key_id=apart.key_id)  # Alice's key
        assert len(await store.list(ALICE)) == 5 and not await store.list(BOB)

    with_store(dsn, body)


def test_a_key_minted_while_its_parent_is_being_revoked_is_refused(dsn):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        parent, _ = await store.create(ALICE, ["read", "admin"])
        async with pool.acquire() as conn:
            revoking = conn.transaction()
            await revoking.start()
            await conn.execute(
                "UPDATE api_keys SET revoked = true WHERE key_id = $1", parent.key_id
            )  # what `revoke` does first, its transaction still open
            minting = asyncio.ensure_future(
                store.create(ALICE, ["read"], parent_key_id=parent.key_id)
            )
            await asyncio.sleep(0.3)
            assert not minting.done()  # waits for the revocation's row lock
            await revoking.commit()
        with pytest.raises(WireError) as caught:
            await minting
        assert caught.value.code == ErrorCode.UNAUTHORIZED
        assert [k.key_id for k in await store.list(ALICE)] == [parent.key_id]

    with_store(dsn, body)


def test_revoked_keys_are_forgotten_after_the_retention_and_beyond_the_bound(dsn, monkeypatch):
    async def main() -> None:
        clock, now_ns = Clock(), [10**18]
        async with opened(dsn, clock_s=clock, clock_ns=lambda: now_ns[0]) as (pool, store):
            old, _ = await store.create(ALICE, ["read"])
            await store.revoke(ALICE, old.key_id)
            now_ns[0] += KEY_REVOKED_RETENTION_NS
            recent, _ = await store.create(ALICE, ["read"])
            await store.revoke(ALICE, recent.key_id)
            now_ns[0] += 1
            # Within the prune interval the old one is kept; after it, it is forgotten.
            await store.create(BOB, ["read"])
            assert len(await store.list(ALICE)) == 2
            clock.now_s += KEY_PRUNE_INTERVAL_S
            await store.create(BOB, ["read"])
            assert [k.key_id for k in await store.list(ALICE)] == [recent.key_id]
            assert await store.get(old.key_id) is None  # unknown: still refused
            assert await store.revoked_among([old.key_id]) == [old.key_id]  # sessions close

            # However young, an account keeps only its newest revoked keys.
            monkeypatch.setattr(keys_module, "KEYS_REVOKED_PER_ACCOUNT_MAX", 3)
            for _ in range(5):
                now_ns[0] += 1
                key, _ = await store.create(ALICE, ["read"])
                await store.revoke(ALICE, key.key_id)
            active, _ = await store.create(ALICE, ["read"])
            left = await store.list(ALICE)
            assert sum(k.revoked for k in left) == 3 and [k for k in left if not k.revoked] == [
                active
            ]
            assert recent.key_id not in {k.key_id for k in left}  # the oldest went first
            assert len(await store.list(BOB)) == 2  # other accounts untouched

    run(main())


def test_master_key_must_be_long_and_look_random():
    weak = [
        "short",
        "x" * 64,  # long enough, one character
        "abababababababababababababababababab",  # two characters
        "passwordpasswordpasswordpassword1",  # few distinct characters
        "a" * 20 + "0123456789bcdefghijk",  # one character fills half of it
    ]
    for key in weak:
        with pytest.raises(ValueError, match="GX_GATEWAY_MASTER_KEY"):
            KeyStore(None, key)  # type: ignore[arg-type]
    for key in (secrets.token_urlsafe(32), secrets.token_hex(32), MASTER_KEY, OTHER_MASTER_KEY):
        check_master_key(key)


def test_secret_is_derived_stably_and_the_database_holds_none_of_it(dsn):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        key, secret = await store.create(ALICE, ["read", "trade", "provide"])
        # Another gateway instance with the same master key derives the same secret.
        assert KeyStore(pool, MASTER_KEY).secret_of(key.key_id) == secret
        assert derive_secret(MASTER_KEY, key.key_id) == secret
        assert derive_secret(OTHER_MASTER_KEY, key.key_id) != secret
        raw = base64.urlsafe_b64decode(secret + "=")
        assert len(raw) == 32

        rows = await pool.fetch("SELECT * FROM api_keys")
        assert len(rows) == 1
        as_text = " ".join(str(value) for value in rows[0].values())
        as_bytes = b"".join(
            value if isinstance(value, bytes) else str(value).encode() for value in rows[0].values()
        )
        table_dump = await pool.fetchval("SELECT string_agg(t::text, '|') FROM api_keys t")
        for haystack in (as_text, table_dump):
            assert secret not in haystack and raw.hex() not in haystack
        for needle in (secret.encode(), raw):
            assert needle not in as_bytes
        assert MASTER_KEY not in table_dump

    with_store(dsn, body)


def test_gateway_with_another_master_key_says_so(dsn):
    async def main() -> None:
        async with opened(dsn) as (pool, store):
            key, secret = await store.create(ALICE, ["read"])
            wrong = KeyStore(pool, OTHER_MASTER_KEY)
            with pytest.raises(MasterKeyMismatch, match="GX_GATEWAY_MASTER_KEY"):
                await wrong.get(key.key_id)
            error = await refused(wrong, signed(secret, key.key_id))
            assert error.code == ErrorCode.UNAUTHORIZED and "master key" in error.msg

    run(main())


def test_revoke_reaches_other_instances_within_the_cache_ttl(dsn):
    async def main() -> None:
        clock = Clock()
        async with opened(dsn, clock_s=clock) as (pool, other_instance):
            this_instance = KeyStore(pool, MASTER_KEY, clock_s=clock)
            key, _ = await this_instance.create(ALICE, ["read"])
            assert not (await other_instance.get(key.key_id)).revoked  # type: ignore[union-attr]
            assert await this_instance.revoke(ALICE, key.key_id)
            clock.now_s += KEY_CACHE_TTL_S / 2
            assert not (await other_instance.get(key.key_id)).revoked  # type: ignore[union-attr]
            clock.now_s += KEY_CACHE_TTL_S
            assert (await other_instance.get(key.key_id)).revoked  # type: ignore[union-attr]

    run(main())


def test_unknown_key_ids_are_cached_briefly_and_apart_from_real_keys(dsn, monkeypatch):
    async def main() -> None:
        clock = Clock()
        async with opened(dsn, clock_s=clock) as (pool, store):
            queries = KeyQueries(pool)
            store._pool = queries
            real, _ = await store.create(ALICE, ["read"])
            unknown = "gx" + "ab" * 12
            for _ in range(3):
                assert await store.get(unknown) is None
            assert queries.count == 1  # a client retrying a wrong key asks the database once
            clock.now_s += KEY_UNKNOWN_CACHE_TTL_S
            assert await store.get(unknown) is None
            assert queries.count == 2  # forgotten after its TTL: a key created elsewhere works

            # Bounded, and never at the expense of real keys.
            monkeypatch.setattr(keys_module, "KEY_UNKNOWN_CACHE_ENTRIES_MAX", 5)
            assert await store.get(real.key_id) == real
            before = queries.count
            for i in range(20):
                assert await store.get(f"gx{i:024x}") is None
            assert queries.count == before + 20
            assert await store.get(real.key_id) == real
            assert queries.count == before + 20  # still cached
            assert await store.get(f"gx{19:024x}") is None
            assert queries.count == before + 20  # among the newest 5
            assert await store.get(f"gx{0:024x}") is None
            assert queries.count == before + 21  # pushed out by newer ones

            # A key created on this gateway works at once, even if its id was looked up before.
            monkeypatch.setattr(keys_module.secrets, "token_hex", lambda n: "cd" * n)
            chosen = "gx" + "cd" * 12
            assert await store.get(chosen) is None
            created, _ = await store.create(ALICE, ["read"])
            assert created.key_id == chosen and await store.get(chosen) == created

    run(main())


def test_key_lookups_take_at_most_their_share_of_the_pool(dsn):
    async def main() -> None:
        async with opened(dsn) as (pool, store):
            queries = KeyQueries(pool, delay_s=0.01)
            store._pool = queries
            ids = [f"gx{i:024x}" for i in range(KEY_LOOKUPS_WAITING_MAX)]
            found = await asyncio.gather(*(store.get(key_id) for key_id in ids))
            assert found == [None] * len(ids)
            assert queries.in_flight_max == KEY_LOOKUPS_CONCURRENT_MAX

            # Beyond the waiting room, a lookup is refused at once rather than queued.
            ids = [f"gx{i:024x}" for i in range(1000, 1000 + 2 * KEY_LOOKUPS_WAITING_MAX)]
            results = await asyncio.gather(
                *(store.get(key_id) for key_id in ids), return_exceptions=True
            )
            busy = [r for r in results if isinstance(r, WireError)]
            assert busy and all(e.code == ErrorCode.UNAVAILABLE and e.retryable for e in busy)
            assert all(r is None for r in results if not isinstance(r, WireError))

    run(main())


# ============================================================================ verification


def test_verify_accepts_a_good_signature_for_rest_and_ws_logon(dsn):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        key, secret = await store.create(ALICE, ["read", "trade"])
        # REST: header strings, a query string and a body.
        assert await verify(store, signed(secret, key.key_id, ts_ms=str(NOW_MS))) == key
        # WebSocket logon: a JSON integer ts_ms, GET /ws and no body.
        logon = signed(
            secret,
            key.key_id,
            nonce="logon_nonce-1",
            method=wire.WS_LOGON_METHOD,
            path=wire.WS_LOGON_PATH,
            body=b"",
        )
        assert await verify(store, logon) == key
        # The edges of the window are inside it.
        window = auth.SIGNATURE_WINDOW_MS
        for i, now_ms in enumerate((NOW_MS - window, NOW_MS + window)):
            assert await verify(store, signed(secret, key.key_id, nonce=f"edge-{i:04d}"), now_ms)

    with_store(dsn, body)


def test_verify_refuses_each_bad_request_with_its_code(dsn):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        key, secret = await store.create(ALICE, ["read"])
        revoked, revoked_secret = await store.create(ALICE, ["read"])
        await store.revoke(ALICE, revoked.key_id)
        window = auth.SIGNATURE_WINDOW_MS
        cases: list[tuple[str, Request, str, str]] = [
            ("missing key", signed(secret, ""), ErrorCode.UNAUTHORIZED, "found none"),
            ("malformed key", signed(secret, "abc"), ErrorCode.UNAUTHORIZED, "hex"),
            ("unknown key", signed(secret, "gx" + "f" * 24), ErrorCode.UNAUTHORIZED, "unknown"),
            (
                "revoked key",
                signed(revoked_secret, revoked.key_id),
                ErrorCode.UNAUTHORIZED,
                "revoked",
            ),
            (
                "ts not an integer",
                signed(secret, key.key_id, ts_ms="17.5"),
                ErrorCode.TIMESTAMP_EXPIRED,
                "integer",
            ),
            (
                "ts a boolean",
                Request(key_id=key.key_id, ts_ms=True),
                ErrorCode.TIMESTAMP_EXPIRED,
                "integer",
            ),
            (
                "ts too old",
                signed(secret, key.key_id, ts_ms=NOW_MS - window - 1),
                ErrorCode.TIMESTAMP_EXPIRED,
                "-5001 ms",
            ),
            (
                "ts too new",
                signed(secret, key.key_id, ts_ms=str(NOW_MS + window + 1)),
                ErrorCode.TIMESTAMP_EXPIRED,
                "+5001 ms",
            ),
            (
                "nonce too short",
                signed(secret, key.key_id, nonce="short"),
                ErrorCode.BAD_REQUEST,
                "8-64",
            ),
            (
                "nonce with bad characters",
                signed(secret, key.key_id, nonce="nonce with spaces"),
                ErrorCode.BAD_REQUEST,
                "[A-Za-z0-9_-]",
            ),
            (
                "signed with another secret",
                signed(derive_secret(OTHER_MASTER_KEY, key.key_id), key.key_id),
                ErrorCode.BAD_SIGNATURE,
                "HMAC-SHA256",
            ),
            (
                "signature not hex",
                Request(key_id=key.key_id, signature_hex="zz" * 32),
                ErrorCode.BAD_SIGNATURE,
                "64 lowercase hex",
            ),
            (
                "signature not a string",
                Request(key_id=key.key_id, signature_hex=None),
                ErrorCode.BAD_SIGNATURE,
                "64 lowercase hex",
            ),
            (
                "signature with non-ASCII characters",
                Request(key_id=key.key_id, signature_hex="é" * 64),
                ErrorCode.BAD_SIGNATURE,
                "64 lowercase hex",
            ),
        ]
        for name, request, code, words in cases:
            error = await refused(store, request)
            assert (name, error.code) == (name, code)
            assert words in error.msg, (name, error.msg)
            assert secret not in error.msg and revoked_secret not in error.msg

        good = signed(secret, key.key_id)
        tampered = msgspec.structs.replace(good, body=good.body + b" ")
        error = await refused(store, tampered)
        assert error.code == ErrorCode.BAD_SIGNATURE and f"{len(tampered.body)}-byte" in error.msg
        other_path = msgspec.structs.replace(good, path="/api/v1/orders")
        assert (await refused(store, other_path)).code == ErrorCode.BAD_SIGNATURE

        assert await verify(store, good) == key
        replay = await refused(store, good)
        assert replay.code == ErrorCode.NONCE_REUSED and "nonce-0001" in replay.msg

    with_store(dsn, body)


def test_v2_signature_verifies_and_v1_only_until_the_end_of_the_transition(dsn):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        key, secret = await store.create(ALICE, ["read", "trade"])
        assert NOW_MS < auth.SIGN_V1_ACCEPTED_UNTIL_MS
        assert auth.SIGN_V1_ACCEPTED_UNTIL == "2027-04-01T00:00:00Z"
        assert auth.SIGN_V1_ACCEPTED_UNTIL_MS == 1_806_537_600_000  # that instant
        # Version 2, as a header string or a JSON integer (session.logon).
        assert await verify(store, signed(secret, key.key_id, nonce="v2-header")) == key
        logon = signed(
            secret, key.key_id, nonce="v2-logon-1", sig_version=2,
            method=wire.WS_LOGON_METHOD, path=wire.WS_LOGON_PATH, body=b"",
        )  # fmt: skip
        assert await verify(store, logon) == key
        # Version 1 during the transition: no header, or "1".
        for i, version in enumerate((None, "", "1", 1)):
            v1 = signed(secret, key.key_id, nonce=f"v1-nonce-{i}", sig_version=version)
            assert await verify(store, v1) == key
        # A version 1 signature sent as version 2 (or the reverse) does not verify.
        v1 = signed(secret, key.key_id, nonce="v1-as-v2", sig_version=None)
        error = await refused(store, msgspec.structs.replace(v1, sig_version="2"))
        assert error.code == ErrorCode.BAD_SIGNATURE and "version 2" in error.msg
        assert "gx-v2\\n" + key.key_id in error.msg  # the expected string, escaped
        v2 = signed(secret, key.key_id, nonce="v2-as-v1")
        error = await refused(store, msgspec.structs.replace(v2, sig_version=None))
        assert error.code == ErrorCode.BAD_SIGNATURE and "version 1" in error.msg
        # After the transition, version 1 is refused, version 2 goes on.
        end_ms = auth.SIGN_V1_ACCEPTED_UNTIL_MS
        late = signed(secret, key.key_id, nonce="v1-too-late", ts_ms=end_ms, sig_version=None)
        error = await refused(store, late, now_ms=end_ms)
        assert error.code == ErrorCode.BAD_SIGNATURE and "2027-04-01" in error.msg
        on_time = signed(secret, key.key_id, nonce="v1-on-time", ts_ms=end_ms - 1, sig_version="1")
        assert await verify(store, on_time, now_ms=end_ms - 1) == key
        assert await verify(store, signed(secret, key.key_id, ts_ms=end_ms), now_ms=end_ms)
        # Unknown versions are refused before anything is looked up.
        for version in ("3", 3, "v2", True, 2.0):
            bad = msgspec.structs.replace(signed(secret, key.key_id), sig_version=version)
            error = await refused(store, bad)
            assert error.code == ErrorCode.BAD_REQUEST and "signature version" in error.msg

    with_store(dsn, body)


def test_v2_signature_binds_every_field_where_v1_let_characters_move(dsn):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        key, secret = await store.create(ALICE, ["read", "trade"])
        path = "/api/v1/orders?symbol=H100-SXM.us-east.1h.2026-12-01T14"
        moves = [
            # (signed as, presented as): characters moved from the nonce into the method, from
            # the method into the path, from the query string into the body
            ({"nonce": "nonce-0001G", "method": "ET"}, {"nonce": "nonce-0001", "method": "GET"}),
            ({"method": "GE", "path": "T" + path}, {"method": "GET", "path": path}),
            ({"path": path, "body": b""}, {"path": "/api/v1/orders", "body": b"?" + path.split("?")[1].encode()}),
        ]  # fmt: skip
        for i, (signed_as, presented_as) in enumerate(moves):
            for version in (None, "2"):
                original = signed(
                    secret, key.key_id, sig_version=version, **{"nonce": f"move-{i}-{version}",
                                                                **signed_as}
                )  # fmt: skip
                moved = msgspec.structs.replace(original, **presented_as)
                if "nonce" not in presented_as:
                    moved = msgspec.structs.replace(moved, nonce=original.nonce)
                if version is None:  # v1: the moved request verifies with the same signature
                    assert await verify(store, moved) == key
                else:
                    error = await refused(store, moved)
                    assert error.code == ErrorCode.BAD_SIGNATURE, (i, error.msg)
        # v2 refuses a line feed in the method or path rather than sign an ambiguous string
        for field in ("method", "path"):
            bad = msgspec.structs.replace(signed(secret, key.key_id), **{field: "GET\n/x"})
            error = await refused(store, bad)
            assert error.code == ErrorCode.BAD_REQUEST and "line feed" in error.msg

    with_store(dsn, body)


def test_bad_signature_does_not_burn_the_nonce(dsn):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        key, secret = await store.create(ALICE, ["read"])
        forged = signed(derive_secret(OTHER_MASTER_KEY, key.key_id), key.key_id, nonce="N" * 16)
        assert (await refused(store, forged)).code == ErrorCode.BAD_SIGNATURE
        assert await pool.fetchval("SELECT count(*) FROM api_nonces") == 0
        assert await verify(store, signed(secret, key.key_id, nonce="N" * 16)) == key

    with_store(dsn, body)


def test_nonces_are_per_key_and_pruned_past_the_horizon(dsn):
    async def main() -> None:
        clock = Clock()
        async with opened(dsn, clock_s=clock) as (pool, store):
            a, b = "gx" + "a" * 24, "gx" + "b" * 24
            assert await store.use_nonce(a, "nonce-0001", NOW_MS)
            assert not await store.use_nonce(a, "nonce-0001", NOW_MS + 1)
            assert await store.use_nonce(b, "nonce-0001", NOW_MS)
            # Not pruned before the interval has passed ...
            later_ms = NOW_MS + NONCE_HORIZON_MS + 1
            assert await store.use_nonce(a, "nonce-0002", later_ms)
            assert await pool.fetchval("SELECT count(*) FROM api_nonces") == 3
            # ... then everything older than the horizon goes.
            clock.now_s += NONCE_PRUNE_INTERVAL_S
            assert await store.use_nonce(a, "nonce-0003", later_ms)
            rows = await pool.fetch("SELECT nonce FROM api_nonces ORDER BY nonce")
            assert [row["nonce"] for row in rows] == ["nonce-0002", "nonce-0003"]

    run(main())


def test_require_scope_names_the_missing_scope():
    key = ApiKey(key_id="gx" + "1" * 24, account=ALICE, scopes=("read",))
    auth.require_scope(key, "read")
    with pytest.raises(WireError) as caught:
        auth.require_scope(key, "trade")
    assert caught.value.code == ErrorCode.FORBIDDEN and caught.value.status == 403
    assert "'trade'" in caught.value.msg and "read" in caught.value.msg
    with pytest.raises(ValueError, match="scope"):
        auth.require_scope(key, "root")


def test_headers_are_read_case_insensitively_and_required():
    headers = {"gx-key": "gxk", "GX-TS": "1", "Gx-Nonce": "n", "GX-SIGNATURE": "s", "Host": "h"}
    assert auth.headers_of(headers) == ("gxk", "1", "n", "s")
    with pytest.raises(WireError) as caught:
        auth.headers_of({"GX-KEY": "gxk", "GX-TS": "", "GX-NONCE": "n"})
    assert caught.value.code == ErrorCode.UNAUTHORIZED
    assert "GX-TS, GX-SIGNATURE missing" in caught.value.msg


# ============================================================================ client orders


def test_reserve_client_order_is_idempotent_per_account(dsn):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        assert await store.reserve_client_order(ALICE, "c1", 1)
        assert not await store.reserve_client_order(ALICE, "c1", 2)
        assert await store.reserve_client_order(BOB, "c1", 3)
        assert await store.reserve_client_order(ALICE, "c2", 4)
        with pytest.raises(WireError, match="client_order_id"):
            await store.reserve_client_order(ALICE, "", 5)
        assert await pool.fetchval("SELECT ts_ns FROM client_orders WHERE account = $1", BOB) == 3

    with_store(dsn, body)


def test_old_reservations_are_forgotten_unless_their_order_is_live(dsn):
    async def main() -> None:
        clock = Clock()
        async with opened(dsn, clock_s=clock) as (pool, store):
            store.client_order_live = lambda account, cid: (account, cid) == (ALICE, "resting")
            for cid in ("filled", "resting"):
                assert await store.reserve_client_order(ALICE, cid, 1_000)
            later = 1_000 + CLIENT_ORDER_RETENTION_NS
            # Within the interval nothing is pruned: a retry still finds its id taken ...
            assert not await store.reserve_client_order(ALICE, "filled", later + 1)
            # ... after it, reservations past the retention go, but a live order keeps its id.
            clock.now_s += CLIENT_ORDER_PRUNE_INTERVAL_S
            assert await store.reserve_client_order(BOB, "fresh", later + 1)
            rows = await pool.fetch("SELECT client_order_id FROM client_orders ORDER BY 1")
            assert [r["client_order_id"] for r in rows] == ["fresh", "resting"]
            assert not await store.reserve_client_order(ALICE, "resting", later + 2)
            assert await store.reserve_client_order(ALICE, "filled", later + 2)  # a new order

    run(main())


def test_a_prune_forgets_at_most_its_limit_oldest_first(dsn):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        extra = 5
        await pool.execute(
            "INSERT INTO client_orders SELECT 7, 'c' || i, i FROM generate_series(1, $1) AS i",
            CLIENT_ORDER_PRUNE_ROWS_MAX + extra,
        )
        assert await store.prune_client_orders(10**18) == CLIENT_ORDER_PRUNE_ROWS_MAX
        left = await pool.fetch("SELECT ts_ns FROM client_orders ORDER BY ts_ns")
        assert [r["ts_ns"] for r in left] == list(
            range(CLIENT_ORDER_PRUNE_ROWS_MAX + 1, CLIENT_ORDER_PRUNE_ROWS_MAX + extra + 1)
        )

    with_store(dsn, body)


def test_client_orders_are_bounded_per_account(dsn, monkeypatch):
    async def body(pool: asyncpg.Pool, store: KeyStore) -> None:
        kept_max, every = 5, 4
        monkeypatch.setattr(keys_module, "CLIENT_ORDERS_PER_ACCOUNT_MAX", kept_max)
        monkeypatch.setattr(keys_module, "CLIENT_ORDER_TRIM_EVERY", every)
        store.client_order_live = lambda account, cid: (account, cid) == (ALICE, "c0")
        for i in range(40):  # all young: the retention alone would keep every one
            assert await store.reserve_client_order(ALICE, f"c{i}", 1_000 + i)
            count = await pool.fetchval(
                "SELECT count(*) FROM client_orders WHERE account = $1", ALICE
            )
            assert count <= kept_max + every + 1  # + the live order's reservation
        assert await store.reserve_client_order(BOB, "c1", 2_000)
        rows = await pool.fetch(
            "SELECT client_order_id FROM client_orders WHERE account = $1 ORDER BY ts_ns", ALICE
        )
        ids = [r["client_order_id"] for r in rows]
        assert ids[0] == "c0" and ids[-1] == "c39"  # the live order's id stays taken
        assert not await store.reserve_client_order(ALICE, "c39", 3_000)
        assert not await store.reserve_client_order(ALICE, "c0", 3_000)
        assert await store.reserve_client_order(ALICE, "c1", 3_000)  # forgotten: a new order

    with_store(dsn, body)


# ============================================================================ gx keys


class _Settings(msgspec.Struct):
    database_url: str | None = None
    gateway_master_key: str = MASTER_KEY


def gx_keys(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gx")
    cli_keys.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", *argv])
    return int(args.handler(args))


def test_gx_keys_create_list_revoke(dsn, monkeypatch, capsys):
    monkeypatch.setattr(cli_keys, "load_settings", lambda: _Settings())
    account = ["--account", str(ALICE), "--database-url", dsn]
    assert gx_keys(["create", *account, "--scopes", "read,trade"]) == 0
    created = json.loads(capsys.readouterr().out)
    assert set(created) == {"key", "secret", "account", "scopes"}
    assert created["account"] == ALICE and created["scopes"] == ["read", "trade"]
    assert created["secret"] == derive_secret(MASTER_KEY, created["key"])

    assert gx_keys(["list", *account]) == 0
    listed = json.loads(capsys.readouterr().out)["keys"]
    assert [(k["key"], k["revoked"]) for k in listed] == [(created["key"], False)]
    assert "secret" not in listed[0] and int(listed[0]["created_ns"]) > 0

    bob = ["--account", str(BOB), "--database-url", dsn]
    assert gx_keys(["revoke", *bob, "--key", created["key"]]) == 1
    assert "no key" in capsys.readouterr().err
    assert gx_keys(["revoke", *account, "--key", created["key"]]) == 0
    revoked = json.loads(capsys.readouterr().out)
    assert revoked == {"key": created["key"], "revoked": True, "revoked_keys": [created["key"]]}

    assert gx_keys(["create", *account, "--scopes", "read,admin"]) == 0  # operators grant admin
    assert json.loads(capsys.readouterr().out)["scopes"] == ["read", "admin"]
    assert gx_keys(["create", *account, "--scopes", "read,root"]) == 1
    assert "scopes" in capsys.readouterr().err


def test_gx_keys_refuses_without_a_master_key(monkeypatch, capsys):
    monkeypatch.setattr(cli_keys, "load_settings", lambda: _Settings(gateway_master_key=""))
    assert gx_keys(["list", "--account", str(ALICE), "--database-url", "postgresql://x/y"]) == 2
    assert "GX_GATEWAY_MASTER_KEY" in capsys.readouterr().err
