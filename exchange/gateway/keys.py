"""API keys in PostgreSQL, stored without their secrets; nonces and client order ids beside them.

Why the secret is derived, not stored. Verifying an HMAC signature needs the key's secret, yet a
stolen copy of the database must not reveal any secret. So the secret is never stored: it is

    secret = urlsafe_b64(HMAC-SHA256(master_key, key_id)), without padding (43 characters)

where `master_key` is the gateway's setting `GX_GATEWAY_MASTER_KEY`. The master key lives in the
gateways' configuration, never in the database. A row of `api_keys` holds the key's account,
scopes, revoked flag and `sha256(secret)`; the hash lets a gateway confirm that it derives the
secret the key was issued with, so a gateway started with the wrong master key says so instead of
refusing every signature. A database leak alone then reveals no secret, and the master key must be
long and random (`MASTER_KEY_CHARS_MIN`), since the stored hash would let a weak one be guessed.
Changing the master key invalidates every key issued under the old one.

Who may manage keys. Creating and revoking keys needs the `admin` scope; a key created over REST
(`POST /keys`) gets at most its creator's scopes and records its creator as its parent, and
revoking a key revokes every key minted under it, at any depth (`revoke`). So a leaked key, once
revoked, leaves nothing behind that it made, and a trade key can neither mint keys nor revoke the
account's stronger ones. An operator's `gx keys create` makes keys with no parent, with any
scopes, `admin` included.

What is stored is bounded. An account has at most KEYS_PER_ACCOUNT_MAX active keys; a revoked
key is forgotten KEY_REVOKED_RETENTION_NS after its revocation, and beyond the newest
KEYS_REVOKED_PER_ACCOUNT_MAX revoked keys of its account (a forgotten key is unknown, so it stays
refused). Nonces go after NONCE_HORIZON_MS. A client order reservation goes after
CLIENT_ORDER_RETENTION_NS, and beyond the newest CLIENT_ORDERS_PER_ACCOUNT_MAX of its account,
unless its order is still live (`reserve_client_order`).

Every gateway instance shares this state: a key revoked on one instance stops working on all of
them within `KEY_CACHE_TTL_S` (and its open WebSocket sessions are closed, exchange/gateway/
sessions.py); a nonce (`use_nonce`) or a client order id (`reserve_client_order`) is taken once
across all instances.

Unauthenticated traffic reaches the database only through `get`, so `get` is bounded: an unknown
key id is remembered for `KEY_UNKNOWN_CACHE_TTL_S` (in its own cache of at most
`KEY_UNKNOWN_CACHE_ENTRIES_MAX` ids, so random ids never push real keys out), and at most
`KEY_LOOKUPS_CONCURRENT_MAX` lookups hold a pool connection at once, with at most
`KEY_LOOKUPS_WAITING_MAX` more waiting (beyond that UNAVAILABLE), so that order entry always finds
a connection. The callers limit the rate (exchange/gateway/ratelimit.py).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

import asyncpg
import msgspec

from exchange.wire import ErrorCode, WireError
from schemas.ids import ACCOUNT_FIRST_USER

__all__ = [
    "SCOPES",
    "ApiKey",
    "KeyStore",
    "MasterKeyMismatch",
    "check_master_key",
    "derive_secret",
    "is_key_id",
    "KEY_ID_PATTERN",
    "KEY_ID_PREFIX",
    "KEY_ID_HEX_CHARS",
    "MASTER_KEY_CHARS_MIN",
    "KEY_CACHE_TTL_S",
    "KEY_CACHE_ENTRIES_MAX",
    "KEY_UNKNOWN_CACHE_TTL_S",
    "KEY_UNKNOWN_CACHE_ENTRIES_MAX",
    "KEY_LOOKUPS_CONCURRENT_MAX",
    "KEY_LOOKUPS_WAITING_MAX",
    "KEYS_PER_ACCOUNT_MAX",
    "KEYS_REVOKED_PER_ACCOUNT_MAX",
    "KEY_REVOKED_RETENTION_NS",
    "KEY_PRUNE_INTERVAL_S",
    "KEY_PRUNE_ROWS_MAX",
    "NONCE_HORIZON_MS",
    "NONCE_PRUNE_INTERVAL_S",
    "CLIENT_ORDER_RETENTION_NS",
    "CLIENT_ORDER_PRUNE_INTERVAL_S",
    "CLIENT_ORDER_PRUNE_ROWS_MAX",
    "CLIENT_ORDERS_PER_ACCOUNT_MAX",
    "CLIENT_ORDER_TRIM_EVERY",
    "CLIENT_ORDER_TRIM_ACCOUNTS_MAX",
    "CLIENT_ORDER_ID_CHARS_MAX",
]

log = logging.getLogger("gx.gateway.keys")

# `admin`: create and revoke keys (POST /keys, DELETE /keys/{key}).
SCOPES = ("read", "trade", "provide", "withdraw", "admin")

KEY_ID_PREFIX = "gx"
KEY_ID_HEX_CHARS = 24  # 96 random bits
MASTER_KEY_CHARS_MIN = 32
MASTER_KEY_DISTINCT_MIN = 12  # hex has 16, urlsafe base64 64
MASTER_KEY_REPEAT_SHARE_MAX = 4  # no character in more than a quarter of the key
KEY_CACHE_TTL_S = 1.0  # a revoke reaches every gateway instance within this
KEY_CACHE_ENTRIES_MAX = 10_000
# A key created on another instance works here at most this long after a lookup found it unknown
# (at once when created here).
KEY_UNKNOWN_CACHE_TTL_S = 1.0
KEY_UNKNOWN_CACHE_ENTRIES_MAX = 10_000
KEY_LOOKUPS_CONCURRENT_MAX = 2  # pool connections `get` may hold at once (the pool has 8)
KEY_LOOKUPS_WAITING_MAX = 64  # lookups queued for one of those; more are refused UNAVAILABLE
KEYS_PER_ACCOUNT_MAX = 20  # active (not revoked) keys
# Revoked keys stay listed (and their sessions are closed) this long, then are forgotten; an
# account keeps at most this many of them, newest first, whatever their age.
KEY_REVOKED_RETENTION_NS = 30 * 24 * 3600 * 1_000_000_000
KEYS_REVOKED_PER_ACCOUNT_MAX = 100
KEY_PRUNE_INTERVAL_S = 60.0  # per gateway instance, on key creation (the only way rows grow)
KEY_PRUNE_ROWS_MAX = 10_000  # per prune; a larger backlog goes over several
# Nonces older than this (by their request's ts_ms) are deleted. It must exceed the whole
# signature window (auth.SIGNATURE_WINDOW_MS on both sides), so that no nonce is forgotten while
# its request could still be accepted; auth.py asserts it.
NONCE_HORIZON_MS = 60_000
NONCE_PRUNE_INTERVAL_S = 10.0  # per gateway instance
CLIENT_ORDER_ID_CHARS_MAX = 64
# A retry within this time of the first placement finds its order; an older reservation is
# forgotten unless its order is still live (its client_order_id stays taken while it works).
CLIENT_ORDER_RETENTION_NS = 7 * 24 * 3600 * 1_000_000_000
CLIENT_ORDER_PRUNE_INTERVAL_S = 60.0  # per gateway instance
CLIENT_ORDER_PRUNE_ROWS_MAX = 10_000  # per prune; a larger backlog goes over several
# An account's reservations beyond its newest CLIENT_ORDERS_PER_ACCOUNT_MAX are forgotten (live
# orders' excepted), looked for once every CLIENT_ORDER_TRIM_EVERY reservations of the account on
# one instance: the account holds at most the maximum plus that many per instance, plus its live
# orders. Counters are kept for the CLIENT_ORDER_TRIM_ACCOUNTS_MAX accounts reserving most recently.
CLIENT_ORDERS_PER_ACCOUNT_MAX = 100_000
CLIENT_ORDER_TRIM_EVERY = 1_000
CLIENT_ORDER_TRIM_ACCOUNTS_MAX = 10_000
ACCOUNT_MAX = 2**63 - 1  # bigint

KEY_ID_PATTERN = f"^{KEY_ID_PREFIX}[0-9a-f]{{{KEY_ID_HEX_CHARS}}}$"
_KEY_ID_RE = re.compile(KEY_ID_PATTERN)


class MasterKeyMismatch(RuntimeError):
    """Raise when a stored key was issued under another master key than this gateway's."""


