"""Engine configuration, state allocation, snapshot, restore and the state hash."""

from __future__ import annotations

import hashlib
import zlib
from typing import NamedTuple

import msgspec
import numpy as np

from matching import layout as lay
from matching.calendar import capacity_horizon_hours
from schemas.catalog import Catalog
from schemas.ids import SHARDS_MAX, id_base

__all__ = [
    "SNAPSHOT_VERSION",
    "EngineConfig",
    "owns",
    "SnapshotVersionError",
    "State",
    "new_state",
    "snapshot_bytes",
    "restore_state",
    "state_hash",
]


class State(NamedTuple):
    """Every array of one shard's engine, in `matching.layout`'s order (ST_META, ST_CFG, ...).

    A tuple of arrays, so Numba passes it to the kernels without its runtime; kernels bind the
    members they use by name. The field order is the snapshot's and the state hash's order.
    """

    meta: np.ndarray
    cfg: np.ndarray
    accounts: np.ndarray
    instruments: np.ndarray
    orders: np.ndarray
    levels: np.ndarray
    level_ht: np.ndarray
    positions: np.ndarray
    position_ht: np.ndarray
    capacity: np.ndarray
    capacity_ht: np.ndarray
    obligations: np.ndarray
    gtd_heap: np.ndarray
    withdrawals: np.ndarray
    deposit_refs: np.ndarray
    scratch: np.ndarray


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Sizes and limits of one shard's engine. Every pool is preallocated; a full pool refuses
    new work with ENGINE_FULL instead of growing."""

    shard: int = 0
    gpus: tuple[str, ...] | None = None  # GPU models this shard lists (None: all)
    regions: tuple[str, ...] | None = None
    # The (GPU model, region) pairs this shard owns (schemas/shards.py ShardMap.pairs_of; None:
    # every pair `gpus` and `regions` admit). It lists only these, and refuses commands naming
    # another pair with WRONG_SHARD.
    pairs: tuple[tuple[str, str], ...] | None = None
    shard_map_digest: str = ""  # the ShardMap.digest() the log runs under ("": none given)
    accounts_max: int = 1 << 16
    instruments_max: int = 1 << 12
    orders_max: int = 1 << 20
    levels_max: int = 1 << 18
    positions_max: int = 1 << 18
    capacity_rows_max: int = 1 << 20
    obligations_max: int = 1 << 18
    withdrawals_max: int = 1 << 14  # pending at once, over all accounts
    deposit_refs_max: int = 1 << 17  # payment references remembered (each deposit's one)
    orders_open_max: int = 1000  # per account
    deposit_max_micros: int = 10**15  # one deposit: one billion USD
    balance_max_micros: int = 10**17
    capacity_gpus_max: int = 1_000_000
    capacity_hours_max: int = 24 * 7 * 10  # hours one capacity update may name
    # Capacity rows (one per provider, GPU model x region and hour) one provider holds at once:
    # the whole catalog (15 pairs) over the whole listing horizon (1512 hours) is 22,680, so an
    # honest provider never meets it, and no provider can take more than its share of the pool.
    capacity_rows_per_account_max: int = 1 << 15
    withdrawal_max_micros: int = 10**12  # one request: one million USD
    withdrawal_day_max_micros: int = 5 * 10**12  # one account's requests per engine day
    # Circuit breaker: a trade more than breaker_move_bps_max (basis points) away from the
    # instrument's reference price halts it for breaker_halt_ns. The reference is the last trade
    # price when the current window of breaker_window_ns engine time began (see
    # matching/kernels/controls.py). 0 bps turns the breaker off.
    breaker_move_bps_max: int = 1000  # 10 %
    breaker_window_ns: int = 300 * 10**9  # 5 minutes
    breaker_halt_ns: int = 300 * 10**9  # 5 minutes

    def check(self) -> None:
        """Raise ValueError naming the first size that cannot work."""
        if not 0 <= self.shard < SHARDS_MAX:
            raise ValueError(f"shard: expected 0..{SHARDS_MAX - 1}, found {self.shard}")
        if not 0 < self.orders_max <= lay.ORDER_SLOT_MASK + 1:
            raise ValueError(f"orders_max: expected 1..{lay.ORDER_SLOT_MASK + 1}")
        if not 0 < self.obligations_max <= lay.ORDER_SLOT_MASK + 1:
            raise ValueError(f"obligations_max: expected 1..{lay.ORDER_SLOT_MASK + 1}")
        if not 0 < self.withdrawals_max <= lay.ORDER_SLOT_MASK + 1:
            raise ValueError(f"withdrawals_max: expected 1..{lay.ORDER_SLOT_MASK + 1}")
        if self.deposit_refs_max <= 0:
            raise ValueError("deposit_refs_max: expected at least 1")
        if not 0 < self.instruments_max <= 1 << 20:
            raise ValueError("instruments_max: expected 1..2**20 (position keys use 20 bits)")
        if not 16 <= self.accounts_max <= 1 << 30:
            raise ValueError("accounts_max: expected 16..2**30 (capacity keys use 30 bits)")
        if self.capacity_rows_per_account_max <= 0:
            raise ValueError("capacity_rows_per_account_max: expected at least 1")
        if not 0 <= self.breaker_move_bps_max <= 10**6:
            raise ValueError("breaker_move_bps_max: expected 0 (off) .. 1,000,000")
        if self.breaker_window_ns <= 0 or self.breaker_halt_ns <= 0:
            raise ValueError("breaker_window_ns, breaker_halt_ns: expected more than 0")


def owns(config: EngineConfig, gpu: str, region: str) -> bool:
    """Whether the shard owns a (GPU model, region) pair by its `pairs` (None: all pairs)."""
    return config.pairs is None or (gpu, region) in config.pairs


def _start_id_counters(meta: np.ndarray, shard: int) -> None:
    """Start every id counter at the shard's id base (schemas/ids.py), so ids carry their shard.

    Plain counters (trades, instruments, transfers) start at the base; order, obligation and
    withdrawal ids are `counter << ORDER_SLOT_BITS | slot`, so their counters start at the base
    shifted down. Shard 0 starts at 0, as before shards.
    """
    base = id_base(shard)
    for col in (lay.M_TRADE_SEQ, lay.M_INSTR_SEQ, lay.M_TRANSFER_SEQ):
        meta[col] = base
    for col in (lay.M_ORDER_SEQ, lay.M_OBL_SEQ, lay.M_WD_SEQ):
        meta[col] = base >> lay.ORDER_SLOT_BITS


def _table_size(rows: int) -> int:
    """Slots of a hash table with room for `rows` keys at load factor <= 1/2 (a power of 2)."""
    size = 1
    while size < 2 * rows:
        size *= 2
    return size


def _table(rows: int) -> np.ndarray:
    """A hash table of (key, row) with room for `rows` keys at load factor <= 1/2."""
    return np.full((_table_size(rows), 2), -1, dtype=np.int64)


def new_state(config: EngineConfig, catalog: Catalog) -> State:
    """Allocate an empty engine state (pages are touched only as pools fill)."""
    config.check()
    z = np.zeros
    meta = z((1, lay.M_WIDTH), dtype=np.int64)
    frees = (lay.M_ORDER_FREE, lay.M_LEVEL_FREE, lay.M_POS_FREE, lay.M_CAP_FREE, lay.M_OBL_FREE)
    for col in (*frees, lay.M_WD_FREE):
        meta[0, col] = -1
    _start_id_counters(meta[0], config.shard)
    cfg = z((1, lay.CFG_WIDTH), dtype=np.int64)
    c = cfg[0]
    c[lay.CFG_SHARD] = config.shard
    c[lay.CFG_ORDERS_OPEN_MAX] = config.orders_open_max
    c[lay.CFG_MAKER_BPS] = catalog.maker_fee_bps
    c[lay.CFG_TAKER_BPS] = catalog.taker_fee_bps
    c[lay.CFG_PROTECTION_BPS] = catalog.market_protection_bps
    c[lay.CFG_PENALTY_MICROS] = catalog.penalty_per_gpu_hour_micros
    c[lay.CFG_DEADLINE_NS] = catalog.provisioning_deadline_ns
    c[lay.CFG_DEPOSIT_MAX] = config.deposit_max_micros
    c[lay.CFG_BALANCE_MAX] = config.balance_max_micros
    c[lay.CFG_CAPACITY_GPUS_MAX] = config.capacity_gpus_max
    c[lay.CFG_CAPACITY_HOURS_MAX] = config.capacity_hours_max
    c[lay.CFG_TICK_MICROS] = catalog.tick_micros
    c[lay.CFG_REGIONS] = len(catalog.regions)
    c[lay.CFG_LOTS_MAX] = catalog.lots_max
    c[lay.CFG_WITHDRAWAL_MAX] = config.withdrawal_max_micros
    c[lay.CFG_WITHDRAWAL_DAY_MAX] = config.withdrawal_day_max_micros
    c[lay.CFG_CAPACITY_HORIZON_HOURS] = capacity_horizon_hours(catalog)
    c[lay.CFG_CAPACITY_ROWS_ACCOUNT_MAX] = config.capacity_rows_per_account_max
    c[lay.CFG_BREAKER_MOVE_BPS_MAX] = config.breaker_move_bps_max
    c[lay.CFG_BREAKER_WINDOW_NS] = config.breaker_window_ns
    c[lay.CFG_BREAKER_HALT_NS] = config.breaker_halt_ns
    accounts = z((config.accounts_max, lay.A_WIDTH), dtype=np.int64)
    accounts[:, lay.A_HEAD] = -1
    accounts[:, lay.A_TAIL] = -1
    instruments = z((config.instruments_max, lay.I_WIDTH), dtype=np.int64)
    st: list[np.ndarray] = [np.empty(0)] * lay.ST_COUNT
    st[lay.ST_META] = meta
    st[lay.ST_CFG] = cfg
    st[lay.ST_ACCTS] = accounts
    st[lay.ST_INSTRS] = instruments
    st[lay.ST_ORDERS] = z((config.orders_max, lay.O_WIDTH), dtype=np.int64)
    st[lay.ST_LEVELS] = z((config.levels_max, lay.L_WIDTH), dtype=np.int64)
    st[lay.ST_LEVEL_HT] = _table(config.levels_max)
    st[lay.ST_POS] = z((config.positions_max, lay.P_WIDTH), dtype=np.int64)
    st[lay.ST_POS_HT] = _table(config.positions_max)
    st[lay.ST_CAP] = z((config.capacity_rows_max, lay.C_WIDTH), dtype=np.int64)
    st[lay.ST_CAP_HT] = _table(config.capacity_rows_max)
    st[lay.ST_OBL] = z((config.obligations_max, lay.B_WIDTH), dtype=np.int64)
    st[lay.ST_GTD] = z((config.orders_max, 2), dtype=np.int64)
    st[lay.ST_WDS] = z((config.withdrawals_max, lay.W_WIDTH), dtype=np.int64)
    st[lay.ST_REFS] = z((_table_size(config.deposit_refs_max), lay.REF_WIDTH), dtype=np.int64)
    st[lay.ST_SCRATCH] = z((config.positions_max, 2), dtype=np.int64)
    return State(*st)


# Rows [0, hwm) of each pool are all a snapshot stores; rows above were never touched.
_HWM = {
    lay.ST_ORDERS: lay.M_ORDER_HWM,
    lay.ST_LEVELS: lay.M_LEVEL_HWM,
    lay.ST_POS: lay.M_POS_HWM,
    lay.ST_CAP: lay.M_CAP_HWM,
    lay.ST_OBL: lay.M_OBL_HWM,
    lay.ST_GTD: lay.M_GTD_SIZE,
    lay.ST_WDS: lay.M_WD_HWM,
}


def _used_rows(st: State, index: int) -> np.ndarray:
    if index in _HWM:
        return st[index][: int(st[lay.ST_META][0, _HWM[index]])]
    if index == lay.ST_ACCTS:
        # Accounts are addressed by id; trailing untouched rows are left out.
        touched = np.flatnonzero(np.any(st[index] != _BLANK_ACCOUNT, axis=1))
        return st[index][: int(touched[-1]) + 1 if touched.size else 0]
    return st[index]


_BLANK_ACCOUNT = np.zeros(lay.A_WIDTH, dtype=np.int64)
_BLANK_ACCOUNT[[lay.A_HEAD, lay.A_TAIL]] = -1


def _canonical(st: State) -> list[bytes]:
    return [
        b"" if i in lay.NOT_STORED else np.ascontiguousarray(_used_rows(st, i)).tobytes()
        for i in range(lay.ST_COUNT)
    ]


def state_hash(st: State) -> str:
    """Hash of everything the engine's future output depends on (hex BLAKE2b-256).

    Hash tables are left out: they are an index over the rows, rebuilt on restore.
    """
    digest = hashlib.blake2b(digest_size=32)
    for part in _canonical(st):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


class SnapshotVersionError(ValueError):
    """A snapshot of another engine version: it is never restored (its arrays mean other things),
    only replaced by replaying the commands log."""

    def __init__(self, found: int) -> None:
        super().__init__(f"snapshot version: expected {SNAPSHOT_VERSION}, found {found}")
        self.found = found


class _Version(msgspec.Struct, frozen=True):
    """A snapshot's first field: read alone, so an old layout is told apart before decoding it."""

    version: int


