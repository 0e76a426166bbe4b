"""The settlement ledger's PostgreSQL schema: ordered migrations, each applied once.

Every migration is one SQL string applied in its own transaction under an advisory lock and
recorded in `schema_migrations`, so running `migrate` again (or from two processes at once) is
harmless. Never edit a released migration: append a new one.

Money is integer micro-dollars, quantities integer lots, times integer ns: every number is a
bigint (small codes a smallint); there are no floats and no numeric columns. Balances are not
stored: `balances` is a view over `postings`, whose amounts sum to zero after every commit.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "Migration",
    "MIGRATIONS",
    "migrate",
    "applied_versions",
    "SchemaError",
    "BUCKET_AVAILABLE",
    "BUCKET_HELD",
    "BUCKET_ESCROW",
    "BUCKET_COLLATERAL",
    "BUCKET_PENDING",
    "TRANSFER_DEPOSIT",
    "TRANSFER_WITHDRAWAL",
    "TRANSFER_PENDING",
    "TRANSFER_COMPLETED",
    "TRANSFER_REJECTED",
    "ORDER_OPEN",
    "ORDER_FILLED",
    "ORDER_CANCELLED",
    "ORDER_EXPIRED",
    "DELIVERY_ASSIGNED",
    "DELIVERY_STARTED",
    "DELIVERY_SETTLED",
]

# postings.bucket
BUCKET_AVAILABLE, BUCKET_HELD, BUCKET_ESCROW, BUCKET_COLLATERAL = 1, 2, 3, 4
BUCKET_PENDING = 5  # withdrawals requested, not yet approved or rejected
# transfers.kind and transfers.status
TRANSFER_DEPOSIT, TRANSFER_WITHDRAWAL = 1, 2
TRANSFER_PENDING, TRANSFER_COMPLETED, TRANSFER_REJECTED = 1, 2, 3
# orders.status
ORDER_OPEN, ORDER_FILLED, ORDER_CANCELLED, ORDER_EXPIRED = 1, 2, 3, 4
# deliveries.state
DELIVERY_ASSIGNED, DELIVERY_STARTED, DELIVERY_SETTLED = 1, 2, 3

# Any constant shared by every process that migrates this database (pg_advisory_xact_lock key).
_MIGRATION_LOCK_KEY = 0x67785F6C65646765  # b"gx_ledge" as a positive bigint


class SchemaError(RuntimeError):
    """Raise when the database holds a schema this code cannot work with."""


class Migration(msgspec.Struct, frozen=True):
    """One schema change: its version (ascending, never reused), a name and the SQL."""

    version: int
    name: str
    sql: str


_V1_LEDGER = """
CREATE TABLE postings (
    event_partition integer  NOT NULL,  -- Kafka partition of the CashChanged record
    event_offset    bigint   NOT NULL,  -- Kafka offset of the record holding the CashChanged
    posting_index   smallint NOT NULL,  -- bucket - 1: one posting per non-zero bucket delta
    shard           bigint   NOT NULL,
    seq             bigint   NOT NULL,
    input_offset    bigint   NOT NULL,  -- the command (gx.commands offset) that moved the money
    account         bigint   NOT NULL,
    bucket          smallint NOT NULL CHECK (bucket BETWEEN 1 AND 4),
    amount_micros   bigint   NOT NULL CHECK (amount_micros <> 0),
    reason          smallint NOT NULL,  -- schemas.codes.CashReason
    ref_id          bigint   NOT NULL,
    ts_event        bigint   NOT NULL,
    PRIMARY KEY (event_partition, event_offset, posting_index),
    -- the same event produced twice (at two offsets) still posts once
    UNIQUE (shard, seq, posting_index)
);
CREATE INDEX postings_by_account ON postings (account, bucket);

CREATE VIEW balances AS
    SELECT account, bucket, sum(amount_micros)::bigint AS amount_micros
    FROM postings
    GROUP BY account, bucket;

