"""The gx.events record format: how the engine's events are packed into Kafka records.

A record holds the events of one or more whole commands of one shard, in sequence order, as a
msgpack array of events, each exactly as `schemas.codec.encode` writes it. A record closes before
the next command's events would take it past `EVENTS_RECORD_BYTES_MAX`; only a command whose own
events exceed that is split over several records, every one but the last marked by the
`PARTIAL_HEADER` record header, so a reader holds a command's events until its last record.
Anything that is not a msgpack array is not a record (the first releases wrote one event map per
record; nothing produces those any more).

Readers: the gateway hub, market data and the audit read records through `CommandGrouper`
(whole commands out, partial records held). Settlement does not: it commits many records per
PostgreSQL transaction and must cut each commit at a record boundary that is also a command
boundary (the audit compares the ledger there), keep every malformed event in its place so its
dead letter is named by offset and index, and check sequence gaps and each command's cash
balance before it writes (streams/settlement/plan.py). Provisioning reads through faust, which
hands it single events without record headers, and acts per event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from schemas.codec import DecodeError, decode_bounded, encode
from schemas.events import Event

__all__ = [
    "EVENTS_RECORD_BYTES_MAX",
    "PARTIAL_HEADER",
    "PARTIAL_HEADERS",
    "CommandEvents",
    "CommandGrouper",
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
    through; a record that is not a msgpack array is one DecodeError.
    """
    found = _read_record(data)
    return [found] if isinstance(found, DecodeError) else found


def _read_record(data: bytes) -> list[Event | DecodeError] | DecodeError:
    """`decode_event_record`, but a record that is not an array is its DecodeError, unlisted."""
    try:
        return decode_bounded(_record_decoder, data)  # type: ignore[return-value]
    except DecodeError as whole:
        try:
            parts = decode_bounded(_raw_list_decoder, data)
        except DecodeError:
            return whole
        return [_decode_or_error(bytes(part)) for part in parts]


def _decode_or_error(data: bytes) -> Event | DecodeError:
    try:
        return decode_bounded(_event_decoder, data)
    except DecodeError as error:
        return error


def split_event_record(data: bytes) -> list[bytes]:
    """The encoded events of one gx.events record (for hashing and byte comparison).

    Raises DecodeError when the value is not a msgpack array.
    """
    return [bytes(part) for part in decode_bounded(_raw_list_decoder, data)]


def is_event_batch(data: bytes) -> bool:
    """Whether a value has the form of a gx.events record: a msgpack array."""
    return bool(data) and (0x90 <= data[0] <= 0x9F or data[0] in (0xDC, 0xDD))


def is_partial(headers: object) -> bool:
    """Whether a consumed record's headers mark its last command as continued."""
    return any(name == PARTIAL_HEADER for name, _ in headers or ())  # type: ignore[attr-defined]


class CommandEvents(msgspec.Struct):
    """The events of one command (one shard, one input offset) in sequence order.

    `raws`: each event's bytes as logged (filled only by a grouper with `keep_raw`).
    """

    shard: int
    input_offset: int
    events: list[Event] = msgspec.field(default_factory=list)
    raws: list[bytes] = msgspec.field(default_factory=list)


RecordError = tuple[int, DecodeError]  # (index of the event in its record or -1: the whole record)


class CommandGrouper:
    """Group a stream of gx.events records into whole commands.

    Feed every record of the partitions it reads, in order; `feed` returns the commands the
    record completes and what did not decode. A record without the partial header ends its
    last command; the last command of a partial record is held until the record that ends it.
    With `hold_partial=False` every record's commands come out at its end, a split command in
    pieces (market data publishes per record). A bad event spoils only itself; a record that
    is not a msgpack array is one error at index -1.
    """

    def __init__(self, *, hold_partial: bool = True, keep_raw: bool = False) -> None:
        """Describe the grouping; `keep_raw`: also return each event's bytes as logged."""
        self.hold_partial = hold_partial
        self.keep_raw = keep_raw
        self._held: dict[int, CommandEvents] = {}  # shard -> its command continued next record

    def feed(
        self, value: bytes, headers: object = ()
    ) -> tuple[list[CommandEvents], list[RecordError]]:
        """Read one record; return the commands it completes, in order, and its decode errors."""
        events, raws, errors = self._decode(value)
        done: list[CommandEvents] = []
        current: CommandEvents | None = None
        for i, event in enumerate(events):
            if (
                current is None
                or event.input_offset != current.input_offset
                or (event.shard != current.shard)
            ):
                if current is not None:
                    done.append(current)
                current = self._held.pop(event.shard, None)
                if current is not None and current.input_offset != event.input_offset:
                    done.append(current)  # the held command ended without its last record
                    current = None
                if current is None:
                    current = CommandEvents(event.shard, event.input_offset)
            current.events.append(event)
            if raws is not None:
                current.raws.append(raws[i])
        if current is not None:
            if self.hold_partial and is_partial(headers):
                self._held[current.shard] = current
            else:
                done.append(current)
        return done, errors

    def flush(self) -> list[CommandEvents]:
        """Return the held commands (their last record has not been read) and forget them."""
        held, self._held = list(self._held.values()), {}
        return held

    def _decode(self, value: bytes) -> tuple[list[Event], list[bytes] | None, list[RecordError]]:
        if self.keep_raw:
            try:
                parts = split_event_record(value)
            except DecodeError as error:
                return [], [], [(-1, error)]
            found: list[Event | DecodeError] = [_decode_or_error(raw) for raw in parts]
        else:
            whole = _read_record(value)
            if isinstance(whole, DecodeError):
                return [], None, [(-1, whole)]
            found, parts = whole, []
        events: list[Event] = []
        raws: list[bytes] | None = [] if self.keep_raw else None
        errors: list[RecordError] = []
        for i, item in enumerate(found):
            if isinstance(item, DecodeError):
                errors.append((i, item))
                continue
            events.append(item)
            if raws is not None:
                raws.append(parts[i])
        return events, raws, errors
