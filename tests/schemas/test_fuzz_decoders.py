"""Fuzz every decoder of `schemas`: a clear error of the module's own type, or a valid result.

Commands, events and market data (msgpack), provisioning messages and the JSON codecs: random
bytes, valid encodings with bytes edited, valid messages with fields edited (a wrong value, a
field dropped, another type's or an unknown field) and input nested past the decoder's recursion
limit. A decoder raises DecodeError or returns a message of its union that re-encodes to itself.
Symbols and decimals: SymbolError or UnitError, or a value in canonical form within int64.
Budgets and the coverage summary: tests/support/fuzz.py.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import codec
from schemas.catalog import load_catalog
from schemas.commands import COMMAND_TYPES
from schemas.events import EVENT_TYPES
from schemas.marketdata import MARKETDATA_TYPES, decode_message, encode_message
from schemas.provisioning import (
    ProvisionConfirmed,
    ProvisionFailed,
    ProvisionRequested,
    access_error,
    decode_provision,
    encode_provision,
    failure_error,
)
from schemas.symbols import InstrumentKey, SymbolError, format_symbol, is_aligned, parse_symbol
from schemas.units import (
    INT_MAX,
    NS_PER_HOUR,
    UnitError,
    decimal_to_int,
    digits_to_int,
    int_to_decimal,
    usd_to_micros,
)
from tests.support.fuzz import (
    BOUNDARY_BUDGET,
    DECODER_BUDGET,
    covered,
    deep_json,
    deep_msgpack,
    json_values,
    mutated_bytes,
    mutated_fields,
    mutated_text,
    structs,
    wire_values,
)

PROVISION_TYPES = (ProvisionRequested, ProvisionConfirmed, ProvisionFailed)
ALL_TYPES = COMMAND_TYPES + EVENT_TYPES + MARKETDATA_TYPES + PROVISION_TYPES


def _names(types: tuple[type[msgspec.Struct], ...]) -> list[str]:
    """Every field name of every type: what a field edit may add ("type" included)."""
    return sorted({"type", *(f for t in types for f in t.__struct_fields__)})


NAMES = _names(ALL_TYPES)
TAGS = sorted(t.__struct_config__.tag for t in ALL_TYPES)  # type: ignore[attr-defined]


def _with_tags(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(TAGS), values)  # another type's tag is a likely confusion


class Codec:
    """One decoder under fuzz: how to decode and encode, and which types it may return."""

    def __init__(
        self,
        name: str,
        decode: Callable[[bytes], Any],
        encode: Callable[[Any], bytes],
        types: tuple[type[msgspec.Struct], ...],
        *,
        json: bool,
    ) -> None:
        self.name = name
        self.decode = decode
        self.encode = encode
        self.types = types
        self.json = json

    def __repr__(self) -> str:
        return self.name

    def values(self) -> st.SearchStrategy[Any]:
        return _with_tags(json_values() if self.json else wire_values())

    def builtins_encode(self, obj: Any) -> bytes:
        return msgspec.json.encode(obj) if self.json else msgspec.msgpack.encode(obj)

    @functools.cache  # noqa: B019 (a few Codecs, alive for the session)
    def valid(self) -> st.SearchStrategy[Any]:
        return structs(*self.types)

    @functools.cache  # noqa: B019
    def inputs(self, kind: str) -> st.SearchStrategy[bytes]:
        """Input of one kind for this decoder."""
        valid = self.valid()
        if kind == "random":
            return st.one_of(st.binary(max_size=200), st.text(max_size=100).map(str.encode))
        if kind == "mutated bytes":
            return mutated_bytes(valid.map(self.encode))
        if kind == "mutated fields":
            base = valid.map(msgspec.to_builtins)
            return mutated_fields(base, self.values(), NAMES).map(self.builtins_encode)
        assert kind == "deep"
        return st.tuples(valid, st.sampled_from(NAMES), st.booleans()).flatmap(self._deep)

    def _deep(self, case: tuple[Any, str, bool]) -> st.SearchStrategy[bytes]:
        """A valid message whose field `name` (or, `top`, the whole input) nests deep."""
        message, name, top = case
        if top:
            return deep_json() if self.json else deep_msgpack()
        obj = msgspec.to_builtins(message)  # the tag first, as the encoder writes it
        obj.pop(name, None)
        obj[name] = None  # last, so that the nesting can take the place of its None
        head = self.builtins_encode(obj)
        if self.json:
            head = head.removesuffix(b"null}")
            return deep_json().map(lambda nest: head + nest + b"}")
        head = head.removesuffix(b"\xc0")
        return deep_msgpack().map(lambda nest: head + nest)


CODECS = [
    Codec("codec.decode_command", codec.decode_command, codec.encode, COMMAND_TYPES, json=False),
    Codec("codec.decode_event", codec.decode_event, codec.encode, EVENT_TYPES, json=False),
    Codec(
        "codec.decode_command_json",
        codec.decode_command_json,
        codec.encode_json,
        COMMAND_TYPES,
        json=True,
    ),
    Codec(
        "codec.decode_event_json",
        codec.decode_event_json,
        codec.encode_json,
        EVENT_TYPES,
        json=True,
    ),
    Codec(
        "marketdata.decode_message", decode_message, encode_message, MARKETDATA_TYPES, json=False
    ),
    Codec(
        "provisioning.decode_provision",
        decode_provision,
        encode_provision,
        PROVISION_TYPES,
        json=True,
    ),
]
KINDS = ["random", "mutated bytes", "mutated fields", "deep"]


def check_decoded(target: str, kind: str, decoder: Codec, data: bytes) -> Any:
    """Decode `data`: DecodeError naming what broke, or a message that re-encodes to itself."""
    try:
        value = decoder.decode(data)
    except codec.DecodeError as error:
        assert str(error), "a refusal says what broke"
        covered(target, f"{kind}: refused")
        return None
    assert isinstance(value, decoder.types), type(value)
    assert decoder.decode(decoder.encode(value)) == value
    covered(target, f"{kind}: {type(value).__name__}")
    return value


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("decoder", CODECS, ids=repr)
@DECODER_BUDGET
@given(data=st.data())
def test_decoder_refuses_with_decode_error_or_returns_a_valid_message(decoder, kind, data):
    raw = data.draw(decoder.inputs(kind), label="input")
    value = check_decoded(decoder.name, kind, decoder, raw)
    if isinstance(value, ProvisionConfirmed) and value.access is not None:
        assert access_error(value.access) is None or isinstance(access_error(value.access), str)
    if isinstance(value, ProvisionFailed):
        hours = data.draw(st.integers(-1, 10_000), label="hours")
        assert failure_error(value, hours) is None or isinstance(failure_error(value, hours), str)


@pytest.mark.parametrize("decoder", CODECS, ids=repr)
@DECODER_BUDGET
@given(data=st.data())
def test_every_valid_message_round_trips(decoder, data):
    message = data.draw(decoder.valid(), label="message")
    assert decoder.decode(decoder.encode(message)) == message
    covered(decoder.name, f"valid: {type(message).__name__}")


# ---------------------------------------------------------------------- symbols

CATALOG = load_catalog()
_HOURS_MAX = (INT_MAX - 168 * NS_PER_HOUR) // NS_PER_HOUR  # the last start whose window fits
_WEEK_OFFSET_HOURS = 4 * 24  # 1970-01-05, the first Monday


@st.composite
def instrument_keys(draw: st.DrawFn) -> InstrumentKey:
    """A key with a delivery start on its product's grid, within int64 nanoseconds."""
    name = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,15}", fullmatch=True)
    gpu = draw(st.one_of(st.sampled_from([g.model for g in CATALOG.gpus]), name))
    region = draw(st.one_of(st.sampled_from(list(CATALOG.regions)), name))
    product = draw(st.sampled_from(["1h", "1d", "1w"]))
    step = {"1h": 1, "1d": 24, "1w": 168}[product]
    offset = _WEEK_OFFSET_HOURS if product == "1w" else 0
    count = draw(st.integers(0, (_HOURS_MAX - offset) // step))
    start_ns = (offset + count * step) * NS_PER_HOUR
    return InstrumentKey(gpu=gpu, region=region, product=product, start_ns=start_ns)


SYMBOLS = instrument_keys().map(format_symbol)
SYMBOL_INPUTS = {
    "random": st.text(max_size=60),
    "mutated": mutated_text(SYMBOLS),
    "out of range": st.tuples(
        SYMBOLS, st.sampled_from(["0001", "1969", "2263", "9999", "10000", "0000"])
    ).map(lambda case: case[0].replace(case[0].split(".")[3][:4], case[1], 1)),
}


@pytest.mark.parametrize("kind", sorted(SYMBOL_INPUTS))
@BOUNDARY_BUDGET
@given(data=st.data())
def test_parse_symbol_refuses_or_parses_a_canonical_symbol_within_int64(kind, data):
    symbol = data.draw(SYMBOL_INPUTS[kind], label="symbol")
    try:
        key = parse_symbol(symbol)
    except SymbolError as error:
        assert str(error)
        covered("symbols.parse_symbol", f"{kind}: refused")
        return
    # One spelling per instrument: "2026-1-1T1", "２０２６" or a lower-case "t" are not names.
    assert format_symbol(key) == symbol
    assert 0 <= key.start_ns < key.end_ns <= INT_MAX
    assert is_aligned(key.product, key.start_ns)
    covered("symbols.parse_symbol", f"{kind}: {key.product}")


@BOUNDARY_BUDGET
@given(key=instrument_keys())
def test_every_instrument_key_within_int64_round_trips_through_its_symbol(key):
    assert parse_symbol(format_symbol(key)) == key
    covered("symbols.parse_symbol", f"valid: {key.product}")


# ---------------------------------------------------------------------- decimals and integers

STEPS = [Decimal(1), Decimal("0.001"), Decimal("0.000001")]
NUMBERS = st.one_of(
    st.text(alphabet="0123456789.-+eE_ ²１٣", max_size=45),
    st.from_regex(r"-?[0-9]{1,25}(\.[0-9]{1,20})?", fullmatch=True),
    mutated_text(st.from_regex(r"[0-9]{1,19}(\.[0-9]{1,6})?", fullmatch=True)),
    st.text(max_size=45),
    json_values(),  # not a string at all: an int, a float, None, a list
)


@BOUNDARY_BUDGET
@given(text=NUMBERS, step=st.sampled_from(STEPS), negative=st.booleans())
def test_decimal_to_int_refuses_with_unit_error_or_counts_within_int_max(text, step, negative):
    try:
        count = decimal_to_int(text, step, "price", negative=negative)
    except UnitError as error:
        assert str(error).startswith("price")  # names the field
        covered("units.decimal_to_int", "refused")
        return
    assert isinstance(text, str) and -INT_MAX <= count <= INT_MAX
    assert negative or count >= 0
    assert decimal_to_int(int_to_decimal(count, step), step, "price", negative=True) == count
    covered("units.decimal_to_int", "counted")


@BOUNDARY_BUDGET
@given(text=NUMBERS)
def test_usd_and_digits_refuse_with_unit_error_or_stay_within_int_max(text):
    for target, parse in (("units.usd_to_micros", usd_to_micros), ("units.digits_to_int", None)):
        try:
            value = usd_to_micros(text) if parse else digits_to_int(text, "ts_ns")
        except UnitError as error:
            assert str(error)
            covered(target, "refused")
            continue
        assert isinstance(text, str) and 0 <= value <= INT_MAX
        covered(target, "parsed")
