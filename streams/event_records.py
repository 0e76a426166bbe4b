"""The gx.events record format: how the engine's events are packed into Kafka records.

A record holds the events of one or more whole commands of one shard, in sequence order, as a
msgpack array of events, each exactly as `schemas.codec.encode` writes it. A record closes before
the next command's events would take it past `EVENTS_RECORD_BYTES_MAX`; only a command whose own
events exceed that is split over several records, every one but the last marked by the
`PARTIAL_HEADER` record header, so a reader holds a command's events until its last record.
Anything that is not a msgpack array is not a record (the first releases wrote one event map per
record; nothing produces those any more).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import msgspec

from schemas.codec import DecodeError, encode
from schemas.events import Event

__all__ = [
    "EVENTS_RECORD_BYTES_MAX",
    "PARTIAL_HEADER",
    "PARTIAL_HEADERS",
    "EventRecord",
    "decode_event_record",
    "is_event_batch",
    "is_partial",
    "pack_events",
    "pack_records",
    "split_event_record",
]

EVENTS_RECORD_BYTES_MAX = 128 * 1024  # one gx.events record (whole commands; see pack_records)
# Header of a record whose last command continues in the next record.
PARTIAL_HEADER = "gx-partial"
PARTIAL_HEADERS = [(PARTIAL_HEADER, b"1")]  # the headers the engine runner sends with one

_record_decoder = msgspec.msgpack.Decoder(list[Event])  # type: ignore[arg-type]
_event_decoder = msgspec.msgpack.Decoder(Event)
_raw_list_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])


class EventRecord(msgspec.Struct, frozen=True):
    """One gx.events record value; `partial`: its last command goes on in the next record."""

    value: bytes
    partial: bool = False


def pack_events(encoded: list[bytes]) -> bytes:
    """One record value from events encoded by `encode`: the msgpack array of them."""
    n = len(encoded)
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(encoded)


def pack_records(events: Sequence[Any], bytes_max: int) -> list[EventRecord]:
    """Encode events into gx.events records: whole commands per record, in order.

    A record closes before the next command's events would take it past `bytes_max` (the bytes
    of its events; the array header adds at most 5); only a
    command whose own events exceed `bytes_max` is split over several records, every one but
    the last of them marked `partial` (the `PARTIAL_HEADER` record header on the topic).
    """
    records: list[EventRecord] = []
    current: list[bytes] = []
    size = 0
    command: list[bytes] = []  # the events of the command being read
    command_size = 0
    key = None

    def close_command() -> None:
        nonlocal current, size
        if current and size + command_size > bytes_max:
            records.append(EventRecord(pack_events(current)))
            current, size = [], 0
        current.extend(command)
        size += command_size

    for event in events:
        value = encode(event)
        if event.input_offset != key:
            close_command()
            command, command_size, key = [], 0, event.input_offset
        if command and command_size + len(value) > bytes_max:  # one command over several records
            close_command()
            records.append(EventRecord(pack_events(current), partial=True))
            current, size, command, command_size = [], 0, [], 0
        command.append(value)
        command_size += len(value)
    close_command()
    if current:
        records.append(EventRecord(pack_events(current)))
    return records


def decode_event_record(data: bytes) -> list[Event | DecodeError]:
    """The events of one gx.events record, in order.

    An event that does not decode is replaced by its DecodeError and the others still come
    through; a value that is not a msgpack array at all is one DecodeError.
    """
    try:
        return cast(list[Event | DecodeError], _record_decoder.decode(data))
    except DecodeError as whole:
        try:
            parts = _raw_list_decoder.decode(data)
        except DecodeError:
            return [whole]
        return [_decode_or_error(bytes(part)) for part in parts]


def _decode_or_error(data: bytes) -> Event | DecodeError:
    try:
        return _event_decoder.decode(data)
    except DecodeError as error:
        return error


def split_event_record(data: bytes) -> list[bytes]:
    """The encoded events of one gx.events record (for hashing and byte comparison).

    Raises DecodeError when the value is not a msgpack array.
    """
    return [bytes(part) for part in _raw_list_decoder.decode(data)]


def is_event_batch(data: bytes) -> bool:
    """Whether a value has the form of a gx.events record: a msgpack array."""
    return bool(data) and (0x90 <= data[0] <= 0x9F or data[0] in (0xDC, 0xDD))


def is_partial(headers: object) -> bool:
    """Whether a consumed record's headers mark its last command as continued."""
    return any(name == PARTIAL_HEADER for name, _ in headers or ())  # type: ignore[attr-defined]
