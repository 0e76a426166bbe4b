"""The audit's replay: a simulated log passes, and every kind of tampering is caught.

A seeded simulation's events must pass the Auditor with no violation and replay to exactly the
engine's balances and positions; changing an amount, dropping or reordering events or moving a
trade outside its orders' limits must each be reported as its own violation kind. The hash
chain is deterministic, and a checkpoint resumes to the same head and state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
import pytest

from matching.engine import Engine
from schemas import events as e
from schemas.catalog import load_catalog
from schemas.codec import encode
from schemas.codes import Side
from streams.audit import (
    ZERO_HEAD,
    Auditor,
    CheckpointError,
    chain_step,
    dump_checkpoint,
    load_checkpoint,
)
from tests.support.simulation import run_simulation

pytestmark = pytest.mark.timeout(30)

SEED = 5
BATCHES = 60


@pytest.fixture(scope="module")
def simulated() -> tuple[Engine, list[Any]]:
    engine, _, events = run_simulation(load_catalog(), SEED, BATCHES)
    return engine, events


def replay(events: Iterable[Any], auditor: Auditor | None = None) -> Auditor:
    auditor = auditor or Auditor()
    for event in events:
        auditor.feed(event)
    auditor.finish()
    return auditor


def kinds(auditor: Auditor) -> set[str]:
    return {v.kind for v in auditor.violations}


def cash_sum(x: e.CashChanged) -> int:
    return x.available_delta + x.held_delta + x.escrow_delta + x.collateral_delta + x.pending_delta


def test_simulated_log_passes_with_engine_balances_and_positions(
    simulated: tuple[Engine, list[Any]],
) -> None:
    engine, events = simulated
    auditor = replay(events)
    assert auditor.violations == [] and auditor.violations_total == 0
    assert auditor.warnings == []
    assert auditor.balances() == engine.balances() != {}
    assert auditor.positions() == engine.positions()
    report = auditor.report()
    assert report.ok and report.events == len(events)
    assert report.event_counts["TradeExecuted"] > 0 and report.event_counts["OrderAmended"] > 0


def test_changed_cash_amount_breaks_the_zero_sum(simulated: tuple[Engine, list[Any]]) -> None:
    _, events = simulated
    i = next(i for i, x in enumerate(events) if type(x) is e.CashChanged and x.held_delta > 0)
    tampered = list(events)
    tampered[i] = msgspec.structs.replace(events[i], held_delta=events[i].held_delta + 1)
    auditor = replay(tampered)
    assert "cash_not_zero_sum" in kinds(auditor)
    assert auditor.balances() != replay(events).balances()


def test_dropped_event_is_a_sequence_gap(simulated: tuple[Engine, list[Any]]) -> None:
    _, events = simulated
    i = next(i for i, x in enumerate(events) if type(x) is e.TradeExecuted)
    auditor = replay(events[:i] + events[i + 1 :])
    gaps = [v for v in auditor.violations if v.kind == "seq_gap"]
    assert [(v.shard, v.seq) for v in gaps] == [(0, events[i].seq + 1)]


def test_dropped_cash_event_is_a_gap_and_an_unbalanced_command(
    simulated: tuple[Engine, list[Any]],
) -> None:
    _, events = simulated
    i = next(i for i, x in enumerate(events) if type(x) is e.CashChanged and cash_sum(x) != 0)
    assert {"seq_gap", "cash_not_zero_sum"} <= kinds(replay(events[:i] + events[i + 1 :]))


def test_reordered_events_are_a_gap_and_a_duplicate(simulated: tuple[Engine, list[Any]]) -> None:
    _, events = simulated
    i = len(events) // 2
    swapped = events[: i - 1] + [events[i], events[i - 1]] + events[i + 1 :]
    assert {"seq_gap", "seq_duplicate"} <= kinds(replay(swapped))


def test_trade_beyond_the_buyers_limit_is_reported(simulated: tuple[Engine, list[Any]]) -> None:
    _, events = simulated
    prices = {x.order_id: x.price_ticks for x in events if type(x) is e.OrderAccepted}
    i, trade = next(
        (i, x)
        for i, x in enumerate(events)
        if type(x) is e.TradeExecuted and x.taker_order_id in prices
    )
    buyer = trade.taker_order_id if trade.aggressor_side is Side.BUY else trade.maker_order_id
    tampered = list(events)
    tampered[i] = msgspec.structs.replace(trade, price_ticks=prices[buyer] + 1)
    auditor = replay(tampered)
    outside = [v for v in auditor.violations if v.kind == "trade_outside_limit"]
    assert len(outside) == 1 and outside[0].seq == trade.seq
    assert f"buy order {buyer}" in outside[0].message


def test_overlapping_resting_orders_are_a_crossed_book(simulated: tuple[Engine, list[Any]]) -> None:
    _, events = simulated
    # Re-price a resting sell far below the market: the book crosses at that command.
    i, sell = next(
        (i, x)
        for i, x in enumerate(events)
        if type(x) is e.OrderAccepted and x.side is Side.SELL and x.tif == "gtc"
        and not any(type(y) is e.TradeExecuted for y in events[i + 1 : i + 4])
    )  # fmt: skip
    tampered = list(events)
    tampered[i] = msgspec.structs.replace(sell, price_ticks=1)
    assert "book_crossed" in kinds(replay(tampered))


def test_chain_head_is_stable_and_is_the_blake2b_fold(simulated: tuple[Engine, list[Any]]) -> None:
    _, events = simulated
    head = ZERO_HEAD
    for x in events:
        head = chain_step(head, encode(x))
    first, second = replay(events).heads(), replay(events).heads()
    assert first == second
    assert [(h.shard, h.seq, h.head) for h in first] == [(0, events[-1].seq, head.hex())]


def test_checkpoint_resumes_to_the_same_head_and_state(simulated: tuple[Engine, list[Any]]) -> None:
    _, events = simulated
    # Split at a command boundary, as a clean audit run ends.
    cut = next(
        i
        for i in range(len(events) // 2, len(events))
        if events[i].input_offset != events[i - 1].input_offset
    )
    first = replay(events[:cut])
    assert first.violations == []
    data = dump_checkpoint(first.checkpoint({0: cut}))
    # The resumed run re-reads the checkpoint's last event (to verify its head), then the rest.
    resumed = replay(events[cut - 1 :], Auditor(load_checkpoint(data)))
    full = replay(events)
    assert resumed.violations == [] and resumed.warnings == []
    assert resumed.heads() == full.heads()
    assert resumed.balances() == full.balances()
    assert resumed.positions() == full.positions()
    # Resumed at a batch record that holds more events before the checkpoint's last one.
    batch = replay(events[cut - 5 :], Auditor(load_checkpoint(data)))
    assert batch.violations == [] and batch.warnings == []
    assert batch.heads() == full.heads() and batch.balances() == full.balances()


def test_checkpoint_detects_a_rewritten_last_event_and_an_altered_file(
    simulated: tuple[Engine, list[Any]],
) -> None:
    _, events = simulated
    cut = next(
        i
        for i in range(len(events) // 2, len(events))
        if events[i].input_offset != events[i - 1].input_offset
    )
    checkpoint = replay(events[:cut]).checkpoint({0: cut})
    rewritten = msgspec.structs.replace(events[cut - 1], ts_event=events[cut - 1].ts_event + 1)
    auditor = replay([rewritten, *events[cut:]], Auditor(checkpoint))
    assert kinds(auditor) == {"checkpoint_mismatch"}
    data = dump_checkpoint(checkpoint)
    altered = data.replace(b'"seq":', b'"seq":1', 1)
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(altered)
