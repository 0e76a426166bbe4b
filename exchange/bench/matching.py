"""`gx bench matching`: replay an order workload through the engine and print throughput and memory.

Replay mode streams a workload of little-endian int64 records `(op, order_id, side, price_ticks,
lots)` (op 0 = new GTC limit order, 1 = cancel; side 0 = buy, 1 = sell) into one instrument. The
orders are spread over funded accounts with self-trade prevention `none` and limits wide enough that
nothing is refused, so the fills equal a plain price-time book's while every risk check still runs.
It measures the whole stream in one kernel call and again through `Engine.apply_rows` in batches,
and optionally replays the same commands through a peer engine and compares the fills.

Resting mode (`--instruments N --resting M`) lists N instruments, rests M non-crossing orders over
them and reports the memory the books take.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections import deque
from collections.abc import Callable
from decimal import Decimal
from importlib import resources
from pathlib import Path

import numpy as np

from exchange.bench.report import Report, add_benchmark, print_report
from matching import layout as lay
from matching.calendar import due_listings
from matching.engine import Engine, EngineConfig, order_flags
from matching.kernels import _apply
from schemas import commands as cmd
from schemas.catalog import Catalog, parse_catalog
from schemas.codes import OrderType, Reject, SelfTradePrevention, TimeInForce
from schemas.units import MICROS_PER_USD, NS_PER_HOUR

__all__ = ["register", "run", "generate_workload", "read_workload", "write_workload"]

RECORD_FIELDS = 5  # op, order_id, side, price_ticks, lots
OP_NEW, OP_CANCEL = 0, 1
COMMANDS_DEFAULT = 1_000_000
SEED_DEFAULT = 20_240_601
BATCH_ROWS = 1024
LEARN_BATCH_ROWS_MAX = 1 << 16
FILL_BATCH_ROWS = 1 << 16
ACCOUNT_FIRST = 10
ACCOUNTS = 1000
DEPOSIT_MICROS = 10**15
CAPACITY_GPUS_MIN = 1_000_000
# 2026-12-01T00:00Z minus 3 hours: hourly instruments from 03:00 on are listed at the first tick.
T0_NS = 1_796_083_200_000_000_000 - 3 * NS_PER_HOUR
PEERS = ("lightmatchingengine",)
# Generated workload: a mid that walks, resting orders a few ticks off it, takers at the touch.
MID_TICKS = 2400
MID_RANGE_TICKS = 400
CANCEL_SHARE = 0.33
CROSS_SHARE = 0.30
DEPTH_TICKS = 20
# Resting mode: GPU models x regions of the synthetic catalog (the catalog allows 64 pairs).
RESTING_GPUS, RESTING_REGIONS = 8, 8
RESTING_SELLERS_PER_PAIR = 4
RESTING_DEPTH_TICKS = 20
GTC_FLAGS = order_flags(TimeInForce.GTC, OrderType.LIMIT, False, SelfTradePrevention.NONE)


# ============================================================================ command line


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `matching` to the `gx bench` group."""
    p = add_benchmark(
        bench_subparsers,
        "matching",
        "replay an order workload through the engine (and a peer engine)",
        __doc__,
    )
    p.add_argument("--workload", type=Path, help="replay this file of int64 records")
    p.add_argument("--commands", type=int, default=COMMANDS_DEFAULT, help="generated commands")
    p.add_argument("--seed", type=int, default=SEED_DEFAULT, help="seed of the generated workload")
    p.add_argument("--write-workload", type=Path, help="save the generated workload here")
    p.add_argument("--peer", choices=PEERS, help="replay the same commands through this engine")
    p.add_argument("--instruments", type=int, help="resting mode: books to fill")
    p.add_argument("--resting", type=int, help="resting mode: orders to rest over them")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark the arguments ask for and print its figures."""
    if (args.instruments is None) != (args.resting is None):
        raise SystemExit("gx bench matching: give --instruments and --resting together")
    if args.instruments is not None:
        report = bench_resting(args.instruments, args.resting)
    else:
        report = bench_replay(_workload(args), args.peer)
    print_report(report, args.json)
    return 0


def _workload(args: argparse.Namespace) -> np.ndarray:
    if args.workload is not None:
        return read_workload(args.workload)
    if args.commands <= 0:
        raise SystemExit(f"--commands: expected a positive count, found {args.commands}")
    _progress(f"generating {args.commands} commands (seed {args.seed})")
    records = generate_workload(args.commands, args.seed)
    if args.write_workload is not None:
        write_workload(args.write_workload, records)
    return records


def _progress(text: str) -> None:
    print(f"gx bench matching: {text}", file=sys.stderr, flush=True)


# ============================================================================ workload files


def generate_workload(commands: int, seed: int) -> np.ndarray:
    """Return `commands` records: ~33% cancels of live orders, ~30% of new orders crossing.

    A small reference book tracks what is live and where the touch is, so cancels always name a
    resting order and a crossing order always trades; resting prices follow a random-walk mid.
    """
    rng = np.random.default_rng(seed)
    kind, cross, picks = (rng.random(commands).tolist() for _ in range(3))
    sides = rng.integers(0, 2, commands).tolist()
    offsets = rng.integers(0, DEPTH_TICKS, commands).tolist()
    lots = rng.integers(1, 11, commands).tolist()
    steps = rng.integers(-1, 2, commands).tolist()
    book = _SimBook()
    out: list[tuple[int, int, int, int, int]] = []
    mid, lo, hi = MID_TICKS, MID_TICKS - MID_RANGE_TICKS, MID_TICKS + MID_RANGE_TICKS
    for i in range(commands):
        if kind[i] < CANCEL_SHARE and book.live:
            oid = book.live[int(picks[i] * len(book.live))]
            book.cancel(oid)
            out.append((OP_CANCEL, oid, 0, 0, 0))
            continue
        side = sides[i]
        touch = book.best(1 - side)
        # The mid walks, but inside the spread: resting orders stay near the touch.
        mid = min(max(mid + steps[i], book.best(lay.BUY) or lo), book.best(lay.SELL) or hi)
        mid = min(max(mid, lo), hi)
        if side == lay.BUY:
            price = mid - 1 - offsets[i] if touch is None else min(mid - 1 - offsets[i], touch - 1)
            if cross[i] < CROSS_SHARE and touch is not None:
                price = touch + offsets[i] % 3
        else:
            price = mid + 1 + offsets[i] if touch is None else max(mid + 1 + offsets[i], touch + 1)
            if cross[i] < CROSS_SHARE and touch is not None:
                price = touch - offsets[i] % 3
        oid = len(out) + 1
        book.add(oid, side, price, lots[i])
        out.append((OP_NEW, oid, side, price, lots[i]))
    return np.array(out, dtype=np.int64).reshape(-1, RECORD_FIELDS)


class _SimBook:
    """A plain price-time book that tracks only what the generator needs: live ids and touches."""

    def __init__(self) -> None:
        self.levels: tuple[dict[int, deque[int]], dict[int, deque[int]]] = ({}, {})
        self.lots: dict[int, int] = {}
        self.price: dict[int, tuple[int, int]] = {}  # id -> (side, price)
        self.live: list[int] = []
        self.index: dict[int, int] = {}  # id -> position in `live`

    def best(self, side: int) -> int | None:
        levels = self.levels[side]
        if not levels:
            return None
        return max(levels) if side == lay.BUY else min(levels)

    def add(self, oid: int, side: int, price: int, lots: int) -> None:
        other = self.levels[1 - side]
        while lots and other:
            touch = max(other) if side == lay.SELL else min(other)
            if (touch > price) if side == lay.BUY else (touch < price):
                break
            queue = other[touch]
            while lots and queue:
                maker = queue[0]
                q = min(lots, self.lots[maker])
                lots -= q
                self.lots[maker] -= q
                if self.lots[maker] == 0:
                    queue.popleft()
                    self._forget(maker)
            if not queue:
                del other[touch]
        if lots:
            self.levels[side].setdefault(price, deque()).append(oid)
            self.lots[oid] = lots
            self.price[oid] = (side, price)
            self.index[oid] = len(self.live)
            self.live.append(oid)

    def cancel(self, oid: int) -> None:
        side, price = self.price[oid]
        queue = self.levels[side][price]
        queue.remove(oid)
        if not queue:
            del self.levels[side][price]
        self._forget(oid)

    def _forget(self, oid: int) -> None:
        del self.lots[oid], self.price[oid]
        i = self.index.pop(oid)
        last = self.live.pop()
        if last != oid:
            self.live[i] = last
            self.index[last] = i


def write_workload(path: Path, records: np.ndarray) -> None:
    """Save records as little-endian int64, five fields each."""
    np.ascontiguousarray(records, dtype="<i8").tofile(path)


def read_workload(path: Path) -> np.ndarray:
    """Load and check a workload file; raise ValueError naming the first bad field."""
    raw = np.fromfile(path, dtype="<i8")
    if raw.size == 0 or raw.size % RECORD_FIELDS:
        raise ValueError(
            f"{path}: expected a non-empty whole number of {RECORD_FIELDS}-int64 records, "
            f"found {raw.size} int64 values"
        )
    records = raw.reshape(-1, RECORD_FIELDS).astype(np.int64)
    op, _, side, price, lots = records.T
    new = op == OP_NEW
    checks = (
        ("op", np.isin(op, (OP_NEW, OP_CANCEL)), "0 (new) or 1 (cancel)"),
        ("side", ~new | np.isin(side, (0, 1)), "0 (buy) or 1 (sell)"),
        ("price_ticks", ~new | (price > 0), "a positive price"),
        ("lots", ~new | (lots > 0), "a positive quantity"),
    )
    for field, ok, expected in checks:
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise ValueError(f"{path}: record {i} {field}: expected {expected}, found {records[i]}")
    ids = records[new, 1]
    if np.unique(ids).size != ids.size:
        raise ValueError(f"{path}: order_id: expected each new order's id once, found repeats")
    return records


# ============================================================================ replay plan


class Plan:
    """A workload resolved for replay: engine rows, peer arguments and who owns each order."""

    def __init__(self, records: np.ndarray, accounts: int) -> None:
        op = records[:, 0]
        self.records = records
        self.new_pos = np.flatnonzero(op == OP_NEW)  # record position of each new order
        self.ordinal = np.full(len(records), -1, dtype=np.int64)  # new-order number per record
        self.ordinal[self.new_pos] = np.arange(self.new_pos.size)
        self.account = ACCOUNT_FIRST + np.arange(self.new_pos.size) % accounts
        self.target = _cancel_targets(records, self.new_pos)  # ordinal cancelled, or -1
        self.engine_id = np.zeros(self.new_pos.size, dtype=np.int64)  # learnt in a first pass

    def rows(self, instr: int) -> np.ndarray:
        """Command rows; cancel rows carry the engine ids learnt so far (0: not yet known)."""
        r = self.records
        rows = np.zeros((len(r), lay.CMD_WIDTH), dtype=np.int64)
        new = self.new_pos
        rows[new, lay.C0_OP] = lay.OP_PLACE
        rows[new, lay.C_PLACE_ACCOUNT] = self.account
        rows[new, lay.C_PLACE_INSTR] = instr
        rows[new, lay.C_PLACE_SIDE] = np.where(r[new, 2] == 0, lay.BUY, lay.SELL)
        rows[new, lay.C_PLACE_PRICE] = r[new, 3]
        rows[new, lay.C_PLACE_LOTS] = r[new, 4]
        rows[new, lay.C_PLACE_FLAGS] = GTC_FLAGS
        cancel = np.flatnonzero(r[:, 0] == OP_CANCEL)
        known = self.target[cancel] >= 0
        rows[cancel, lay.C0_OP] = lay.OP_CANCEL
        rows[cancel, lay.C_CANCEL_ACCOUNT] = ACCOUNT_FIRST
        rows[cancel[known], lay.C_CANCEL_ACCOUNT] = self.account[self.target[cancel[known]]]
        rows[cancel[known], lay.C_CANCEL_ORDER] = self.engine_id[self.target[cancel[known]]]
        return rows


def _cancel_targets(records: np.ndarray, new_pos: np.ndarray) -> np.ndarray:
    """For each cancel, the ordinal of the earlier new order it names (-1: none)."""
    target = np.full(len(records), -1, dtype=np.int64)
    cancel = np.flatnonzero(records[:, 0] == OP_CANCEL)
    ids = records[new_pos, 1]
    order = np.argsort(ids, kind="stable")
    where = np.searchsorted(ids[order], records[cancel, 1])
    where = np.minimum(where, max(ids.size - 1, 0))
    if ids.size:
        found = ids[order][where] == records[cancel, 1]
        ordinal = order[where]
        found &= new_pos[ordinal] < cancel  # a cancel before its order names nothing
        target[cancel[found]] = ordinal[found]
    return target


def _learn_batches(plan: Plan) -> list[tuple[int, int]]:
    """Split the records so every cancel comes in a later batch than the order it names."""
    placed_at = plan.new_pos.tolist()
    target = plan.target.tolist()
    bounds, start = [], 0
    for i, t in enumerate(target):
        if i - start >= LEARN_BATCH_ROWS_MAX or (t >= 0 and placed_at[t] >= start):
            bounds.append((start, i))
            start = i
    bounds.append((start, len(target)))
    return bounds


# ============================================================================ engine setup


def _replay_catalog(records: np.ndarray) -> Catalog:
    """The packaged catalog with a price band and lots limit that admit the workload."""
    raw = json.loads(resources.files("schemas").joinpath("catalog.json").read_text())
    base = parse_catalog(raw)
    new = records[:, 0] == OP_NEW
    prices, lots = records[new, 3], records[new, 4]
    if prices.size == 0:
        return base
    tick_usd = Decimal(base.tick_micros) / MICROS_PER_USD
    lo = min(int(prices.min()), base.price_band_min_ticks)
    hi = max(int(prices.max()), base.price_band_max_ticks)
    raw["price_band_min_usd"] = str(lo * tick_usd)
    raw["price_band_max_usd"] = str(hi * tick_usd)
    raw["lots_max"] = max(int(lots.max()), base.lots_max)
    return parse_catalog(raw)


def _replay_config(plan: Plan, catalog: Catalog, accounts: int) -> EngineConfig:
    r = plan.records[plan.new_pos]
    levels = np.unique(r[:, 2] * (1 << 40) + r[:, 3]).size if r.size else 1
    sell_lots = int(r[r[:, 2] == 1, 4].sum()) if r.size else 0
    return EngineConfig(
        accounts_max=ACCOUNT_FIRST + accounts,
        instruments_max=1 << 11,
        orders_max=max(plan.new_pos.size, 1),
        levels_max=levels + 1,
        positions_max=accounts + catalog.lots_max + 1,
        capacity_rows_max=max(accounts, 16),
        # every open position may become an obligation at gate closure: room for all of them
        obligations_max=2 * (accounts + catalog.lots_max + 1),
        orders_open_max=max(plan.new_pos.size, 1),
        capacity_gpus_max=max(CAPACITY_GPUS_MIN, sell_lots),
    )


def _replay_engine(catalog: Catalog, config: EngineConfig, accounts: int) -> tuple[Engine, int]:
    """A listed, funded engine; return it and the slot of the instrument the replay trades."""
    engine = Engine(catalog, config)
    engine.apply([cmd.ClockTick(ts_ns=T0_NS)])
    symbol = engine.open_symbols()[0]
    instr = engine.symbol_slot(symbol)
    row = engine.state[lay.ST_INSTRS][instr]
    gpu = catalog.gpus[int(row[lay.I_GPU])].model
    region = catalog.regions[int(row[lay.I_REGION])]
    start = int(row[lay.I_START])
    end = start + int(row[lay.I_HOURS]) * NS_PER_HOUR
    setup: list[cmd.Command] = []
    for account in range(ACCOUNT_FIRST, ACCOUNT_FIRST + accounts):
        setup.append(cmd.Deposit(account=account, amount_micros=DEPOSIT_MICROS))
        setup.append(
            cmd.CapacityUpdate(
                account=account, gpu=gpu, region=region, start_ns=start, end_ns=end,
                gpus=config.capacity_gpus_max,
            )
        )  # fmt: skip
    _expect_no_refusal(engine.apply(setup), "setup")
    return engine, instr


def _expect_no_refusal(events: list, stage: str) -> None:
    for e in events:
        if hasattr(e, "code"):
            raise RuntimeError(f"{stage}: the engine refused a command: {e}")


# ============================================================================ replay passes


def _learn_ids(engine: Engine, plan: Plan, instr: int) -> dict[str, int]:
    """Replay in batches, reading each order's engine id from its OrderAccepted row."""
    rows = plan.rows(instr)
    cancel = rows[:, lay.C0_OP] == lay.OP_CANCEL
    counts = {"events": 0, "cancelled": 0, "taker_orders": 0}
    for start, stop in _learn_batches(plan):
        batch = rows[start:stop]
        t = plan.target[start:stop]
        fix = cancel[start:stop] & (t >= 0)
        batch[fix, lay.C_CANCEL_ORDER] = plan.engine_id[t[fix]]
        ev = engine.apply_rows(batch)
        typ = ev[:, lay.E_TYPE]
        acc = ev[typ == lay.EV_ACCEPTED]
        plan.engine_id[plan.ordinal[acc[:, lay.E_CMD] + start]] = acc[:, lay.E_ACCEPTED.order_id]
        _check_refusals(ev[typ == lay.EV_REJECTED])
        counts["events"] += len(ev)
        counts["cancelled"] += int((typ == lay.EV_CANCELLED).sum())
        counts["taker_orders"] += np.unique(ev[typ == lay.EV_TRADE, lay.E_CMD]).size
    return counts


