"""Encoders and decoders of one command or event, built once and reused: msgpack on Kafka, JSON in
files and on the wire. How events are packed into gx.events records: streams/event_records.py."""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import msgspec

from schemas.commands import Command
from schemas.events import Event

__all__ = [
    "DecodeError",
    "encode",
    "decode_command",
    "decode_event",
    "encode_json",
    "decode_command_json",
    "decode_event_json",
    "decode_bounded",
]

DecodeError = msgspec.DecodeError
T_co = TypeVar("T_co", covariant=True)


class _Decoder(Protocol[T_co]):
    def decode(self, buf: Any, /) -> T_co: ...


def decode_bounded(decoder: _Decoder[T_co], data: bytes | str) -> T_co:
    """Decode with a built msgspec decoder; input nested past its recursion limit is a
    DecodeError.

    msgspec raises RecursionError there, even inside a field it would skip (an unknown field
    holding `[[[[...]]]]`), and every reader of a topic catches DecodeError only: one such
    record would stop the engine runner at every replay. Every decoder of a topic's records, and
    of the audit's checkpoint file, goes through this.
    """
    try:
        return decoder.decode(data)
    except RecursionError:
        raise DecodeError(
            "input nested too deeply: more levels of arrays or maps than the decoder's "
            "recursion limit"
        ) from None


_msgpack_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()
_command_decoder = msgspec.msgpack.Decoder(Command)
_event_decoder = msgspec.msgpack.Decoder(Event)
_command_json_decoder = msgspec.json.Decoder(Command)
_event_json_decoder = msgspec.json.Decoder(Event)


def encode(message: msgspec.Struct) -> bytes:
    """Encode a command or event as msgpack (the Kafka payload)."""
    return _msgpack_encoder.encode(message)


def decode_command(data: bytes) -> Command:
    """Decode a msgpack command; raises DecodeError naming the bad field."""
    return decode_bounded(_command_decoder, data)


def decode_event(data: bytes) -> Event:
    """Decode a msgpack event; raises DecodeError naming the bad field."""
    return decode_bounded(_event_decoder, data)


def encode_json(message: msgspec.Struct) -> bytes:
    """Encode a command or event as JSON."""
    return _json_encoder.encode(message)


def decode_command_json(data: bytes | str) -> Command:
    """Decode a JSON command."""
    return decode_bounded(_command_json_decoder, data)


def decode_event_json(data: bytes | str) -> Event:
    """Decode a JSON event."""
    return decode_bounded(_event_json_decoder, data)