class _Snapshot(msgspec.Struct, frozen=True):
    version: int
    config: dict[str, object]  # EngineConfig's fields (see _config_fields)
    catalog_hash: str
    arrays: list[bytes]


# 2: pending withdrawals and deposit references; 3: capacity rows per account (accounts are 11
# columns), the capacity horizon and per-account limit (cfg is 18), capacity keys with the whole
# hour (a snapshot of version 2 holds keys of 20 hour bits, which this version would misread).
# 4: market controls: halt, breaker reference (instruments are 28 columns), suspension
# (accounts are 12), the breaker's limits (cfg is 21).
SNAPSHOT_VERSION = 4


def catalog_hash(catalog: Catalog) -> str:
    """Hash of the catalog a snapshot was taken under (restoring under another is refused)."""
    return hashlib.blake2b(msgspec.msgpack.encode(catalog), digest_size=16).hexdigest()


# Config fields a snapshot leaves out at their defaults: added after version 4, so that the
# snapshot of an engine that does not use them keeps its bytes.
_OMITTED_AT_DEFAULT = {"pairs": None, "shard_map_digest": ""}


def _config_fields(config: EngineConfig) -> dict[str, object]:
    """EngineConfig as the snapshot stores it: its fields in order, newer ones only when set."""
    fields = msgspec.structs.asdict(config)
    for name, default in _OMITTED_AT_DEFAULT.items():
        if fields[name] == default:
            del fields[name]
    return fields