def _check_refusals(rejected: np.ndarray) -> None:
    """Only cancels of orders already gone may be refused; anything else is a setup bug."""
    codes = rejected[:, lay.E_REJECTED.code]
    bad = codes != Reject.UNKNOWN_ORDER
    if bad.any():
        code = int(codes[bad][0])
        raise RuntimeError(
            f"replay: the engine refused {int(bad.sum())} commands ({Reject(code).name}); "
            "the benchmark's limits are too tight for this workload"
        )


def _traded(engine: Engine, instr: int, trades_before: int) -> tuple[int, int]:
    """Fills and traded lots so far, read from the engine's counters."""
    meta = engine.state[lay.ST_META][0]
    lots = int(engine.state[lay.ST_INSTRS][instr, lay.I_VOLUME])
    return int(meta[lay.M_TRADE_SEQ]) - trades_before, lots


# Pools whose rows above the high-water mark are untouched zeros (see matching.state).
_POOLS = (
    (lay.ST_ORDERS, lay.M_ORDER_HWM),
    (lay.ST_LEVELS, lay.M_LEVEL_HWM),
    (lay.ST_POS, lay.M_POS_HWM),
    (lay.ST_CAP, lay.M_CAP_HWM),
    (lay.ST_OBL, lay.M_OBL_HWM),
    (lay.ST_GTD, lay.M_GTD_SIZE),
)


