"""Market controls: halts, the circuit breaker and suspensions replay exactly and survive a
snapshot, so restore + replay gives the same state hash and the same events."""

from __future__ import annotations

import msgspec
import pytest

from matching.engine import Engine
from tests.golden import runner
from tests.reference.book import ReferenceExchange

pytestmark = pytest.mark.nojit

BREAKER = "circuit_breaker_halts_and_tick_resumes"


def _kinds(events: list) -> list[str]:
    return [type(e).__name__ for e in events]


def test_breaker_trip_and_expiry_replay_to_identical_events() -> None:
    scenario = runner.load(BREAKER)
    first = runner.new_engine(scenario).apply(scenario.commands)
    second = runner.new_engine(scenario).apply(scenario.commands)
    assert [msgspec.msgpack.encode(e) for e in first] == [msgspec.msgpack.encode(e) for e in second]
    kinds = _kinds(first)
    assert kinds.count("InstrumentHalted") == 1 and kinds.count("InstrumentResumed") == 1


@pytest.mark.parametrize("cut", range(1, 19))
def test_restore_mid_halt_then_replay_gives_the_same_state_and_events(cut: int) -> None:
    """Snapshot after every prefix of the breaker scenario (halted or not, reference set or not),
    restore, apply the rest: the same events and state hash as the engine that never stopped."""
    scenario = runner.load(BREAKER)
    commands = scenario.commands
    assert cut <= len(commands)
    straight = runner.new_engine(scenario)
    straight.apply(commands[:cut])
    restored = Engine.restore(straight.snapshot(), straight.catalog)
    assert restored.state_hash() == straight.state_hash()
    rest = list(range(cut, len(commands)))
    want = straight.apply(commands[cut:], offsets=rest)
    got = restored.apply(commands[cut:], offsets=rest)
    assert got == want
    assert restored.state_hash() == straight.state_hash()


def test_suspension_and_operator_halt_survive_a_snapshot() -> None:
    scenario = runner.load("reject_account_suspended")
    engine = runner.new_engine(scenario)
    engine.apply(scenario.commands[:5])  # suspended, orders cancelled
    restored = Engine.restore(engine.snapshot(), engine.catalog)
    refused = restored.apply([scenario.commands[5]])
    assert _kinds(refused) == ["OrderRejected"] and refused[0].reason == "ACCOUNT_SUSPENDED"
    halted = runner.load("reject_instrument_halted")
    engine = runner.new_engine(halted)
    engine.apply(halted.commands[:4])  # halted with a resting bid
    restored = Engine.restore(engine.snapshot(), engine.catalog)
    refused = restored.apply([halted.commands[4]])
    assert refused[0].reason == "INSTRUMENT_HALTED"


@pytest.mark.parametrize(
    "name",
    [
        BREAKER,
        "reject_instrument_halted",
        "reject_instrument_not_halted",
        "reject_not_operator",
        "reject_account_suspended",
        "reject_account_not_suspended",
        "cancel_instrument_orders_by_operator",
    ],
)
def test_reference_book_gives_the_engines_events_for_market_controls(name: str) -> None:
    scenario = runner.load(name)
    engine = runner.new_engine(scenario)
    ref = ReferenceExchange(engine.catalog, engine.config)
    want = [msgspec.to_builtins(e) for e in engine.apply(scenario.commands)]
    got = [msgspec.to_builtins(e) for e in ref.apply(scenario.commands)]
    for event in want:
        event["input_offset"] = -1
    assert got == want
