"""The deterministic simulator: engine, settlement and market data on one thread, one seed each.

A seed fixes everything: the workload (`workload.Simulation`), the batch sizes, when snapshots
are taken and which faults strike (`faults`). Each step applies a batch of commands to the
engine, produces its events into an in-memory events log (records as the engine runner packs
them), possibly crashes the engine and recovers it from its latest snapshot exactly as the
runner does (replay, suppression of what the log has, byte comparison of the last event), and
delivers some records to the sinks (`sinks`) through faulty deliveries. Invariants are checked
after every step (cheap ones) and at every restart and at the end (the whole state):

- `postings_zero`: the ledger's postings sum to zero;
- `ledger_at_command_end`: the ledger has settled whole commands only;
- `ledger_not_ahead`: no sink has settled an event the log does not hold;
- `restore_hash`: a snapshot restores to the state hash it was taken with;
- `replay_hash`: restore plus replay reaches the crashed engine's state hash;
- `engine_state`: `matching.invariants.violations` is empty;
- at the end, once every record is delivered: `no_lost_event` (every sink at the log's last
  sequence), `ledger_equals_engine` (balances and positions), `audit_clean` (the audit's replay
  finds no violation: contiguous sequences, balanced commands, ...), `ledger_equals_replay`,
  `marketdata_equals_engine` (every open book, level by level).

A failure raises `SimulationFailure` naming the seed, the step and the invariant;
`gx sim --seed N` replays that seed alone.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from matching import layout as lay
from matching.engine import Engine, EngineConfig
from matching.invariants import violations
from matching.state import State
from schemas import commands as c
from schemas import events as e
from schemas.catalog import Catalog
from streams.audit import Auditor
from streams.engine_runner import RecoveryError, unsuppressed
from streams.event_records import (
    EVENTS_RECORD_BYTES_MAX,
    CommandGrouper,
    EventRecord,
    pack_records,
    split_event_record,
)
from streams.simulation.faults import FaultPlan, FaultRates
from streams.simulation.sinks import LedgerSink, MarketDataSink, SinkError
from streams.simulation.workload import MINUTE_NS, Simulation

__all__ = ["SIM_ENGINE_CONFIG", "SeedResult", "SimulationFailure", "Simulator", "START_NS"]

# 2026-12-01T00:00Z minus 3 hours, the tests' start: the calendar lists hourly products from 03:00.
START_NS = 1_796_083_200_000_000_000 - 3 * 3_600_000_000_000
# The workload's clock starts 3 minutes before the first hourly instrument's gate closure (15
# minutes before its 22:00 start), so that most seeds see gate closure, delivery assignment and
# the start of delivery, not only trading.
WORKLOAD_START_NS = START_NS + 42 * MINUTE_NS
# One GPU model and region (about 100 instruments listed), pools small enough to copy in microseconds.
SIM_ENGINE_CONFIG = EngineConfig(
    gpus=("H100-SXM",),
    regions=("us-east",),
    accounts_max=32,
    instruments_max=256,
    orders_max=512,
    levels_max=256,
    positions_max=256,
    capacity_rows_max=2048,
    obligations_max=256,
    withdrawals_max=64,
    deposit_refs_max=256,
    orders_open_max=8,
)
steps_default = 14
batch_commands_max = 6
small_record_bytes = 160  # a few events per record: commands split over records
snapshot_odds = 0.15  # per step
deliveries_per_step_max = 4  # records each sink reads in one step
# Listing horizons of the simulated catalog: a handful of instruments (listing a hundred at the
# first tick, and feeding them to every sink, would cost more than the seed's commands).
listing_horizon_hours_max = {"1h": 6, "1d": 24, "1w": 24 * 7}


def sim_catalog(catalog: Catalog) -> Catalog:
    """`catalog` with short listing horizons (`listing_horizon_hours_max`)."""
    products = tuple(
        msgspec.structs.replace(
            p,
            listing_horizon_hours=min(
                p.listing_horizon_hours, listing_horizon_hours_max.get(p.code, p.hours)
            ),
        )
        for p in catalog.products
    )
    return msgspec.structs.replace(catalog, products=products)


class SimulationFailure(AssertionError):
    """An invariant broke: which seed, at which step, which invariant, and what was found."""

    def __init__(self, seed: int, step: int, invariant: str, detail: str) -> None:
        super().__init__(f"seed {seed} step {step}: {invariant}: {detail}")
        self.seed, self.step, self.invariant, self.detail = seed, step, invariant, detail


class SeedResult(msgspec.Struct):
    """What one seed ran and injected."""

    seed: int
    steps: int = 0
    commands: int = 0
    events: int = 0
    records: int = 0
    faults: dict[str, int] = msgspec.field(default_factory=dict)


class _Snapshot(msgspec.Struct, frozen=True):
    data: bytes
    next_offset: int  # the first command not in the state
    state_hash: str
    event_seq: int


class Simulator:
    """Runs seeds over one catalog and engine configuration; reusable across seeds."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        config: EngineConfig = SIM_ENGINE_CONFIG,
        rates: FaultRates | None = None,
        steps: int = steps_default,
        ledger_sink: Callable[[], LedgerSink] = LedgerSink,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """`ledger_sink` builds each seed's ledger (tests plant a faulty one); `log` gets one
        line per step (`--verbose`)."""
        catalog = self.catalog = sim_catalog(catalog)
        self.rates = rates or FaultRates()
        self.steps = steps
        self.ledger_sink = ledger_sink
        self.log = log
        engine = Engine(catalog, config)
        first = c.ClockTick(ts_ns=START_NS)
        self._listed = engine.apply([first], [0])
        self._first = first
        self._symbols = [x.symbol for x in self._listed if isinstance(x, e.InstrumentListed)]
        self._base = _Snapshot(engine.snapshot(), 1, engine.state_hash(), engine.event_seq)
        self._base_engine = engine
        self._base_records = pack_records(self._listed, EVENTS_RECORD_BYTES_MAX)

    def _fresh_engine(self) -> Engine:
        """An engine right after the first tick: a copy of the base state (cheaper than restore)."""
        state = State(*(array.copy() for array in self._base_engine.state))
        return Engine(self.catalog, self._base_engine.config, _state=state)

    def run(self, seed: int) -> SeedResult:
        """Run one seed; raise SimulationFailure at the first broken invariant."""
        return _Run(self, seed).run()


