"""gx.events records: batches of whole commands, split only when one command exceeds a record."""

from __future__ import annotations

import random

import msgspec
import pytest

from schemas import events as ev
from schemas.codec import encode
from streams.event_records import (
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