CREATE TABLE trades (
    shard            bigint   NOT NULL,
    trade_id         bigint   NOT NULL,
    event_partition  integer  NOT NULL,
    event_offset     bigint   NOT NULL,
    seq              bigint   NOT NULL,
    input_offset     bigint   NOT NULL,
    ts_event         bigint   NOT NULL,
    symbol           text     NOT NULL,
    price_ticks      bigint   NOT NULL,
    lots             bigint   NOT NULL,
    aggressor_side   text     NOT NULL CHECK (aggressor_side IN ('buy', 'sell')),
    maker_order_id   bigint   NOT NULL,
    taker_order_id   bigint   NOT NULL,
    maker_account    bigint   NOT NULL,
    taker_account    bigint   NOT NULL,
    maker_fee_micros bigint   NOT NULL,
    taker_fee_micros bigint   NOT NULL,
    PRIMARY KEY (shard, trade_id),
    UNIQUE (event_partition, event_offset)
);

-- One row per order: its latest state. `seq` is the last event applied (upserts only move on).
CREATE TABLE orders (
    shard           bigint   NOT NULL,
    order_id        bigint   NOT NULL,
    account         bigint   NOT NULL,
    symbol          text     NOT NULL,
    side            text     NOT NULL,
    order_type      text     NOT NULL,
    tif             text     NOT NULL,
    price_ticks     bigint   NOT NULL,
    lots            bigint   NOT NULL,  -- as accepted
    lots_open       bigint   NOT NULL,  -- resting now (amends and cancels change it)
    lots_filled     bigint   NOT NULL,
    status          smallint NOT NULL,  -- 1 open, 2 filled, 3 cancelled, 4 expired
    client_order_id text     NOT NULL,
    expire_ns       bigint   NOT NULL,
    seq_accepted    bigint   NOT NULL,
    ts_accepted     bigint   NOT NULL,
    seq             bigint   NOT NULL,
    ts_event        bigint   NOT NULL,
    PRIMARY KEY (shard, order_id)
);
CREATE INDEX orders_by_account ON orders (account, status);

CREATE TABLE positions (
    account  bigint NOT NULL,
    symbol   text   NOT NULL,
    shard    bigint NOT NULL,
    lots     bigint NOT NULL,  -- signed: long > 0, short < 0
    seq      bigint NOT NULL,
    ts_event bigint NOT NULL,
    PRIMARY KEY (account, symbol)
);

CREATE TABLE deliveries (
    shard           bigint   NOT NULL,
    obligation_id   bigint   NOT NULL,
    symbol          text     NOT NULL,
    provider        bigint   NOT NULL,
    holder          bigint   NOT NULL,
    gpus            bigint   NOT NULL,
    start_ns        bigint   NOT NULL,
    end_ns          bigint   NOT NULL,
    escrow_micros   bigint   NOT NULL,
    state           smallint NOT NULL,  -- 1 assigned, 2 started, 3 settled
    outcome         smallint NOT NULL,  -- schemas.codes.DeliveryOutcome, 0 until settled
    hours_delivered bigint   NOT NULL,
    hours_failed    bigint   NOT NULL,
    released_micros bigint   NOT NULL,
    refund_micros   bigint   NOT NULL,
    penalty_micros  bigint   NOT NULL,
    seq             bigint   NOT NULL,
    ts_event        bigint   NOT NULL,
    PRIMARY KEY (shard, obligation_id)
);

-- Where each consumer resumes: written in the same transaction as the rows it settled.
CREATE TABLE consumer_positions (
    consumer    text    NOT NULL,
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (consumer, topic, partition)
);

-- The last event sequence settled per shard: duplicates at new offsets are recognised by it.
CREATE TABLE shard_positions (
    consumer text   NOT NULL,
    shard    bigint NOT NULL,
    last_seq bigint NOT NULL,
    PRIMARY KEY (consumer, shard)
);