def _prefault(engine: Engine) -> None:
    """Touch the never-used rows of every pool (writing the zeros they hold), as in an engine
    that has run for a while: first-touch page faults are not what the benchmark measures."""
    meta = engine.state[lay.ST_META][0]
    for pool, hwm in _POOLS:
        engine.state[pool][int(meta[hwm]) :] = 0


def _time_kernel(engine: Engine, rows: np.ndarray, events: int) -> tuple[float, int]:
    """Apply every row in one kernel call into a prefaulted event buffer; return (s, events)."""
    # Room for every event plus the largest single command's bound, so the call never stops early.
    ev = np.empty((events + 65_536, lay.EV_WIDTH), dtype=np.int64)
    ev.fill(0)  # touch every page now, so the call is not charged for first-touch faults
    t0 = time.perf_counter()
    n, done = _apply(rows, 0, engine.state, ev, 0)
    elapsed = time.perf_counter() - t0
    if done != len(rows):
        raise RuntimeError(f"event buffer too small: stopped at command {done} of {len(rows)}")
    return elapsed, int(n)


def _time_batches(engine: Engine, rows: np.ndarray) -> float:
    """Apply the rows through `Engine.apply_rows` in batches, as the gateway would."""
    apply_rows = engine.apply_rows
    t0 = time.perf_counter()
    for start in range(0, len(rows), BATCH_ROWS):
        apply_rows(rows[start : start + BATCH_ROWS])
    return time.perf_counter() - t0