class ApiKey(msgspec.Struct, frozen=True):
    """An API key as the gateway sees it: never its secret."""

    key_id: str
    account: int
    scopes: tuple[str, ...]  # in SCOPES order
    revoked: bool = False
    created_ns: int = 0
    parent_key_id: str | None = None  # the key that created it over REST; None: an operator


def is_key_id(text: object) -> bool:
    """Tell whether `text` has the form of a key id: "gx" and 24 lowercase hex characters."""
    return isinstance(text, str) and _KEY_ID_RE.fullmatch(text) is not None


def check_master_key(master_key: str) -> None:
    """Raise ValueError unless `master_key` looks random: at least MASTER_KEY_CHARS_MIN
    characters, MASTER_KEY_DISTINCT_MIN distinct ones, and no character in more than
    1 / MASTER_KEY_REPEAT_SHARE_MAX of them.

    Every API secret is an HMAC of the key id under this key, so a guessable master key gives
    away every secret; a length check alone passes "x" * 32 or a sentence.
    """
    advice = (
        "; set GX_GATEWAY_MASTER_KEY to a long random string, e.g. from "
        "`python -c 'import secrets; print(secrets.token_urlsafe(32))'` or `openssl rand -hex 32`"
    )
    if len(master_key) < MASTER_KEY_CHARS_MIN:
        raise ValueError(
            f"gateway master key: expected at least {MASTER_KEY_CHARS_MIN} characters, found "
            f"{len(master_key)}{advice}"
        )
    distinct = len(set(master_key))
    if distinct < MASTER_KEY_DISTINCT_MIN:
        raise ValueError(
            f"gateway master key: expected at least {MASTER_KEY_DISTINCT_MIN} distinct "
            f"characters, found {distinct}{advice}"
        )
    most = max(master_key.count(ch) for ch in set(master_key))
    if most * MASTER_KEY_REPEAT_SHARE_MAX > len(master_key):
        raise ValueError(
            f"gateway master key: one character fills {most} of its {len(master_key)} "
            f"characters (at most 1/{MASTER_KEY_REPEAT_SHARE_MAX} allowed){advice}"
        )


