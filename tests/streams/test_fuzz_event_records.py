"""Fuzz the gx.events record readers: a bad record or event is a DecodeError in its place, never
another exception, and the good events of a record still come through.

Inputs: random bytes, records of valid events with bytes edited, records whose events were
edited one by one, and records nested past the decoder's recursion limit (the whole record, or
one event). Every reader is tried: `decode_event_record`, `split_event_record` and
`CommandGrouper` in each of its modes, with and without the partial header.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.codec import DecodeError, encode
from schemas.events import EVENT_TYPES
from streams.event_records import (
    PARTIAL_HEADERS,
    CommandGrouper,
    decode_event_record,
    pack_events,
    split_event_record,
)
from tests.support.fuzz import DECODER_BUDGET, covered, deep_msgpack, mutated_bytes, structs

TARGET = "event_records"


@functools.cache
def _events() -> st.SearchStrategy[list[Any]]:
    return st.lists(structs(*EVENT_TYPES), max_size=5)


@functools.cache
def _inputs(kind: str) -> st.SearchStrategy[bytes]:
    records = _events().map(lambda events: pack_events([encode(e) for e in events]))
    if kind == "random":
        return st.binary(max_size=300)
    if kind == "mutated record":
        return mutated_bytes(records)
    if kind == "mutated events":
        event = _events().map(lambda events: [encode(e) for e in events])
        edited = st.lists(mutated_bytes(structs(*EVENT_TYPES).map(encode)), max_size=3)
        return st.tuples(event, edited).map(lambda parts: pack_events(parts[0] + parts[1]))
    assert kind == "deep"
    return st.tuples(_events(), deep_msgpack(), st.booleans()).map(
        lambda case: case[1] if case[2] else pack_events([encode(e) for e in case[0]] + [case[1]])
    )


def _check_grouper(value: bytes, headers: Any, hold_partial: bool, keep_raw: bool) -> int:
    grouper = CommandGrouper(hold_partial=hold_partial, keep_raw=keep_raw)
    done, errors = grouper.feed(value, headers)
    done += grouper.flush()
    for index, error in errors:
        assert isinstance(index, int) and isinstance(error, DecodeError)
    for command in done:
        assert all(isinstance(e, EVENT_TYPES) for e in command.events)
        assert len(command.raws) == (len(command.events) if keep_raw else 0)
    return sum(len(command.events) for command in done)


@pytest.mark.parametrize("kind", ["random", "mutated record", "mutated events", "deep"])
@DECODER_BUDGET
@given(data=st.data())
def test_a_record_decodes_to_events_and_decode_errors_in_place(kind, data):
    value = data.draw(_inputs(kind), label="record")
    headers = data.draw(st.sampled_from([(), PARTIAL_HEADERS, None]), label="headers")
    found = decode_event_record(value)
    assert all(isinstance(item, (*EVENT_TYPES, DecodeError)) for item in found)
    good = [item for item in found if not isinstance(item, DecodeError)]
    try:
        parts = split_event_record(value)
    except DecodeError:
        assert len(found) == 1 and isinstance(found[0], DecodeError)  # not an array at all
        covered(TARGET, f"{kind}: not a record")
        parts = None
    if parts is not None:
        assert len(parts) == len(found)
        covered(TARGET, f"{kind}: {len(good)} of {len(found)} events")
    for hold_partial in (True, False):
        for keep_raw in (True, False):
            assert _check_grouper(value, headers, hold_partial, keep_raw) == len(good)


@DECODER_BUDGET
@given(events=_events())
def test_a_record_of_valid_events_gives_them_back_in_order(events):
    value = pack_events([encode(e) for e in events])
    assert decode_event_record(value) == events
    assert split_event_record(value) == [encode(e) for e in events]
    covered(TARGET, f"valid: {len(events)} events")