def _warm_up() -> float:
    """Compile or load the kernel with a call on a throwaway state; return its seconds."""
    from matching.state import new_state
    from schemas.catalog import load_catalog

    st = new_state(EngineConfig(accounts_max=16, instruments_max=1, orders_max=1), load_catalog())
    rows = np.zeros((0, lay.CMD_WIDTH), dtype=np.int64)
    t0 = time.perf_counter()
    _apply(rows, 0, st, np.zeros((16, lay.EV_WIDTH), dtype=np.int64), 0)
    return time.perf_counter() - t0


def bench_replay(records: np.ndarray, peer: str | None) -> Report:
    """Replay the records through the engine (and the peer); return the report."""
    accounts = ACCOUNTS
    _progress("loading the kernel (a cold compile takes about 30 s)")
    compile_s = _warm_up()
    plan = Plan(records, accounts)
    catalog = _replay_catalog(records)
    config = _replay_config(plan, catalog, accounts)

    _progress("pass 1: learning order ids through apply_rows")
    engine, instr = _replay_engine(catalog, config, accounts)
    trades0 = int(engine.state[lay.ST_META][0, lay.M_TRADE_SEQ])
    counts = _learn_ids(engine, plan, instr)
    fills, lots = _traded(engine, instr, trades0)
    meta = engine.state[lay.ST_META][0]
    book_end = {
        "book_orders_end": int(meta[lay.M_ORDERS_LIVE]),
        "book_levels_end": int(meta[lay.M_LEVELS_LIVE]),
    }
    rows = plan.rows(instr)
    del engine

    _progress("timing one kernel call over the whole stream")
    engine, instr = _replay_engine(catalog, config, accounts)
    _prefault(engine)
    kernel_s, events = _time_kernel(engine, rows, counts["events"])
    _same("kernel", (fills, lots, counts["events"]), (*_traded(engine, instr, trades0), events))
    del engine

    _progress(f"timing apply_rows in batches of {BATCH_ROWS}")
    engine, instr = _replay_engine(catalog, config, accounts)
    _prefault(engine)
    batch_s = _time_batches(engine, rows)
    _same("batch", (fills, lots), _traded(engine, instr, trades0))
    del engine

    n = len(records)
    new_orders = int(plan.new_pos.size)
    report: Report = {
        "commands": n,
        "new_orders": new_orders,
        "cancels": n - new_orders,
        "cancels_live": counts["cancelled"],
        "new_orders_crossing_share": round(counts["taker_orders"] / max(new_orders, 1), 4),
        "fills": fills,
        "traded_lots": lots,
        "events": counts["events"],
        **book_end,
        "kernel_s": round(kernel_s, 4),
        "kernel_commands_per_s": round(n / kernel_s),
        "batch_size": BATCH_ROWS,
        "batch_s": round(batch_s, 4),
        "batch_commands_per_s": round(n / batch_s),
        "compile_s": round(compile_s, 2),
    }
    if peer is not None:
        report.update(_bench_peer(plan, report))
    report["rss_mib"] = round(_max_rss_mib(), 1)
    return report


