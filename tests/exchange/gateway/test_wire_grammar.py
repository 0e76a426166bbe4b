"""The wire's number grammar: each pattern the OpenAPI document shows admits exactly what the
gateway's parser accepts, checked against a slow, obviously-correct reference."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.gateway.statements import DATE_TIME_PATTERN, parse_time_ns
from exchange.wire import (
    INT64_MAX,
    NS_PATTERN,
    Prices,
    WireError,
    int_from_str,
    int_pattern,
    positive_decimal_pattern,
    qty_from_str,
)

# Decimal strings near the edges: signs, exponents, spaces, leading zeros, many places.
_decimal_text = st.one_of(
    st.from_regex(r"\A[+-]?[0-9]{0,12}(\.[0-9]{0,8})?\Z"),
    st.sampled_from(["0", "00.1", "1.", ".5", "1e3", " 1", "1\n", "NaN", "0.000", "2.4000"]),
    st.text(max_size=12),
)


def _reference_positive_decimal(text: str, decimals: int, int_digits: int) -> bool:
    """Canonical decimal > 0: digits, an optional point with 1..decimals places, no leading 0."""
    whole, dot, fraction = text.partition(".")
    if not whole or not all(c in "0123456789" for c in whole + fraction):
        return False
    if (dot and not 1 <= len(fraction) <= decimals) or len(whole) > int_digits:
        return False
    if len(whole) > 1 and whole[0] == "0":
        return False
    try:
        return Decimal(text) > 0
    except InvalidOperation:
        return False


@pytest.mark.parametrize("max_value", [0, 1, 9, 10, 99, 100, 32_767, 1_000_000, INT64_MAX])
@given(n=st.integers(min_value=0, max_value=2**64))
@settings(max_examples=200, deadline=None)
def test_int_pattern_admits_exactly_zero_to_max(max_value: int, n: int) -> None:
    pattern = re.compile(int_pattern(max_value))
    assert (pattern.fullmatch(str(n)) is not None) == (n <= max_value)
    assert pattern.fullmatch("0" + str(n)) is None  # no leading zeros


@pytest.mark.parametrize(("decimals", "int_digits"), [(0, 9), (3, 9), (6, 12)])
@given(text=_decimal_text)
@settings(max_examples=300, deadline=None)
def test_positive_decimal_pattern_is_the_canonical_grammar(
    decimals: int, int_digits: int, text: str
) -> None:
    found = re.fullmatch(positive_decimal_pattern(decimals, int_digits), text) is not None
    assert found == _reference_positive_decimal(text, decimals, int_digits), text


@given(text=_decimal_text)
@settings(max_examples=300, deadline=None)
def test_a_price_is_accepted_exactly_when_it_fits_the_documented_pattern(text: str) -> None:
    prices = Prices(1_000)  # tick 0.001
    fits = re.fullmatch(prices.pattern, text) is not None
    try:
        prices.from_str(text)
        accepted = True
    except WireError as error:
        accepted = False
        assert error.status == 400
    assert accepted == fits, text


@given(text=_decimal_text)
@settings(max_examples=300, deadline=None)
def test_qty_and_ns_are_accepted_exactly_when_they_fit(text: str) -> None:
    for parse, pattern in (
        (qty_from_str, positive_decimal_pattern(0, 9)),
        (int_from_str, NS_PATTERN),
    ):
        fits = re.fullmatch(pattern, text) is not None
        try:
            parse(text, "field")
            accepted = True
        except WireError:
            accepted = False
        assert accepted == fits, (parse.__name__, text)


def test_off_tick_keeps_its_code_and_a_trailing_newline_is_refused() -> None:
    with pytest.raises(WireError) as caught:
        Prices(1_000).from_str("2.0005")
    assert caught.value.code == "PRICE_OFF_TICK"
    for text in ("2.400\n", "5\n"):
        with pytest.raises(WireError):
            Prices(1_000).from_str(text)
        with pytest.raises(WireError):
            qty_from_str(text)


def test_times_are_nanoseconds_or_rfc3339_and_clamped_to_the_ledger() -> None:
    assert parse_time_ns("", "from", 7) == 7
    assert parse_time_ns("2026-01-01", "from", 0) == 1_767_225_600_000_000_000
    assert parse_time_ns("2026-01-01T00:00:00Z", "from", 0) == 1_767_225_600_000_000_000
    assert parse_time_ns("0001-01-01", "from", 5) == 0  # before the epoch: the ledger's start
    assert parse_time_ns("9999-12-31T23:59:59-23:59", "to", 0) == INT64_MAX
    assert re.fullmatch(DATE_TIME_PATTERN, "2026-01-01T00:00:00") is None  # RFC 3339: an offset
    for text in ("yesterday", "2026-02-30", "2026-01-01T00:00:00", "01", "٣"):
        with pytest.raises(WireError):
            parse_time_ns(text, "from", 0)