-- Records skipped because they could not be settled, kept with their position for repair.
CREATE TABLE dead_letters (
    consumer  text    NOT NULL,
    topic     text    NOT NULL,
    partition integer NOT NULL,
    "offset"  bigint  NOT NULL,
    reason    text    NOT NULL,
    payload   bytea,
    PRIMARY KEY (consumer, topic, partition, "offset")
);
"""

# Market-data history, queryable in SQL: candles and the GPU price index are functions of the
# settled trades (the same integer definitions as the live feed in streams/marketdata/state.py).
_V2_MARKET_HISTORY = """
CREATE FUNCTION product_hours(symbol text) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE split_part(symbol, '.', 3) WHEN '1h' THEN 1 WHEN '1d' THEN 24 ELSE 168 END::bigint
$$;

-- OHLCV of trades with ts_event in [start_ns, start_ns + interval_ns), per symbol.
CREATE FUNCTION candles(interval_ns bigint)
RETURNS TABLE (symbol text, interval_ns bigint, start_ns bigint, open_ticks bigint,
               high_ticks bigint, low_ticks bigint, close_ticks bigint, volume_lots bigint,
               trades bigint)
LANGUAGE sql STABLE AS $$
    SELECT t.symbol, candles.interval_ns, t.ts_event / candles.interval_ns * candles.interval_ns,
           (array_agg(t.price_ticks ORDER BY t.ts_event, t.shard, t.trade_id))[1],
           max(t.price_ticks), min(t.price_ticks),
           (array_agg(t.price_ticks ORDER BY t.ts_event DESC, t.shard DESC, t.trade_id DESC))[1],
           sum(t.lots)::bigint, count(*)
    FROM trades t
    GROUP BY t.symbol, t.ts_event / candles.interval_ns * candles.interval_ns
$$;

CREATE VIEW candles_1m AS SELECT * FROM candles(60000000000);
CREATE VIEW candles_1h AS SELECT * FROM candles(3600000000000);
CREATE VIEW candles_1d AS SELECT * FROM candles(86400000000000);

-- Per GPU model: volume-weighted price per GPU-hour over the window (at_ns - window_ns, at_ns],
-- floor(sum(price x lots x hours) / sum(lots x hours)); price 0 with volume 0 when empty.
CREATE FUNCTION price_index(gpu text, at_ns bigint, window_ns bigint DEFAULT 86400000000000)
RETURNS TABLE (price_ticks bigint, volume_gpu_hours bigint, volume_lots bigint, trades bigint)
LANGUAGE sql STABLE AS $$
    SELECT COALESCE(sum(t.price_ticks * t.lots * product_hours(t.symbol))::bigint
                    / NULLIF(sum(t.lots * product_hours(t.symbol))::bigint, 0), 0),
           COALESCE(sum(t.lots * product_hours(t.symbol)), 0)::bigint,
           COALESCE(sum(t.lots), 0)::bigint,
           count(*)
    FROM trades t
    WHERE split_part(t.symbol, '.', 1) = gpu
      AND t.ts_event > at_ns - window_ns AND t.ts_event <= at_ns
$$;
"""

# The gateway's shared state, so that every gateway instance agrees (exchange/gateway/keys.py).
# API keys hold no secret: a key's secret is derived from the gateway's master key and its id;
# only its sha256 is stored, to confirm the gateway runs with the master key that made the key.
_V3_GATEWAY = """
CREATE TABLE api_keys (
    key_id        text    PRIMARY KEY,
    account       bigint  NOT NULL,
    scopes        text[]  NOT NULL,
    secret_sha256 bytea   NOT NULL,
    created_ns    bigint  NOT NULL,
    revoked       boolean NOT NULL DEFAULT false
);
CREATE INDEX api_keys_by_account ON api_keys (account);