def _same(stage: str, expected: tuple[int, ...], found: tuple[int, ...]) -> None:
    if expected != found:
        raise RuntimeError(
            f"{stage} replay: expected (fills, lots, ...) {expected} as in pass 1, found {found}"
        )


# ============================================================================ peer engine


def _bench_peer(plan: Plan, ours: Report) -> Report:
    _progress("replaying through lightmatchingengine")
    peer_s, fills, lots = _replay_lightmatchingengine(plan)
    peer_rate = len(plan.records) / peer_s
    return {
        "peer": "lightmatchingengine",
        "peer_s": round(peer_s, 4),
        "peer_commands_per_s": round(peer_rate),
        "ratio_vs_peer": round(ours["batch_commands_per_s"] / peer_rate, 2),
        "ratio_vs_peer_is": "batch_commands_per_s / peer_commands_per_s",
        "ratio_kernel_vs_peer": round(ours["kernel_commands_per_s"] / peer_rate, 2),
        "peer_fills": fills,
        "peer_traded_lots": lots,
        "fills_match": fills == ours["fills"] and lots == ours["traded_lots"],
    }


def _peer_commands(plan: Plan) -> list[tuple[int, int, int, int]]:
    """(op, peer order id or side, price, lots) per record; the peer numbers orders 1, 2, ..."""
    r = plan.records
    side = np.where(r[:, 2] == 0, 1, 2)  # lightmatchingengine.Side.BUY, Side.SELL
    arg = np.where(r[:, 0] == OP_NEW, side, plan.target + 1)  # 0: a cancel naming nothing
    return list(
        zip(r[:, 0].tolist(), arg.tolist(), r[:, 3].tolist(), r[:, 4].tolist(), strict=True)
    )


