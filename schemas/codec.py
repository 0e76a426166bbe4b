"""Encoders and decoders of one command or event, built once and reused: msgpack on Kafka, JSON in
files and on the wire. How events are packed into gx.events records: streams/event_records.py."""

from __future__ import annotations

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
]

DecodeError = msgspec.DecodeError

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
    return _command_decoder.decode(data)


def decode_event(data: bytes) -> Event:
    """Decode a msgpack event; raises DecodeError naming the bad field."""
    return _event_decoder.decode(data)


def encode_json(message: msgspec.Struct) -> bytes:
    """Encode a command or event as JSON."""
    return _json_encoder.encode(message)


def decode_command_json(data: bytes | str) -> Command:
    """Decode a JSON command."""
    return _command_json_decoder.decode(data)


def decode_event_json(data: bytes | str) -> Event:
    """Decode a JSON event."""
    return _event_json_decoder.decode(data)