-- Nonces seen per key; rows older than the signature window are pruned by time.
CREATE TABLE api_nonces (
    key_id text   NOT NULL,
    nonce  text   NOT NULL,
    ts_ms  bigint NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
CREATE INDEX api_nonces_by_ts ON api_nonces (ts_ms);

-- Client order ids reserved by order placement: a retry finds its id taken on any instance.
CREATE TABLE client_orders (
    account         bigint NOT NULL,
    client_order_id text   NOT NULL,
    ts_ns           bigint NOT NULL,
    PRIMARY KEY (account, client_order_id)
);
"""

# A gx.events record holds a batch of events (schemas/codec.py), so a Kafka position no longer
# names one event; its shard sequence number does. Postings are keyed by (shard, seq, index), and
# a trade by its id alone; the partition and offset columns stay, telling where each came from.
_V4_EVENT_BATCHES = """
ALTER TABLE postings DROP CONSTRAINT postings_pkey;
ALTER TABLE postings DROP CONSTRAINT postings_shard_seq_posting_index_key;
ALTER TABLE postings ADD PRIMARY KEY (shard, seq, posting_index);
ALTER TABLE trades DROP CONSTRAINT trades_event_partition_event_offset_key;
"""

# Several events of one batch record can be dead letters: each keeps its own row, named by its
# index in the record (0 for a record of the first, single-event format).
_V5_DEAD_LETTER_EVENTS = """
ALTER TABLE dead_letters ADD COLUMN event_index integer NOT NULL DEFAULT 0;
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_pkey;
ALTER TABLE dead_letters ADD PRIMARY KEY (consumer, topic, partition, "offset", event_index);
"""

# The gateway forgets old client order id reservations (exchange/gateway/keys.py), oldest first.
_V6_CLIENT_ORDER_AGE = """
CREATE INDEX client_orders_by_ts ON client_orders (ts_ns);
"""

# The gateway's ledger endpoint reads an account's newest postings: index them by account and
# sequence (read backwards, a page costs its size), not by bucket (which made every page sort
# the account's whole history). Balances sum every posting either way. The new index is built
# before the old one is dropped: the build's lock lets readers (gateways' balance and ledger
# queries) go on; the drop's exclusive lock is held only from the drop to the commit.
_V7_POSTINGS_BY_ACCOUNT_SEQ = """
CREATE INDEX postings_by_account_seq ON postings (account, seq, posting_index);
DROP INDEX postings_by_account;
"""

# Accounts' SSH public keys (exchange/gateway/ssh_keys.py): a provider installs the holder's keys
# on the machines it delivers. Named by fingerprint, unique per account.
_V8_SSH_KEYS = """
CREATE TABLE ssh_keys (
    account     bigint  NOT NULL,
    fingerprint text    NOT NULL,
    kind        text    NOT NULL,
    bits        integer NOT NULL,
    public_key  text    NOT NULL,
    comment     text    NOT NULL,
    created_ns  bigint  NOT NULL,
    PRIMARY KEY (account, fingerprint)
);
"""

# Money in and out: the pending-withdrawals bucket, and one row per deposit or withdrawal with
# its reference or destination and status (the ledger's postings carry only ids).
_V9_TRANSFERS = f"""
ALTER TABLE postings DROP CONSTRAINT postings_bucket_check;
ALTER TABLE postings ADD CONSTRAINT postings_bucket_check CHECK (bucket BETWEEN 1 AND 5);
CREATE TABLE transfers (
    shard         bigint   NOT NULL,
    kind          smallint NOT NULL,  -- {TRANSFER_DEPOSIT} deposit, {TRANSFER_WITHDRAWAL} withdrawal
    transfer_id   bigint   NOT NULL,  -- the deposit's or withdrawal's id (its postings' ref_id)
    account       bigint   NOT NULL,
    amount_micros bigint   NOT NULL,
    reference     text     NOT NULL,  -- a deposit's payment reference, a withdrawal's destination
    status        smallint NOT NULL,  -- {TRANSFER_PENDING} pending, {TRANSFER_COMPLETED} completed, {TRANSFER_REJECTED} rejected
    ts_requested  bigint   NOT NULL,
    seq           bigint   NOT NULL,  -- the last event applied
    ts_event      bigint   NOT NULL,
    PRIMARY KEY (shard, kind, transfer_id)
);
CREATE INDEX transfers_by_account ON transfers (account, kind, ts_requested);
"""

# API keys remember the key that created them (`POST /keys`; NULL for `gx keys create`), so that
# revoking a key revokes every key minted under it, and when they were revoked, so that revoked
# keys are forgotten after a retention (exchange/gateway/keys.py). A key revoked before this
# migration counts as revoked when it was created. Client order reservations are indexed by
# account and age, so that each account's oldest beyond its bound can be forgotten.
_V10_KEY_LINEAGE = """
ALTER TABLE api_keys ADD COLUMN parent_key_id text;
ALTER TABLE api_keys ADD COLUMN revoked_ns bigint NOT NULL DEFAULT 0;
UPDATE api_keys SET revoked_ns = created_ns WHERE revoked;
CREATE INDEX api_keys_by_parent ON api_keys (parent_key_id) WHERE parent_key_id IS NOT NULL;
CREATE INDEX api_keys_revoked_by_time ON api_keys (revoked_ns) WHERE revoked;
CREATE INDEX client_orders_by_account_ts ON client_orders (account, ts_ns);
"""

# A dead letter replayed after a fix (streams/settlement/dead_letters.py) is marked, in the
# transaction that settled it, so it is never replayed twice.
_V11_DEAD_LETTER_REPLAY = """
ALTER TABLE dead_letters ADD COLUMN replayed_ns bigint;
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "ledger", _V1_LEDGER),
    Migration(2, "market history", _V2_MARKET_HISTORY),
    Migration(3, "gateway", _V3_GATEWAY),
    Migration(4, "event batches", _V4_EVENT_BATCHES),
    Migration(5, "dead letters per event", _V5_DEAD_LETTER_EVENTS),
    Migration(6, "client order reservations by age", _V6_CLIENT_ORDER_AGE),
    Migration(7, "postings by account and sequence", _V7_POSTINGS_BY_ACCOUNT_SEQ),
    Migration(8, "ssh keys", _V8_SSH_KEYS),
    Migration(9, "transfers", _V9_TRANSFERS),
    Migration(10, "api key lineage and revocation time", _V10_KEY_LINEAGE),
    Migration(11, "dead letter replay", _V11_DEAD_LETTER_REPLAY),
)

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version bigint PRIMARY KEY,
    name    text   NOT NULL
)
"""


def _check_order(migrations: tuple[Migration, ...]) -> None:
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)) or not versions or versions[0] < 1:
        raise SchemaError(f"migrations: expected ascending unique versions >= 1, found {versions}")


_check_order(MIGRATIONS)


async def applied_versions(conn: Any) -> list[int]:
    """Return the versions recorded in `schema_migrations` (empty for a fresh database)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return []
    rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    return [int(row["version"]) for row in rows]


async def migrate(conn: Any, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[int]:
    """Apply every migration not yet recorded, in order; return the versions applied now.

    `conn` is an asyncpg connection. Raises SchemaError when the database is newer than this code.
    """
    _check_order(migrations)
    applied_now: list[int] = []
    for migration in migrations:
        async with conn.transaction():
            # Serialise concurrent migrators; the lock ends with the transaction.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
            await conn.execute(_CREATE_MIGRATIONS_TABLE)
            newest = await conn.fetchval("SELECT max(version) FROM schema_migrations")
            if newest is not None and newest > migrations[-1].version:
                raise SchemaError(
                    f"database schema is at version {newest}, this code knows up to "
                    f"{migrations[-1].version}: upgrade gx before running it on this database"
                )
            done = await conn.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
            )
            if done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            applied_now.append(migration.version)
    return applied_now
