"""The wire's number parsers: a valid integer within bounds, or a WireError with a stable code,
whatever the text; never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.wire import ErrorCode, Prices, WireError, int_from_str, qty_from_str
from schemas.units import INT_MAX

LOOSE = ["1e28", "9" * 100, "1E+999999", "1e20", "１２", "1_000", "+5", " 5 ", "5\n", "٣", "²"]
prices = Prices(1000)  # tick 0.001 USD


@pytest.mark.parametrize("text", LOOSE)
def test_loose_or_huge_numbers_are_refused_with_the_fields_code(text):
    with pytest.raises(WireError) as qty:
        qty_from_str(text)
    assert qty.value.code == ErrorCode.QTY_INVALID and qty.value.msg.startswith("qty: ")
    with pytest.raises(WireError) as price:
        prices.from_str(text)
    assert price.value.code == ErrorCode.BAD_REQUEST and price.value.msg.startswith("price: ")
    with pytest.raises(WireError) as ns:
        int_from_str(text, "expire_ns")
    assert ns.value.code == ErrorCode.BAD_REQUEST and ns.value.msg.startswith("expire_ns: ")


def test_well_formed_numbers_parse_exactly():
    assert qty_from_str("5") == 5
    assert prices.from_str("2.400") == 2400 and prices.from_str("2.4") == 2400
    assert int_from_str("1796072400000000000", "start_ns") == 1_796_072_400_000_000_000
    with pytest.raises(WireError) as off:
        prices.from_str("2.4005")
    assert off.value.code == ErrorCode.PRICE_OFF_TICK
    for refused in ("0", "-1", "1.5", "5.0", "05"):  # the document's grammar: QTY_PATTERN
        with pytest.raises(WireError) as error:
            qty_from_str(refused)
        assert error.value.code == ErrorCode.QTY_INVALID


_TEXT = st.one_of(
    st.text(alphabet="0123456789.-+eE_ \n²１٣", max_size=45),
    st.text(max_size=45),
    st.integers(-(2**70), 2**70).map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
)


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(_TEXT, st.integers(), st.none(), st.floats()))
def test_parsers_answer_an_int_in_bounds_or_a_stable_code(text):
    cases = (
        (qty_from_str, {ErrorCode.QTY_INVALID, ErrorCode.BAD_REQUEST}, 1),
        (prices.from_str, {ErrorCode.BAD_REQUEST, ErrorCode.PRICE_OFF_TICK}, 1),
        (lambda t: int_from_str(t, "ts_ns"), {ErrorCode.BAD_REQUEST}, 0),
    )
    for parse, codes, least in cases:
        try:
            value = parse(text)
        except WireError as error:
            assert error.code in codes, (parse, text, error.code)
            assert error.status == 400
            continue
        assert isinstance(value, int) and least <= value <= INT_MAX, (parse, text, value)
        assert isinstance(text, str) and text.isascii() and text.strip() == text