def _replay_lightmatchingengine(plan: Plan) -> tuple[float, int, int]:
    """Time the peer over the same commands; return (seconds, fills, traded lots)."""
    from lightmatchingengine.lightmatchingengine import LightMatchingEngine

    commands = _peer_commands(plan)
    engine = LightMatchingEngine()
    add: Callable = engine.add_order
    cancel: Callable = engine.cancel_order
    symbol = "X"
    traded: list[tuple[int, list]] = []
    t0 = time.perf_counter()
    for op, arg, price, lots in commands:
        if op == OP_NEW:
            order, trades = add(symbol, price, lots, arg)
            if trades:
                traded.append((order.order_id, trades))
        elif arg > 0:
            try:
                cancel(arg, symbol)
            except AssertionError:
                pass  # the peer keeps filled orders in its id map; cancelling one trips an assert
    peer_s = time.perf_counter() - t0
    # The peer reports each taker's fill per level once and each maker's fill once: count makers.
    fills = sum(1 for oid, trades in traded for t in trades if t.order_id != oid)
    lots = sum(t.trade_qty for oid, trades in traded for t in trades if t.order_id != oid)
    return peer_s, fills, lots


# ============================================================================ resting books


def _resting_catalog(instruments: int) -> Catalog:
    """A catalog listing at least `instruments` at one tick: 64 GPU x region pairs, long 1h."""
    raw = json.loads(resources.files("schemas").joinpath("catalog.json").read_text())
    model = raw["gpus"][0]
    raw["gpus"] = [dict(model, model=f"GPU{g}") for g in range(RESTING_GPUS)]
    raw["regions"] = [f"region-{r}" for r in range(RESTING_REGIONS)]
    pairs = RESTING_GPUS * RESTING_REGIONS
    for product in raw["products"]:
        if product["code"] == "1h":
            product["listing_horizon_hours"] = max(72, -(-instruments // pairs) + 2)
    return parse_catalog(raw)


def _resting_config(instruments: int, resting: int, hours: int) -> EngineConfig:
    sellers = RESTING_GPUS * RESTING_REGIONS * RESTING_SELLERS_PER_PAIR
    return EngineConfig(
        accounts_max=ACCOUNT_FIRST + sellers,
        instruments_max=instruments,
        orders_max=max(resting, 1),
        levels_max=max(min(resting, instruments * 2 * RESTING_DEPTH_TICKS), 1),
        positions_max=1 << 11,
        capacity_rows_max=sellers * hours,
        obligations_max=1 << 12,
        orders_open_max=max(resting, 1),
        capacity_hours_max=hours,
    )


def _hours_span(catalog: Catalog, instruments: int) -> tuple[int, int]:
    """First and end hour of the instruments an engine lists at T0 (the first `instruments`)."""
    keys = due_listings(catalog, T0_NS, set())[:instruments]
    if len(keys) < instruments:
        raise RuntimeError(f"resting: the catalog lists {len(keys)} instruments, not {instruments}")
    first = min(k.start_ns for k in keys) // NS_PER_HOUR
    end = max(k.start_ns + catalog.product(k.product).hours * NS_PER_HOUR for k in keys)
    return first, end // NS_PER_HOUR


def _resting_rows(engine: Engine, resting: int, seed: int) -> np.ndarray:
    """Non-crossing orders spread evenly over the open books: bids below, asks above a mid."""
    ins = engine.state[lay.ST_INSTRS]
    slots = np.flatnonzero(ins[:, lay.I_STATE] == lay.INSTR_OPEN)
    rng = np.random.default_rng(seed)
    instr = slots[np.arange(resting) % slots.size]
    side = rng.integers(0, 2, resting)
    depth = rng.integers(1, RESTING_DEPTH_TICKS + 1, resting)
    pair = ins[instr, lay.I_CAPKEY]
    seller = pair * RESTING_SELLERS_PER_PAIR + rng.integers(0, RESTING_SELLERS_PER_PAIR, resting)
    rows = np.zeros((resting, lay.CMD_WIDTH), dtype=np.int64)
    rows[:, lay.C0_OP] = lay.OP_PLACE
    rows[:, lay.C_PLACE_ACCOUNT] = ACCOUNT_FIRST + seller  # buyers too: any funded account will do
    rows[:, lay.C_PLACE_INSTR] = instr
    rows[:, lay.C_PLACE_SIDE] = np.where(side == 0, lay.BUY, lay.SELL)
    rows[:, lay.C_PLACE_PRICE] = MID_TICKS + np.where(side == 0, -depth, depth)
    rows[:, lay.C_PLACE_LOTS] = rng.integers(1, 11, resting)
    rows[:, lay.C_PLACE_FLAGS] = GTC_FLAGS
    return rows


def _fund_sellers(engine: Engine, catalog: Catalog, hours: tuple[int, int]) -> None:
    """Cash for every account and capacity over every listed hour of its own GPU x region."""
    setup: list[cmd.Command] = []
    for pair in range(RESTING_GPUS * RESTING_REGIONS):
        gpu, region = divmod(pair, len(catalog.regions))
        for k in range(RESTING_SELLERS_PER_PAIR):
            account = ACCOUNT_FIRST + pair * RESTING_SELLERS_PER_PAIR + k
            setup.append(cmd.Deposit(account=account, amount_micros=DEPOSIT_MICROS))
            setup.append(
                cmd.CapacityUpdate(
                    account=account, gpu=catalog.gpus[gpu].model, region=catalog.regions[region],
                    start_ns=hours[0] * NS_PER_HOUR, end_ns=hours[1] * NS_PER_HOUR,
                    gpus=CAPACITY_GPUS_MIN,
                )
            )  # fmt: skip
    _expect_no_refusal(engine.apply(setup), "resting setup")


def bench_resting(instruments: int, resting: int, seed: int = SEED_DEFAULT) -> Report:
    """List `instruments` books, rest `resting` orders over them; report memory."""
    if instruments <= 0 or resting <= 0:
        raise SystemExit("--instruments and --resting: expected positive counts")
    _progress("loading the kernel (a cold compile takes about 30 s)")
    compile_s = _warm_up()
    catalog = _resting_catalog(instruments)
    hours = _hours_span(catalog, instruments)
    config = _resting_config(instruments, resting, hours[1] - hours[0])
    engine = Engine(catalog, config)
    engine.apply([cmd.ClockTick(ts_ns=T0_NS)])
    _fund_sellers(engine, catalog, hours)
    rows = _resting_rows(engine, resting, seed)
    _progress(f"resting {resting} orders over {instruments} instruments")
    before = _rss_mib()
    t0 = time.perf_counter()
    for start in range(0, resting, FILL_BATCH_ROWS):
        ev = engine.apply_rows(rows[start : start + FILL_BATCH_ROWS])
        rejected = ev[ev[:, lay.E_TYPE] == lay.EV_REJECTED]
        if len(rejected):
            raise RuntimeError(f"resting: {len(rejected)} orders refused, first {rejected[0]}")
    fill_s = time.perf_counter() - t0
    after = _rss_mib()
    meta = engine.state[lay.ST_META][0]
    return {
        "instruments": int((engine.state[lay.ST_INSTRS][:, lay.I_STATE] == lay.INSTR_OPEN).sum()),
        "resting": int(meta[lay.M_ORDERS_LIVE]),
        "levels": int(meta[lay.M_LEVELS_LIVE]),
        "fill_s": round(fill_s, 3),
        "fill_orders_per_s": round(resting / fill_s),
        "rss_mib": round(_max_rss_mib(), 1),
        "rss_growth_mib": round(after - before, 1),
        "compile_s": round(compile_s, 2),
    }


# ============================================================================ memory


def _max_rss_mib() -> float:
    """Peak resident set of this process (getrusage)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _rss_mib() -> float:
    """Current resident set (Linux /proc), else the peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return _max_rss_mib()
    return pages * resource.getpagesize() / 2**20