def snapshot_bytes(st: State, config: EngineConfig, catalog: Catalog) -> bytes:
    """Serialise the whole state: the used rows of every pool, compressed."""
    snap = _Snapshot(
        SNAPSHOT_VERSION, _config_fields(config), catalog_hash(catalog), _canonical(st)
    )
    return zlib.compress(msgspec.msgpack.encode(snap), 1)


def restore_state(data: bytes, catalog: Catalog) -> tuple[State, EngineConfig]:
    """Rebuild a state from `snapshot_bytes` output, including its hash-table indexes."""
    raw = zlib.decompress(data)
    version = msgspec.msgpack.decode(raw, type=_Version).version
    if version != SNAPSHOT_VERSION:
        raise SnapshotVersionError(version)
    snap = msgspec.msgpack.decode(raw, type=_Snapshot)
    if snap.catalog_hash != catalog_hash(catalog):
        raise ValueError("snapshot was taken under another catalog; restore with that catalog")
    config = msgspec.convert(snap.config, EngineConfig)
    st = new_state(config, catalog)
    for i, raw in enumerate(snap.arrays):
        if i in lay.NOT_STORED:
            continue
        rows = np.frombuffer(raw, dtype=np.int64).reshape(-1, st[i].shape[1])
        st[i][: rows.shape[0]] = rows
    _rebuild_indexes(st)
    return st, config


def _rebuild_indexes(st: State) -> None:
    from matching.kernels import _rebuild

    _rebuild(st)
