"""Decoding gx.events records into events: each event, or a Malformed saying why it cannot be
settled (undecodable, unknown type, a field the ledger's columns cannot hold)."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from schemas import events as ev
from schemas.codec import DecodeError
from streams.event_records import decode_event_record, split_event_record

dead_letter_payload_bytes_max = 1 << 16
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT16_MIN, _INT16_MAX = -(2**15), 2**15 - 1
# Integer fields stored as smallint, by event type.
_SMALLINT_FIELDS: dict[type, tuple[str, ...]] = {
    ev.CashChanged: ("reason",),
    ev.DeliverySettled: ("outcome",),
}
# Events whose fields become ledger rows (the others only advance the shard's sequence).
_STORED_EVENTS = frozenset(
    (
        ev.CashChanged, ev.TradeExecuted, ev.PositionChanged, ev.OrderAccepted,
        ev.OrderCancelled, ev.OrderExpired, ev.OrderAmended, ev.DeliveryAssigned,
        ev.DeliveryStarted, ev.DeliverySettled, ev.DepositCredited, ev.WithdrawalRequested,
        ev.WithdrawalSettled,
    )
)  # fmt: skip


class Malformed(msgspec.Struct, frozen=True):
    """A record that is not a settleable event: why, and its bytes (kept as a dead letter)."""

    reason: str
    payload: bytes | None


Entry = tuple[int, Any]  # (Kafka offset, event or Malformed)


def decode_record(value: bytes | None) -> list[Any]:
    """Decode one gx.events record into its events, each an event or a Malformed saying what
    is wrong with it (a record that does not decode at all is one Malformed). A bad event of a
    batch record keeps its own bytes; a record that cannot be split keeps the record's."""
    if value is None:
        return [Malformed("record has no value", None)]
    out: list[Any] = []
    bad = False
    for event in decode_event_record(value):
        if isinstance(event, DecodeError):
            out.append(Malformed(f"undecodable event: {event}", None))
            bad = True
            continue
        problem = _out_of_range(event)
        if problem is None:
            out.append(event)
        else:
            out.append(Malformed(problem, None))
            bad = True
    if bad:
        parts = _split_or_none(value)
        if parts is None or len(parts) != len(out):
            parts = [value] * len(out)
        out = [
            Malformed(x.reason, part[:dead_letter_payload_bytes_max]) if type(x) is Malformed else x
            for x, part in zip(out, parts, strict=True)
        ]
    return out


def _split_or_none(value: bytes) -> list[bytes] | None:
    try:
        return split_event_record(value)
    except DecodeError:
        return None


def _out_of_range(event: Any) -> str | None:
    """Name the first field the ledger's columns cannot hold, or return None."""
    if not (0 < event.seq <= _INT64_MAX and 0 <= event.shard <= _INT64_MAX):
        name = type(event).__name__
        return (
            f"{name}: expected 1 <= seq and 0 <= shard (64-bit), found {event.seq}, {event.shard}"
        )
    checks = _FIELD_CHECKS.get(type(event))
    if checks is None:
        return None  # only its shard and seq reach the database
    ints, texts, smallints = checks
    values = ints(event)
    if max(values) > _INT64_MAX or min(values) < _INT64_MIN:
        return _first_bad_field(event)
    if texts is not None and "\x00" in "".join(texts(event)):
        return _first_bad_field(event)
    for value in smallints(event) if smallints is not None else ():
        if not _INT16_MIN <= value <= _INT16_MAX:
            return _first_bad_field(event)
    return None


def _first_bad_field(event: Any) -> str:
    """The slow path of `_out_of_range`: find and describe the offending field."""
    name = type(event).__name__
    for field, value in zip(event.__struct_fields__, msgspec.structs.astuple(event), strict=True):
        if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
            return f"{name}.{field}: expected a 64-bit integer, found {value}"
        if isinstance(value, str) and "\x00" in value:
            return f"{name}.{field}: expected text without NUL characters"
    for field in _SMALLINT_FIELDS.get(type(event), ()):
        value = getattr(event, field)
        if not _INT16_MIN <= value <= _INT16_MAX:
            return f"{name}.{field}: expected a 16-bit code, found {value}"
    raise AssertionError(f"{name}: no field out of range")  # the fast path said there was one


Getter = Callable[[Any], tuple[Any, ...]]


def _getter(names: Sequence[str]) -> Getter | None:
    """`attrgetter` that always returns a tuple (None for no names)."""
    if not names:
        return None
    if len(names) == 1:
        name = names[0]
        return lambda obj: (getattr(obj, name),)
    return operator.attrgetter(*names)


def _field_checks(kind: type) -> tuple[Getter, Getter | None, Getter | None]:
    """Per stored event type: getters of its integer, text and smallint fields."""
    ints, texts = ["seq"], []
    for field in msgspec.structs.fields(kind):
        if field.type is str:
            texts.append(field.name)
        elif isinstance(field.type, type) and issubclass(field.type, int):
            ints.append(field.name)
    smallints = _getter(_SMALLINT_FIELDS.get(kind, ()))
    all_ints = _getter(ints)
    assert all_ints is not None
    return all_ints, _getter(texts), smallints


# Precomputed so that the check costs a few C calls per event, not a loop over its fields.
_FIELD_CHECKS: dict[type, tuple[Getter, Getter | None, Getter | None]] = {
    kind: _field_checks(kind) for kind in _STORED_EVENTS
}
