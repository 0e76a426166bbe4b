"""Identifier types. Every id is an integer with a type of its own.

Shards: every id an engine allocates (order, trade, obligation, instrument, withdrawal, deposit
and transfer reference) carries its shard, as `shard * ID_SHARD_STRIDE + local id`, so ids of two
shards never collide and the shard of an id is `id // ID_SHARD_STRIDE`, known to every process
without a lookup. Shard 0 adds nothing: its ids, and so every single-shard log, snapshot and
golden scenario, are those of an engine that knew no shards. The stride keeps the ids of
`SHARDS_MAX` shards below `ID_LIMIT`, JavaScript's exact integers, because ids travel as JSON
numbers (exchange/wire.py ID_MAX). The price: order, obligation and withdrawal ids hold their
slot in their low 24 bits (matching/layout.py ORDER_SLOT_BITS), so one shard allocates at most
`ID_SHARD_STRIDE >> 24` of each over the life of its log.
"""

from __future__ import annotations

from typing import NewType

__all__ = [
    "AccountId",
    "OrderId",
    "InstrumentId",
    "ObligationId",
    "TradeId",
    "ShardId",
    "ID_LIMIT",
    "ID_SHARD_STRIDE",
    "SHARDS_MAX",
    "id_base",
    "shard_of_id",
    "ACCOUNT_EXTERNAL",
    "ACCOUNT_FEES",
    "ACCOUNT_FIRST_USER",
]

AccountId = NewType("AccountId", int)
OrderId = NewType("OrderId", int)
InstrumentId = NewType("InstrumentId", int)
ObligationId = NewType("ObligationId", int)
TradeId = NewType("TradeId", int)
ShardId = NewType("ShardId", int)

# System accounts: the counterparty of deposits and withdrawals, and the exchange's fee income.
# With them every cash movement has two sides, so all postings sum to zero.
ACCOUNT_EXTERNAL = AccountId(0)
ACCOUNT_FEES = AccountId(1)
ACCOUNT_FIRST_USER = AccountId(10)

# Ids stay below this: 2**53, the integers a JSON number carries exactly to a JavaScript client.
ID_LIMIT = 2**53
# At most this many shards. A shard owns whole (GPU model, region) pairs and the catalog admits at
# most 64 of them (schemas/catalog.py), so more shards would own nothing.
SHARDS_MAX = 64
# Ids of shard s lie in [s * ID_SHARD_STRIDE, (s + 1) * ID_SHARD_STRIDE).
ID_SHARD_STRIDE = ID_LIMIT // SHARDS_MAX


def id_base(shard: int) -> int:
    """Return the first id of a shard's range; raise ValueError for a shard out of range."""
    if not isinstance(shard, int) or not 0 <= shard < SHARDS_MAX:
        raise ValueError(f"shard: expected 0..{SHARDS_MAX - 1}, found {shard!r}")
    return shard * ID_SHARD_STRIDE


def shard_of_id(engine_id: int) -> ShardId:
    """Return the shard that allocated an id (any kind the engine allocates)."""
    return ShardId(engine_id // ID_SHARD_STRIDE)
