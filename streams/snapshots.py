"""Engine snapshots in PostgreSQL: a shard's whole state with the input offset it was taken at.

A snapshot says "the engine state after applying every command before `input_offset`, having
produced events 1..`event_seq`". A restarting engine runner loads the latest one and replays the
commands log from `input_offset` (ARCHITECTURE 6). Snapshots are only an optimisation: with none,
the runner replays the log from its start and reaches the same state.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Self

import asyncpg
import msgspec

__all__ = ["LeaseError", "Snapshot", "SnapshotStore", "snapshots_kept_default"]

snapshots_kept_default = 3  # per shard: the newest few, in case the newest is unreadable
_schema_lock_key = 0x67785F736E6170  # pg_advisory_xact_lock key: concurrent runners create once
_lease_lock_class = 0x6778  # pg_try_advisory_lock(class, shard): one engine runner per shard
lease_wait_s_max = 10.0  # a killed holder's session ends once PostgreSQL sees its socket close
lease_poll_s = 0.1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS engine_snapshots (
    shard int NOT NULL,
    input_offset bigint NOT NULL,
    event_seq bigint NOT NULL,
    state_hash text NOT NULL,
    snapshot bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard, input_offset)
)
"""

_INSERT = """
INSERT INTO engine_snapshots (shard, input_offset, event_seq, state_hash, snapshot)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (shard, input_offset) DO NOTHING
"""

# Keep the newest `$2` snapshots of shard `$1`.
_PRUNE = """
DELETE FROM engine_snapshots
WHERE shard = $1 AND input_offset < (
    SELECT min(input_offset) FROM (
        SELECT input_offset FROM engine_snapshots
        WHERE shard = $1 ORDER BY input_offset DESC LIMIT $2
    ) AS newest
)
"""

_LATEST = """
SELECT shard, input_offset, event_seq, state_hash, snapshot FROM engine_snapshots
WHERE shard = $1 ORDER BY input_offset DESC LIMIT 1
"""

_NEWEST = """
SELECT input_offset FROM engine_snapshots WHERE shard = $1 ORDER BY input_offset DESC LIMIT $2
"""

_AT = """
SELECT shard, input_offset, event_seq, state_hash, snapshot FROM engine_snapshots
WHERE shard = $1 AND input_offset = $2
"""


class LeaseError(RuntimeError):
    """Raise when another process holds the shard: two writers of one shard would duplicate."""


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One saved engine state: after the commands before `input_offset`, events 1..`event_seq`."""

    shard: int
    input_offset: int  # the next command offset to apply
    event_seq: int  # the last event sequence number the state has produced
    state_hash: str
    snapshot: bytes


class SnapshotStore:
    """Save and load engine snapshots; create the table on `open()` (idempotent)."""

    def __init__(self, dsn: str, *, kept: int = snapshots_kept_default) -> None:
        """Describe a store in the database at `dsn` keeping the newest `kept` per shard."""
        if kept < 1:
            raise ValueError(f"kept: expected >= 1, found {kept}")
        self.dsn = dsn
        self.kept = kept
        self._conn: asyncpg.Connection | None = None

    async def open(self) -> Self:
        """Connect and create the schema if it is missing; return self."""
        if self._conn is not None:
            return self
        conn = await asyncpg.connect(self.dsn)
        try:
            async with conn.transaction():
                # CREATE TABLE IF NOT EXISTS still races on the catalog: serialise creators.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _schema_lock_key)
                await conn.execute(_SCHEMA)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        return self

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def save(self, snapshot: Snapshot) -> None:
        """Store `snapshot` and drop the shard's older ones beyond the newest `kept`.

        Saving the same (shard, input_offset) twice keeps the first: the engine is deterministic,
        so both describe the same state.
        """
        if snapshot.input_offset < 0 or snapshot.event_seq < 0:
            raise ValueError(
                f"snapshot: expected input_offset and event_seq >= 0, found "
                f"{snapshot.input_offset} and {snapshot.event_seq}"
            )
        conn = self._connection()
        async with conn.transaction():
            await conn.execute(
                _INSERT,
                snapshot.shard,
                snapshot.input_offset,
                snapshot.event_seq,
                snapshot.state_hash,
                snapshot.snapshot,
            )
            await conn.execute(_PRUNE, snapshot.shard, self.kept)

    async def latest(self, shard: int) -> Snapshot | None:
        """Return the shard's snapshot with the highest input offset, or None if it has none."""
        row = await self._connection().fetchrow(_LATEST, shard)
        if row is None:
            return None
        return Snapshot(
            shard=row["shard"],
            input_offset=row["input_offset"],
            event_seq=row["event_seq"],
            state_hash=row["state_hash"],
            snapshot=bytes(row["snapshot"]),
        )

    async def newest(self, shard: int, limit: int) -> list[int]:
        """Return the input offsets of the shard's `limit` newest snapshots, newest first."""
        rows = await self._connection().fetch(_NEWEST, shard, limit)
        return [int(row["input_offset"]) for row in rows]

    async def at(self, shard: int, input_offset: int) -> Snapshot | None:
        """Return the shard's snapshot at `input_offset`, or None if it was pruned meanwhile."""
        row = await self._connection().fetchrow(_AT, shard, input_offset)
        if row is None:
            return None
        return Snapshot(
            shard=row["shard"],
            input_offset=row["input_offset"],
            event_seq=row["event_seq"],
            state_hash=row["state_hash"],
            snapshot=bytes(row["snapshot"]),
        )

    async def acquire_lease(self, shard: int, wait_s: float = lease_wait_s_max) -> None:
        """Hold the shard's single-writer lease for as long as this store's session lives.

        A session-level advisory lock: it ends with the connection, so a process killed with
        SIGKILL releases it as soon as PostgreSQL notices the closed socket (hence the wait).
        """
        conn = self._connection()
        deadline = time.monotonic() + wait_s
        while not await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, $2)", _lease_lock_class, shard
        ):
            if time.monotonic() > deadline:
                raise LeaseError(
                    f"shard {shard} is run by another engine runner (it holds the lease in "
                    f"PostgreSQL); stop it first: two writers of one shard would duplicate events"
                )
            await asyncio.sleep(lease_poll_s)

    async def count(self, shard: int) -> int:
        """Return how many snapshots the shard has (tests and operators)."""
        value = await self._connection().fetchval(
            "SELECT count(*) FROM engine_snapshots WHERE shard = $1", shard
        )
        return int(value)

    def _connection(self) -> asyncpg.Connection:
        if self._conn is None:
            raise RuntimeError("snapshot store is not open: call open() first")
        return self._conn
