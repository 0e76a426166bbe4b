"""gx.events records: batches of whole commands, split only when one command exceeds a record."""

from __future__ import annotations

import random

import msgspec
import pytest

from schemas import events as ev
from schemas.codec import DecodeError, encode
from streams.event_records import (
    PARTIAL_HEADERS,
    CommandEvents,
    CommandGrouper,
    EventRecord,
    decode_event_record,
    is_event_batch,
    pack_events,
    pack_records,
    split_event_record,
)


def _events(commands: list[int], seed: int = 1) -> list[ev.Event]:
    """Events of consecutive commands, `commands[i]` events for the i-th."""
    rng = random.Random(seed)
    out: list[ev.Event] = []
    seq = 0
    for offset, count in enumerate(commands):
        for _ in range(count):
            seq += 1
            out.append(
                ev.CashChanged(
                    account=rng.randrange(100), available_delta=rng.randrange(-(10**9), 10**9),
                    held_delta=0, escrow_delta=0, collateral_delta=0, reason=1, ref_id=0,
                    shard=0, seq=seq, input_offset=offset, ts_event=offset,
                )
            )  # fmt: skip
    return out


@pytest.mark.parametrize("seed", range(20))
def test_records_hold_whole_commands_in_order_and_split_only_what_cannot_fit(seed: int) -> None:
    rng = random.Random(seed)
    commands = [rng.choice([1, 1, 2, 5, 9, 40, 120]) for _ in range(rng.randrange(1, 200))]
    events = _events(commands, seed)
    bytes_max = rng.choice([300, 1000, 4000, 1 << 17])
    records = pack_records(events, bytes_max)
    # every event once, in order, byte for byte
    assert [e for r in records for e in split_event_record(r.value)] == [encode(e) for e in events]
    assert [e for r in records for e in decode_event_record(r.value)] == events
    for i, record in enumerate(records):
        inside = decode_event_record(record.value)
        last_offset = inside[-1].input_offset
        follows = records[i + 1] if i + 1 < len(records) else None
        continues = follows is not None and (
            decode_event_record(follows.value)[0].input_offset == last_offset
        )
        assert record.partial == continues  # partial exactly when the command goes on
        if len(record.value) > bytes_max + 5:  # (+ the array header) only an event too big
            assert len(inside) == 1
        if not record.partial and follows is not None:
            # closed because the next whole command did not fit (or was split itself)
            nxt = [
                e
                for e in events
                if e.input_offset == decode_event_record(follows.value)[0].input_offset
            ]
            size = sum(len(encode(e)) for e in inside) + sum(len(encode(e)) for e in nxt)
            assert size > bytes_max


def test_a_value_that_is_not_an_array_is_not_a_record() -> None:
    [event] = _events([1])
    [refused] = decode_event_record(encode(event))  # one event map: what nothing writes now
    assert isinstance(refused, msgspec.DecodeError)
    with pytest.raises(msgspec.DecodeError):
        split_event_record(encode(event))
    with pytest.raises(msgspec.DecodeError):
        split_event_record(b"\xc3")
    assert not is_event_batch(encode(event)) and is_event_batch(pack_events([encode(event)]))


def _fed(grouper: CommandGrouper, records: list[EventRecord]) -> list[CommandEvents]:
    out: list[CommandEvents] = []
    for record in records:
        commands, errors = grouper.feed(record.value, PARTIAL_HEADERS if record.partial else [])
        assert errors == []
        out += commands
    return out


@pytest.mark.parametrize("bytes_max", [1, 300, 1000, 1 << 17])
def test_grouper_returns_whole_commands_across_partial_records(bytes_max: int) -> None:
    events = _events([1, 3, 40, 2, 120, 1])
    records = pack_records(events, bytes_max)
    commands = _fed(CommandGrouper(), records)
    assert [c.input_offset for c in commands] == list(range(6))
    assert [e for c in commands for e in c.events] == events
    assert all(c.raws == [] for c in commands)  # only with keep_raw


def test_grouper_holds_a_split_command_until_the_record_that_ends_it() -> None:
    events = _events([2, 40])
    records = pack_records(events, 340)
    assert len(records) > 2 and records[0].partial is False and records[1].partial
    grouper = CommandGrouper(keep_raw=True)
    first = _fed(grouper, records[:1])
    assert [(c.input_offset, len(c.events)) for c in first] == [(0, 2)]
    assert _fed(grouper, records[1:-1]) == []  # held: the partial header says it goes on
    [last] = _fed(grouper, records[-1:])
    assert (last.input_offset, last.events) == (1, events[2:])
    assert last.raws == [encode(e) for e in events[2:]]
    assert grouper.flush() == []


def test_grouper_without_holding_returns_each_record_s_piece_of_a_split_command() -> None:
    events = _events([40])
    records = pack_records(events, 300)
    pieces = [_fed(CommandGrouper(hold_partial=False), [r]) for r in records]
    assert all(len(p) == 1 and p[0].input_offset == 0 for p in pieces)
    assert [e for p in pieces for e in p[0].events] == events


def test_grouper_flush_returns_a_command_whose_last_record_never_came() -> None:
    events = _events([40])
    grouper = CommandGrouper()
    assert _fed(grouper, pack_records(events, 300)[:-1]) == []
    [held] = grouper.flush()
    assert held.input_offset == 0 and held.events == events[: len(held.events)]
    assert grouper.flush() == []


def test_grouper_ends_a_held_command_when_another_one_follows() -> None:
    events = _events([1, 1])
    grouper = CommandGrouper()
    commands, _ = grouper.feed(pack_events([encode(events[0])]), PARTIAL_HEADERS)
    assert commands == []
    commands, _ = grouper.feed(pack_events([encode(events[1])]))
    assert [c.input_offset for c in commands] == [0, 1]


@pytest.mark.parametrize("keep_raw", [False, True])
def test_grouper_reports_what_does_not_decode_and_keeps_the_rest(keep_raw: bool) -> None:
    events = _events([2, 1])
    bad = msgspec.msgpack.encode({"type": "PriceSpiked", "shard": 0, "seq": 9})
    value = pack_events([encode(events[0]), bad, encode(events[1]), encode(events[2])])
    commands, errors = CommandGrouper(keep_raw=keep_raw).feed(value)
    assert [c.events for c in commands] == [events[:2], events[2:]]
    assert [i for i, error in errors if isinstance(error, DecodeError)] == [1]
    if keep_raw:
        assert [c.raws for c in commands] == [[encode(e) for e in events[:2]], [encode(events[2])]]
    for whole in (b"\xc1 not msgpack", encode(events[0])):  # a map is not a record any more
        commands, errors = CommandGrouper(keep_raw=keep_raw).feed(whole)
        assert commands == [] and [i for i, _ in errors] == [-1]
