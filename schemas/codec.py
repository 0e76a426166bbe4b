"""Encoders and decoders, built once and reused: msgpack on Kafka, JSON in files and on the wire."""

from __future__ import annotations

import msgspec

from schemas.commands import Command
from schemas.events import Event

__all__ = [
    "DecodeError",
    "encode",
    "decode_command",
    "decode_event",
    "pack_events",
    "decode_event_record",
    "split_event_record",
    "is_event_batch",
    "encode_json",
    "decode_command_json",
    "decode_event_json",
]

DecodeError = msgspec.DecodeError

_msgpack_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)
_event_decoder = msgspec.msgpack.Decoder(Event)
_record_decoder = msgspec.msgpack.Decoder(list[Event] | Event)  # type: ignore[arg-type]
_raw_list_decoder = msgspec.msgpack.Decoder(list[msgspec.Raw])
_command_json_decoder = msgspec.json.Decoder(Command)
_event_json_decoder = msgspec.json.Decoder(Event)


def encode(message: msgspec.Struct) -> bytes:
    """Encode a command or event as msgpack (the Kafka payload)."""
    return _msgpack_encoder.encode(message)


def decode_command(data: bytes) -> Command:
    """Decode a msgpack command; raises DecodeError naming the bad field."""
    return _command_decoder.decode(data)


def decode_event(data: bytes) -> Event:
    """Decode a msgpack event; raises DecodeError naming the bad field."""
    return _event_decoder.decode(data)


# ---------------------------------------------------------------------- gx.events records
#
# A gx.events record holds the events of one or more whole commands of one shard, in sequence
# order, as a msgpack array of events (each exactly as `encode` writes it); only a command whose
# events exceed one record is split over several. Records of a single event (a msgpack map, as
# the first releases wrote every event) are read as a batch of one.


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


def decode_event_record(data: bytes) -> list[Event | DecodeError]:
    """The events of one gx.events record, in order.

    An event that does not decode is replaced by its DecodeError and the others still come
    through; a record that is not a msgpack array or event at all is one DecodeError.
    """
    try:
        found = _record_decoder.decode(data)
    except DecodeError as whole:
        try:
            parts = _raw_list_decoder.decode(data)
        except DecodeError:
            return [whole]
        return [_decode_or_error(bytes(part)) for part in parts]
    return found if isinstance(found, list) else [found]  # type: ignore[return-value]


def _decode_or_error(data: bytes) -> Event | DecodeError:
    try:
        return _event_decoder.decode(data)
    except DecodeError as error:
        return error


def is_event_batch(data: bytes) -> bool:
    """Whether a gx.events record is a batch (a msgpack array), not a single event map."""
    return bool(data) and (0x90 <= data[0] <= 0x9F or data[0] in (0xDC, 0xDD))


def split_event_record(data: bytes) -> list[bytes]:
    """The encoded events of one gx.events record (for hashing and byte comparison).

    Raises DecodeError when the record is neither an array nor a single event map.
    """
    if is_event_batch(data):
        return [bytes(part) for part in _raw_list_decoder.decode(data)]
    if data[:1] and (0x80 <= data[0] <= 0x8F or data[0] in (0xDE, 0xDF)):
        return [data]
    raise DecodeError("expected a msgpack array of events or one event map")


def encode_json(message: msgspec.Struct) -> bytes:
    """Encode a command or event as JSON."""
    return _json_encoder.encode(message)


def decode_command_json(data: bytes | str) -> Command:
    """Decode a JSON command."""
    return _command_json_decoder.decode(data)


def decode_event_json(data: bytes | str) -> Event:
    """Decode a JSON event."""
    return _event_json_decoder.decode(data)
