"""Seeded simulations: invariants after every batch, exact replay, snapshot + journal recovery."""

from __future__ import annotations

import os
import random
from collections import defaultdict

import msgspec
import pytest

from matching.engine import Engine
from matching.invariants import violations
from schemas import events as e
from schemas.commands import ClockTick
from tests.conftest import SMALL, T0_NS
from tests.support.simulation import Simulation

pytestmark = pytest.mark.nojit
# The pure-Python run (NUMBA_DISABLE_JIT=1) is far slower: it walks fewer steps.
BATCHES = 12 if os.environ.get("NUMBA_DISABLE_JIT") == "1" else 60


class _Run:
    """An engine driven by a simulation, keeping the command log with input offsets."""

    def __init__(self, catalog, seed: int) -> None:
        self.engine = Engine(catalog, SMALL)
        self.log: list = []
        self.events = self.apply([ClockTick(ts_ns=T0_NS)])
        symbols = [ev.symbol for ev in self.events if isinstance(ev, e.InstrumentListed)]
        self.sim = Simulation(seed, symbols, T0_NS)
        self.rng = random.Random(seed)
        self.events += self.apply(self.sim.opening())

    def apply(self, commands: list) -> list:
        offsets = range(len(self.log), len(self.log) + len(commands))
        self.log += commands
        out = self.engine.apply(commands, offsets)
        return out

    def step(self) -> list:
        out = self.apply(self.sim.batch(self.rng.randint(1, 40)))
        self.sim.observe(out)
        self.events += out
        return out


def _encoded(events: list) -> list[bytes]:
    return [msgspec.msgpack.encode(x) for x in events]


def _assert_every_command_balances(events: list) -> None:
    net: dict[int, int] = defaultdict(int)
    for ev in events:
        if isinstance(ev, e.CashChanged):
            net[ev.input_offset] += (
                ev.available_delta
                + ev.held_delta
                + ev.escrow_delta
                + ev.collateral_delta
                + ev.pending_delta
            )
    unbalanced = {offset: total for offset, total in net.items() if total != 0}
    assert unbalanced == {}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_invariants_hold_after_every_batch(catalog, seed):
    run = _Run(catalog, seed)
    kinds: set[str] = set()
    for step in range(BATCHES):
        out = run.step()
        kinds.update(type(ev).__name__ for ev in out)
        assert violations(run.engine.state) == [], f"seed {seed} batch {step}"
        _assert_every_command_balances(out)
    seqs = [ev.seq for ev in run.events]
    assert seqs == list(range(1, len(seqs) + 1))
    # The simulation must reach the interesting paths, or the test proves little: the short
    # pure-Python run too (12 batches already reach them; 36 reach the delivery lifecycle).
    for name in ("TradeExecuted", "OrderCancelled", "OrderAmended", "OrderRejected"):
        assert name in kinds


def test_delivery_lifecycle_reached_by_long_simulation(catalog):
    run = _Run(catalog, seed=4)
    for _ in range(BATCHES * 3):
        run.step()
        assert violations(run.engine.state) == []
    kinds = {type(ev).__name__ for ev in run.events}
    for name in ("InstrumentClosed", "DeliveryAssigned", "DeliverySettled"):
        assert name in kinds
    _assert_every_command_balances(run.events)


def test_same_commands_give_byte_identical_events_in_any_batching(catalog):
    run = _Run(catalog, seed=7)
    for _ in range(BATCHES):
        run.step()
    replay = Engine(catalog, SMALL)
    rng = random.Random(99)
    events: list = []
    i = 0
    while i < len(run.log):
        k = rng.randint(1, 50)
        events += replay.apply(run.log[i : i + k], range(i, min(i + k, len(run.log))))
        i += k
    assert _encoded(events) == _encoded(run.events)
    assert replay.state_hash() == run.engine.state_hash()


def test_snapshot_restore_and_replay_reproduce_events_and_hash(catalog):
    run = _Run(catalog, seed=11)
    for _ in range(BATCHES):
        run.step()
    cut = random.Random(5).randint(len(run.log) // 3, 2 * len(run.log) // 3)
    first = Engine(catalog, SMALL)
    head = first.apply(run.log[:cut], range(cut))
    restored = Engine.restore(first.snapshot(), catalog)
    assert restored.state_hash() == first.state_hash()
    assert violations(restored.state) == []
    tail = restored.apply(run.log[cut:], range(cut, len(run.log)))
    assert _encoded(head + tail) == _encoded(run.events)
    assert restored.state_hash() == run.engine.state_hash()
    # All balances, the external account's included, sum to zero (exchange-core's test).
    assert int(restored.state[2][:, :4].sum()) == 0


def test_state_hash_and_invariants_notice_money_from_nowhere(catalog):
    run = _Run(catalog, seed=3)
    before = run.engine.state_hash()
    run.engine.state[2][20, 0] += 1
    assert run.engine.state_hash() != before
    assert any("sum to" in v for v in violations(run.engine.state))