class _Run:
    """One seed's world: the engine, its command and events logs, the sinks, the faults."""

    def __init__(self, sim: Simulator, seed: int) -> None:
        self.sim = sim
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = FaultPlan(random.Random(seed ^ 0x5EED), sim.rates)
        self.engine = sim._fresh_engine()
        self.snapshot = sim._base
        self.commands: list[Any] = [sim._first]
        self.log: list[EventRecord] = list(sim._base_records)
        self.log_seq = self.engine.event_seq
        self.command_ends = {0, self.log_seq}  # the seq of every command's last event
        self.last_raw = split_event_record(self.log[-1].value)[-1]
        self.workload = Simulation(seed, sim._symbols, WORKLOAD_START_NS)
        self.ledger = sim.ledger_sink()
        self.marketdata = MarketDataSink()
        self.cursors = {"ledger": 0, "marketdata": 0}
        self.step = 0
        self.result = SeedResult(seed)

    # ------------------------------------------------------------------ the loop

    def run(self) -> SeedResult:
        try:
            for step in range(self.sim.steps):
                self.step = step
                batch = (
                    self.workload.opening()
                    if self.step == 0
                    else self.workload.batch(self.rng.randint(1, batch_commands_max))
                )
                self._engine_step(batch)
                for name in self.cursors:
                    self._deliver(name, self.rng.randint(0, deliveries_per_step_max))
                self._check_step()
            self.step = self.sim.steps
            for name in self.cursors:
                self._deliver(name, len(self.log), faults=False)
            self._check_end()
        except SinkError as error:
            self._fail("ledger_no_duplicate", str(error))
        except RecoveryError as error:
            self._fail("recovery", str(error))
        r = self.result
        r.steps, r.commands, r.records = self.sim.steps, len(self.commands), len(self.log)
        r.events, r.faults = self.log_seq, dict(self.faults.injected)
        return r

    def _say(self, line: str) -> None:
        if self.sim.log is not None:
            self.sim.log(f"seed {self.seed} step {self.step}: {line}")

    def _fail(self, invariant: str, detail: str) -> None:
        raise SimulationFailure(self.seed, self.step, invariant, detail)

    # ------------------------------------------------------------------ engine side

    def _engine_step(self, batch: Sequence[Any]) -> None:
        start = len(self.commands)
        self.commands.extend(batch)
        events = self.engine.apply(batch, range(start, start + len(batch)))
        self.workload.observe(events)
        ends = self.command_ends
        for before, after in zip(events, events[1:], strict=False):
            if before.input_offset != after.input_offset:
                ends.add(before.seq)
        if events:
            ends.add(events[-1].seq)
        faults = self.faults
        small = faults.draw("small_records")
        if faults.draw("lost_produce"):
            self._say(f"{len(batch)} commands, crash before producing {len(events)} events")
            self._recover()
        elif faults.draw("torn_produce"):
            records = pack_records(events, small_record_bytes)
            kept = self.rng.randint(0, len(records) - 1) if len(records) > 1 else 0
            self._say(f"{len(batch)} commands, crash after {kept} of {len(records)} records")
            self._produce(records[:kept])
            self._recover()
        else:
            self._produce(
                pack_records(events, small_record_bytes if small else EVENTS_RECORD_BYTES_MAX)
            )
            self._say(f"{len(batch)} commands, {len(events)} events, log at seq {self.log_seq}")
            if faults.draw("restart"):
                self._say("crash after producing")
                self._recover()
        if self.rng.random() < snapshot_odds:  # the log holds every event of the state
            self.snapshot = _Snapshot(
                self.engine.snapshot(),
                len(self.commands),
                self.engine.state_hash(),
                self.engine.event_seq,
            )

    def _produce(self, records: list[EventRecord]) -> None:
        for record in records:
            self.log.append(record)
        if records:
            last = split_event_record(records[-1].value)[-1]
            self.last_raw = last
            self.log_seq = int(msgspec.msgpack.decode(last, type=_Seq).seq)

    def _recover(self) -> None:
        """What the engine runner's recovery does, on the in-memory logs."""
        crashed = self.engine.state_hash()
        snap = self.snapshot
        engine = Engine.restore(snap.data, self.sim.catalog)
        if engine.state_hash() != snap.state_hash:
            self._fail(
                "restore_hash", f"snapshot at command {snap.next_offset} restored differently"
            )
        if engine.event_seq > self.log_seq:
            self._fail(
                "snapshot_not_ahead", f"snapshot seq {engine.event_seq} > log {self.log_seq}"
            )
        replay = self.commands[snap.next_offset :]
        events = engine.apply(replay, range(snap.next_offset, len(self.commands)))
        kept, unmatched = unsuppressed(events, self.log_seq, self.last_raw, engine.config.shard)
        if unmatched is not None and snap.event_seq < self.log_seq:
            self._fail("replay_last_event", f"seq {self.log_seq} was not regenerated")
        small = self.rng.random() < 0.5
        self._produce(pack_records(kept, small_record_bytes if small else EVENTS_RECORD_BYTES_MAX))
        if engine.state_hash() != crashed:
            self._fail("replay_hash", f"replay from command {snap.next_offset} diverged")
        self.engine = engine
        found = violations(engine.state)
        if found:
            self._fail("engine_state", "; ".join(found))
        self._say(f"recovered from command {snap.next_offset}, produced {len(kept)} events")

    # ------------------------------------------------------------------ sink side

    def _deliver(self, name: str, count: int, *, faults: bool = True) -> None:
        sink = self.ledger if name == "ledger" else self.marketdata
        cursor = self.cursors[name]
        f = self.faults
        for _ in range(count):
            if cursor >= len(self.log):
                break
            if faults and f.draw("redeliver"):
                sink.restart()
                cursor = sink.next_offset
                self._say(f"{name} restarts at offset {cursor}")
            if faults and sink.next_offset > 0 and sink.accepts_stale() and f.draw("reorder"):
                # a settled record comes again after newer ones (a stale fetch, a retry)
                old = self.rng.randrange(max(0, sink.next_offset - 4), sink.next_offset)
                sink.deliver(old, self.log[old], False)
            record = self.log[cursor]
            sink.deliver(cursor, record, cursor == len(self.log) - 1)
            if faults and f.draw("duplicate"):
                sink.deliver(cursor, record, cursor == len(self.log) - 1)
            cursor += 1
            if faults and record.partial and f.draw("partial_read"):
                break
        self.cursors[name] = cursor

    # ------------------------------------------------------------------ invariants

    def _check_step(self) -> None:
        if self.ledger.postings_sum != 0:
            self._fail("postings_zero", f"ledger postings sum to {self.ledger.postings_sum}")
        settled = self.ledger.last_seq.get(0, 0)
        if settled not in self.command_ends:
            self._fail("ledger_at_command_end", f"ledger settled seq {settled}, inside a command")
        for name, seqs in (
            ("ledger", self.ledger.last_seq),
            ("marketdata", self.marketdata.last_seq),
        ):
            if seqs.get(0, 0) > self.log_seq:
                self._fail("ledger_not_ahead", f"{name} at seq {seqs[0]}, log at {self.log_seq}")

    def _check_end(self) -> None:
        self._check_step()
        engine = self.engine
        if engine.event_seq != self.log_seq:
            self._fail("no_lost_event", f"engine at seq {engine.event_seq}, log at {self.log_seq}")
        for name, seqs in (
            ("ledger", self.ledger.last_seq),
            ("marketdata", self.marketdata.last_seq),
        ):
            if seqs.get(0, 0) != self.log_seq:
                self._fail(
                    "no_lost_event", f"{name} at seq {seqs.get(0, 0)}, log at {self.log_seq}"
                )
        balances, positions = engine.balances(), engine.positions()
        _same(self, "ledger_equals_engine", "balances", self.ledger.balance_map(), balances)
        _same(self, "ledger_equals_engine", "positions", self.ledger.position_map(), positions)
        auditor = _audit(self.log)
        if auditor.violations_total:
            self._fail("audit_clean", repr(auditor.violations[0]))
        replay = {k: v for k, v in auditor.balances().items() if k[1] <= 5}
        _same(self, "ledger_equals_replay", "balances", self.ledger.balance_map(), replay)
        _same(
            self,
            "ledger_equals_replay",
            "positions",
            self.ledger.position_map(),
            auditor.positions(),
        )
        md = self.marketdata.md
        for symbol in engine.open_symbols():
            _same(
                self, "marketdata_equals_engine", symbol, md.levels(symbol), _book(engine, symbol)
            )
        found = violations(engine.state)
        if found:
            self._fail("engine_state", "; ".join(found))