def derive_secret(master_key: str, key_id: str) -> str:
    """Return a key's secret: unpadded urlsafe base64 of HMAC-SHA256(master_key, key_id)."""
    digest = hmac.new(master_key.encode(), key_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _secret_sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _scopes_of(scopes: Iterable[str]) -> tuple[str, ...]:
    """Validate scopes and return them in SCOPES order, without duplicates."""
    if isinstance(scopes, str):
        raise WireError(
            ErrorCode.BAD_REQUEST, f"scopes: expected a list of scopes, found {scopes!r}"
        )
    given = builtins.list(scopes)
    unknown = [s for s in given if s not in SCOPES]
    if unknown or not given:
        raise WireError(
            ErrorCode.BAD_REQUEST,
            f"scopes: expected one or more of {', '.join(SCOPES)}, found {given!r}",
        )
    return tuple(s for s in SCOPES if s in given)


def _key_of(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        account=int(row["account"]),
        scopes=tuple(s for s in SCOPES if s in row["scopes"]),
        revoked=bool(row["revoked"]),
        created_ns=int(row["created_ns"]),
        parent_key_id=row["parent_key_id"],
    )


class KeyStore:
    """API keys, nonces and client order reservations of every gateway instance, in PostgreSQL.

    `pool` is an asyncpg pool on a database migrated to version 10 (`streams.ledger.schema`);
    `master_key` is `GX_GATEWAY_MASTER_KEY`. `clock_s` (monotonic seconds) times the cache and the
    pruning; `clock_ns` (UNIX ns) stamps new and revoked keys.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        master_key: str,
        *,
        clock_s: Callable[[], float] = time.monotonic,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        check_master_key(master_key)
        self._pool = pool
        self._master_key = master_key
        self._clock_s = clock_s
        self._clock_ns = clock_ns
        self._cache: OrderedDict[str, tuple[float, ApiKey]] = OrderedDict()
        self._unknown: OrderedDict[str, float] = OrderedDict()  # key id -> until (clock_s)
        self._lookups = asyncio.Semaphore(KEY_LOOKUPS_CONCURRENT_MAX)
        self._lookups_admitted = 0  # running or waiting for the semaphore
        self._nonces_pruned_s = -NONCE_PRUNE_INTERVAL_S  # prune on the first use
        self._client_orders_pruned_s = -CLIENT_ORDER_PRUNE_INTERVAL_S
        self._keys_pruned_s = -KEY_PRUNE_INTERVAL_S
        # reservations per account since its last trim, least recently reserving first
        self._reserved_since_trim: OrderedDict[int, int] = OrderedDict()
        # Whether an account's order with this client order id is still live (the gateway sets
        # it to its projection's answer); a live order's reservation is never pruned.
        self.client_order_live: Callable[[int, str], bool] = lambda account, cid: False

    def secret_of(self, key_id: str) -> str:
        """Derive the secret of `key_id` from the master key (the database holds no secret)."""
        return derive_secret(self._master_key, key_id)

    async def create(
        self, account: int, scopes: Iterable[str], *, parent_key_id: str | None = None
    ) -> tuple[ApiKey, str]:
        """Issue a key for `account` with `scopes`; return it and its secret, shown only now.

        `parent_key_id` is the key that asks (POST /keys): revoking it revokes the new key too.
        It must be an active key of `account` when the new key is inserted, checked in the same
        statement under a share lock of its row, so that a revocation running at once (which
        locks that row) cannot miss the new key. The scopes are not checked against the parent's
        here (the gateway does). First, every KEY_PRUNE_INTERVAL_S, forget revoked keys past
        KEY_REVOKED_RETENTION_NS; after, the account's revoked keys beyond
        KEYS_REVOKED_PER_ACCOUNT_MAX.

        Raises WireError(BAD_REQUEST) for a system account or unknown scopes, KEYS_FULL for an
        account that already has KEYS_PER_ACCOUNT_MAX active keys; WireError(UNAUTHORIZED) when the parent is
        no active key of the account (revoked meanwhile).
        """
        if isinstance(account, bool) or not ACCOUNT_FIRST_USER <= account <= ACCOUNT_MAX:
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"account: expected a user account >= {ACCOUNT_FIRST_USER}, found {account!r}",
            )
        ordered = _scopes_of(scopes)
        key_id = KEY_ID_PREFIX + secrets.token_hex(KEY_ID_HEX_CHARS // 2)
        secret = self.secret_of(key_id)
        created_ns = self._clock_ns()
        now_s = self._clock_s()
        if now_s - self._keys_pruned_s >= KEY_PRUNE_INTERVAL_S:
            self._keys_pruned_s = now_s
            await self.prune_revoked_keys(created_ns - KEY_REVOKED_RETENTION_NS)
        # The count and the insert are one statement; concurrent creates may overshoot slightly.
        # The parent's row is share-locked: a revoke holding it waits, or is waited for and then
        # found (the parent revoked, nothing is inserted).
        inserted = await self._pool.fetchval(
            """
            WITH parent AS (
                SELECT key_id FROM api_keys
                WHERE key_id = $7 AND account = $2 AND NOT revoked FOR SHARE
            )
            INSERT INTO api_keys (key_id, account, scopes, secret_sha256, created_ns, parent_key_id)
            SELECT $1, $2, $3, $4, $5, $7
            WHERE ($7::text IS NULL OR EXISTS (SELECT 1 FROM parent))
              AND (SELECT count(*) FROM api_keys WHERE account = $2 AND NOT revoked) < $6
            RETURNING true
            """,
            key_id,
            account,
            builtins.list(ordered),
            _secret_sha256(secret),
            created_ns,
            KEYS_PER_ACCOUNT_MAX,
            parent_key_id,
        )
        if not inserted:
            if parent_key_id is not None and not await self._active(account, parent_key_id):
                self.forget(parent_key_id)
                raise WireError(
                    ErrorCode.UNAUTHORIZED,
                    f"key {parent_key_id}: expected an active key of account {account} to "
                    "create a key with, found it revoked",
                )
            raise WireError(
                ErrorCode.KEYS_FULL,
                f"account {account}: expected at most {KEYS_PER_ACCOUNT_MAX} active keys, found "
                f"{KEYS_PER_ACCOUNT_MAX} already; revoke one first",
            )
        await self._trim_revoked(account)
        self._unknown.pop(key_id, None)
        key = ApiKey(
            key_id=key_id,
            account=account,
            scopes=ordered,
            created_ns=created_ns,
            parent_key_id=parent_key_id,
        )
        return key, secret

    async def _active(self, account: int, key_id: str) -> bool:
        found = await self._pool.fetchval(
            "SELECT true FROM api_keys WHERE key_id = $1 AND account = $2 AND NOT revoked",
            key_id,
            account,
        )
        return bool(found)

    async def _trim_revoked(self, account: int) -> int:
        """Forget `account`'s revoked keys beyond its newest KEYS_REVOKED_PER_ACCOUNT_MAX."""
        status = await self._pool.execute(
            """
            DELETE FROM api_keys WHERE key_id IN (
                SELECT key_id FROM api_keys WHERE account = $1 AND revoked
                ORDER BY revoked_ns DESC, key_id OFFSET $2
            )
            """,
            account,
            KEYS_REVOKED_PER_ACCOUNT_MAX,
        )
        return int(status.split()[-1])

    async def prune_revoked_keys(self, before_ns: int) -> int:
        """Forget up to KEY_PRUNE_ROWS_MAX keys revoked before `before_ns`; return how many.

        A forgotten key is unknown: it stays refused, and the sessions it still had (none, once
        the revocation reached them) are closed as if revoked (`revoked_among`).
        """
        status = await self._pool.execute(
            """
            DELETE FROM api_keys WHERE key_id IN (
                SELECT key_id FROM api_keys WHERE revoked AND revoked_ns < $1
                ORDER BY revoked_ns LIMIT $2
            )
            """,
            before_ns,
            KEY_PRUNE_ROWS_MAX,
        )
        return int(status.split()[-1])

    async def get(self, key_id: str) -> ApiKey | None:
        """Return the key (revoked ones too), or None when unknown; cached for KEY_CACHE_TTL_S,
        an unknown id for KEY_UNKNOWN_CACHE_TTL_S.

        Raises MasterKeyMismatch when the key was issued under another master key, and
        WireError(UNAVAILABLE) when KEY_LOOKUPS_WAITING_MAX lookups already wait for the database.
        """
        now_s = self._clock_s()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now_s:
            return cached[1]
        unknown_until_s = self._unknown.get(key_id)
        if unknown_until_s is not None and unknown_until_s > now_s:
            return None
        row = await self._lookup(key_id)
        if row is None:
            self._cache.pop(key_id, None)
            self._remember_unknown(key_id, now_s)
            return None
        self._unknown.pop(key_id, None)
        if not hmac.compare_digest(
            bytes(row["secret_sha256"]), _secret_sha256(self.secret_of(key_id))
        ):
            log.error("key %s was issued under another GX_GATEWAY_MASTER_KEY than this one", key_id)
            raise MasterKeyMismatch(
                f"key {key_id}: issued under another gateway master key; run every gateway with "
                "the GX_GATEWAY_MASTER_KEY the key was created with, or issue a new key"
            )
        key = _key_of(row)
        self._cache[key_id] = (now_s + KEY_CACHE_TTL_S, key)
        self._cache.move_to_end(key_id)
        while len(self._cache) > KEY_CACHE_ENTRIES_MAX:
            self._cache.popitem(last=False)
        return key

    async def _lookup(self, key_id: str) -> asyncpg.Record | None:
        """Read one key's row, holding at most KEY_LOOKUPS_CONCURRENT_MAX pool connections."""
        admitted_max = KEY_LOOKUPS_CONCURRENT_MAX + KEY_LOOKUPS_WAITING_MAX
        if self._lookups_admitted >= admitted_max:
            raise WireError(
                ErrorCode.UNAVAILABLE,
                f"key lookups: expected at most {KEY_LOOKUPS_WAITING_MAX} waiting for the "
                f"database, found {self._lookups_admitted - KEY_LOOKUPS_CONCURRENT_MAX}; retry in "
                "a moment",
            )
        self._lookups_admitted += 1
        try:
            async with self._lookups:
                row: asyncpg.Record | None = await self._pool.fetchrow(
                    "SELECT key_id, account, scopes, secret_sha256, created_ns, revoked, "
                    "parent_key_id FROM api_keys WHERE key_id = $1",
                    key_id,
                )
                return row
        finally:
            self._lookups_admitted -= 1

    def _remember_unknown(self, key_id: str, now_s: float) -> None:
        """Cache `key_id` as unknown, apart from the keys: random ids cannot push keys out."""
        self._unknown[key_id] = now_s + KEY_UNKNOWN_CACHE_TTL_S
        self._unknown.move_to_end(key_id)
        while len(self._unknown) > KEY_UNKNOWN_CACHE_ENTRIES_MAX:
            self._unknown.popitem(last=False)

    def forget(self, key_id: str) -> None:
        """Drop `key_id` from the cache (found revoked): its next use reads the database."""
        self._cache.pop(key_id, None)

    async def revoked_among(self, key_ids: Iterable[str]) -> builtins.list[str]:
        """Return which of `key_ids` are revoked or gone (one query, by primary key).

        A key no longer stored (pruned, or deleted by an operator) counts as revoked.
        """
        rows = await self._pool.fetch(
            "SELECT k.key_id FROM unnest($1::text[]) AS k(key_id) WHERE NOT EXISTS "
            "(SELECT 1 FROM api_keys a WHERE a.key_id = k.key_id AND NOT a.revoked)",
            builtins.list(key_ids),
        )
        return [row["key_id"] for row in rows]

    async def list(self, account: int) -> builtins.list[ApiKey]:
        """Return every key of `account`, revoked ones too, oldest first."""
        rows = await self._pool.fetch(
            "SELECT key_id, account, scopes, created_ns, revoked, parent_key_id FROM api_keys "
            "WHERE account = $1 ORDER BY created_ns, key_id",
            account,
        )
        return [_key_of(row) for row in rows]

    async def revoke(self, account: int, key_id: str) -> builtins.list[str]:
        """Revoke `key_id` if `account` owns it, and every key minted under it at any depth;
        return the ids revoked, `key_id` first, or [] when `account` has no such key.

        Revoking an already revoked key revokes what it minted again (nothing new, normally) and
        returns its ids too. Other gateway instances stop accepting the keys within
        KEY_CACHE_TTL_S; this one at once. One transaction: the key's row is locked first, so a
        key being minted with it at the same moment is either committed before the descendants
        are read (and revoked with them) or refused (`create`); each generation is read by a new
        statement, after the previous one's rows are locked, for the same reason.
        """
        revoked_ns = self._clock_ns()
        async with self._pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "UPDATE api_keys SET revoked = true, "
                "revoked_ns = CASE WHEN revoked THEN revoked_ns ELSE $3 END "
                "WHERE key_id = $1 AND account = $2 RETURNING true",
                key_id,
                account,
                revoked_ns,
            )
            if not found:
                return []
            revoked = [key_id]
            frontier = [key_id]
            while frontier:  # a key's parent is older than it: no cycle, the tree is finite
                rows = await conn.fetch(
                    "UPDATE api_keys SET revoked = true, "
                    "revoked_ns = CASE WHEN revoked THEN revoked_ns ELSE $2 END "
                    "WHERE parent_key_id = ANY($1::text[]) RETURNING key_id",
                    frontier,
                    revoked_ns,
                )
                frontier = [row["key_id"] for row in rows if row["key_id"] not in revoked]
                revoked += frontier
        for gone in revoked:
            self._cache.pop(gone, None)
        return revoked

    async def use_nonce(self, key_id: str, nonce: str, ts_ms: int) -> bool:
        """Record `nonce` for `key_id`; return False when the key has used it before.

        Every NONCE_PRUNE_INTERVAL_S, first delete nonces older than NONCE_HORIZON_MS before
        `ts_ms` (their requests are outside the signature window anyway).
        """
        now_s = self._clock_s()
        if now_s - self._nonces_pruned_s >= NONCE_PRUNE_INTERVAL_S:
            self._nonces_pruned_s = now_s
            await self.prune_nonces(ts_ms - NONCE_HORIZON_MS)
        status = await self._pool.execute(
            "INSERT INTO api_nonces (key_id, nonce, ts_ms) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING",
            key_id,
            nonce,
            ts_ms,
        )
        return bool(status == "INSERT 0 1")

    async def prune_nonces(self, before_ms: int) -> int:
        """Delete nonces whose request ts_ms is before `before_ms`; return how many."""
        status = await self._pool.execute("DELETE FROM api_nonces WHERE ts_ms < $1", before_ms)
        return int(status.split()[-1])

    async def reserve_client_order(self, account: int, client_order_id: str, ts_ns: int) -> bool:
        """Reserve `client_order_id` for `account`; return False when it was reserved before.

        Every CLIENT_ORDER_PRUNE_INTERVAL_S, first forget reservations older than
        CLIENT_ORDER_RETENTION_NS before `ts_ns` (see `prune_client_orders`).
        Raises WireError(BAD_REQUEST) for an empty id or one over CLIENT_ORDER_ID_CHARS_MAX.
        """
        if not 0 < len(client_order_id) <= CLIENT_ORDER_ID_CHARS_MAX:
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"client_order_id: expected 1-{CLIENT_ORDER_ID_CHARS_MAX} characters, found "
                f"{len(client_order_id)}",
            )
        now_s = self._clock_s()
        if now_s - self._client_orders_pruned_s >= CLIENT_ORDER_PRUNE_INTERVAL_S:
            self._client_orders_pruned_s = now_s
            await self.prune_client_orders(ts_ns - CLIENT_ORDER_RETENTION_NS)
        status = await self._pool.execute(
            "INSERT INTO client_orders (account, client_order_id, ts_ns) VALUES ($1, $2, $3) "
            "ON CONFLICT DO NOTHING",
            account,
            client_order_id,
            ts_ns,
        )
        reserved = status == "INSERT 0 1"
        if reserved and self._count_reservation(account) >= CLIENT_ORDER_TRIM_EVERY:
            self._reserved_since_trim[account] = 0
            await self.trim_client_orders(account)
        return reserved

    def _count_reservation(self, account: int) -> int:
        """Count one reservation of `account` since its last trim; return the count."""
        count = self._reserved_since_trim.pop(account, 0) + 1
        self._reserved_since_trim[account] = count
        while len(self._reserved_since_trim) > CLIENT_ORDER_TRIM_ACCOUNTS_MAX:
            self._reserved_since_trim.popitem(last=False)
        return count

    async def trim_client_orders(self, account: int) -> int:
        """Forget up to CLIENT_ORDER_PRUNE_ROWS_MAX of `account`'s reservations beyond its newest
        CLIENT_ORDERS_PER_ACCOUNT_MAX whose order is not live; return how many."""
        rows = await self._pool.fetch(
            "SELECT client_order_id FROM client_orders WHERE account = $1 "
            "ORDER BY ts_ns DESC OFFSET $2 LIMIT $3",
            account,
            CLIENT_ORDERS_PER_ACCOUNT_MAX,
            CLIENT_ORDER_PRUNE_ROWS_MAX,
        )
        gone = [r["client_order_id"] for r in rows]
        gone = [cid for cid in gone if not self.client_order_live(account, cid)]
        if not gone:
            return 0
        await self._pool.execute(
            "DELETE FROM client_orders WHERE account = $1 AND client_order_id = ANY($2::text[])",
            account,
            gone,
        )
        return len(gone)

    async def release_client_order(self, account: int, client_order_id: str, ts_ns: int) -> None:
        """Forget the reservation `reserve_client_order(account, client_order_id, ts_ns)` made,
        when its command was never sent (hub.NotSent): a retry with the id then places the order.
        The `ts_ns` must match, so that only that reservation goes."""
        await self._pool.execute(
            "DELETE FROM client_orders WHERE account = $1 AND client_order_id = $2 AND ts_ns = $3",
            account,
            client_order_id,
            ts_ns,
        )

    async def prune_client_orders(self, before_ns: int) -> int:
        """Forget up to CLIENT_ORDER_PRUNE_ROWS_MAX reservations made before `before_ns` whose
        order is not live (`client_order_live`); return how many."""
        rows = await self._pool.fetch(
            "SELECT account, client_order_id FROM client_orders WHERE ts_ns < $1 "
            "ORDER BY ts_ns LIMIT $2",
            before_ns,
            CLIENT_ORDER_PRUNE_ROWS_MAX,
        )
        gone = [(r["account"], r["client_order_id"]) for r in rows]
        gone = [(a, cid) for a, cid in gone if not self.client_order_live(a, cid)]
        if not gone:
            return 0
        await self._pool.execute(
            "DELETE FROM client_orders AS c USING unnest($1::bigint[], $2::text[]) AS g(a, i) "
            "WHERE c.account = g.a AND c.client_order_id = g.i",
            [a for a, _ in gone],
            [cid for _, cid in gone],
        )
        return len(gone)
