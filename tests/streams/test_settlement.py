"""Settlement's record check: what the ledger's columns cannot hold becomes a dead letter, named."""

from __future__ import annotations

import msgspec
import pytest

from schemas import events as ev
from schemas.codec import encode
from streams.event_records import pack_events
from streams.settlement import Malformed, decode_record

INT64_MAX = 2**63 - 1


def _cash(**changes: object) -> bytes:
    fields = dict(
        shard=0, seq=7, input_offset=3, ts_event=1, account=10, available_delta=-5,
        held_delta=5, escrow_delta=0, collateral_delta=0, reason=1, ref_id=0,
    )  # fmt: skip
    fields.update(changes)
    fields["type"] = "CashChanged"
    return msgspec.msgpack.encode(fields)


def _trade(**changes: object) -> bytes:
    fields = dict(
        shard=0, seq=8, input_offset=3, ts_event=1, trade_id=1, symbol="H100-SXM.us-east.1h.x",
        price_ticks=2400, lots=1, aggressor_side="buy", maker_order_id=1, taker_order_id=2,
        maker_account=10, taker_account=11, maker_fee_micros=0, taker_fee_micros=0,
    )  # fmt: skip
    fields.update(changes)
    fields["type"] = "TradeExecuted"
    return msgspec.msgpack.encode(fields)


def test_an_event_in_range_decodes() -> None:
    [event] = decode_record(pack_events([_cash()]))
    assert isinstance(event, ev.CashChanged) and event.available_delta == -5
    assert isinstance(decode_record(pack_events([_trade()]))[0], ev.TradeExecuted)
    assert decode_record(pack_events([encode(event)])) == [event]


def test_a_batch_record_decodes_to_its_events_and_a_bad_one_spoils_only_itself() -> None:
    [cash] = decode_record(pack_events([_cash()]))
    [trade] = decode_record(pack_events([_trade()]))
    assert decode_record(pack_events([_cash(), _trade()])) == [cash, trade]
    found = decode_record(pack_events([_cash(), _trade(lots=INT64_MAX + 1), _cash(seq=9)]))
    assert found[0] == cash and found[2] == msgspec.structs.replace(cash, seq=9)
    assert isinstance(found[1], Malformed)
    assert found[1].reason.startswith("TradeExecuted.lots: expected a 64-bit integer")
    assert decode_record(pack_events([])) == []


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (_cash(available_delta=INT64_MAX + 1), "CashChanged.available_delta: expected a 64-bit"),
        (_cash(ref_id=2**64 - 1), "CashChanged.ref_id: expected a 64-bit integer"),
        (_cash(reason=40_000), "CashChanged.reason: expected a 16-bit code, found 40000"),
        (_cash(seq=0), "CashChanged: expected 1 <= seq"),
        (_cash(seq=INT64_MAX + 1), "CashChanged: expected 1 <= seq"),
        (_trade(symbol="H100\x00"), "TradeExecuted.symbol: expected text without NUL"),
        (_trade(lots=INT64_MAX + 1), "TradeExecuted.lots: expected a 64-bit integer"),
    ],
)
def test_what_the_ledger_cannot_hold_is_malformed_and_named(value: bytes, reason: str) -> None:
    [found] = decode_record(pack_events([value]))
    assert isinstance(found, Malformed), found
    assert found.reason.startswith(reason), found.reason
    assert found.payload == value  # the bad event's own bytes


@pytest.mark.parametrize("value", [b"\xc1", _cash()])  # not msgpack; one event, not a record
def test_a_value_that_is_no_record_is_malformed_whole(value: bytes) -> None:
    [found] = decode_record(value)
    assert isinstance(found, Malformed) and found.reason.startswith("undecodable event")
    assert found.payload == value


def test_no_value_is_malformed() -> None:
    [found] = decode_record(None)
    assert isinstance(found, Malformed) and found.payload is None