class _Seq(msgspec.Struct):
    seq: int


def _same(run: _Run, invariant: str, what: str, got: Any, want: Any) -> None:
    if got != want:
        pairs = zip(got, want, strict=True) if isinstance(got, tuple) else [(got, want)]
        diff = [sorted(set(a.items()) ^ set(b.items()))[:4] for a, b in pairs]
        run._fail(invariant, f"{what} differ from the truth, first differences: {diff}")


def _audit(log: list[EventRecord]) -> Auditor:
    """The audit's replay of the whole log, record by record as `gx audit` reads it."""
    auditor = Auditor()
    grouper = CommandGrouper(hold_partial=False, keep_raw=True)
    for record in log:
        commands, _ = grouper.feed(record.value)
        for command in commands:
            for event, raw in zip(command.events, command.raws, strict=True):
                auditor.feed(event, raw)
    auditor.finish()
    return auditor


def _book(engine: Engine, symbol: str) -> tuple[dict[int, int], dict[int, int]]:
    """The engine's book of `symbol` as (bids, asks): price_ticks -> lots."""
    st = engine.state
    slot = engine.symbol_slot(symbol)
    levels = st[lay.ST_LEVELS]
    sides: list[dict[int, int]] = []
    for side in (lay.BUY, lay.SELL):
        out: dict[int, int] = {}
        lv = int(st[lay.ST_INSTRS][slot, lay.I_BEST + side])
        while lv != -1:
            out[int(levels[lv, lay.L_PRICE])] = int(levels[lv, lay.L_LOTS])
            lv = int(levels[lv, lay.L_NEXT])
        sides.append(out)
    return sides[0], sides[1]


def run_seeds(
    simulator: Simulator, seeds: range | Sequence[int], budget_s: float | None = None
) -> tuple[int, Counter[str], int, int]:
    """Run seeds in order until done or `budget_s` of wall time is spent.

    Returns (seeds run, faults injected by kind, steps, events); raises at the first failure.
    """
    import time

    deadline = None if budget_s is None else time.monotonic() + budget_s
    faults: Counter[str] = Counter()
    ran = steps = events = 0
    for seed in seeds:
        if deadline is not None and time.monotonic() >= deadline:
            break
        result = simulator.run(seed)
        ran += 1
        steps += result.steps
        events += result.events
        faults.update(result.faults)
    return ran, faults, steps, events
