"""Units: prices and money are exact integers; what is not is refused, and so is loose syntax."""

from __future__ import annotations

from decimal import Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.units import (
    DECIMAL_CHARS_MAX,
    INT_MAX,
    OffStepError,
    UnitError,
    decimal_to_int,
    digits_to_int,
    micros_to_usd,
    usd_to_micros,
)


def test_prices_and_money_are_exact_integers():
    assert decimal_to_int("2.451", Decimal("0.001"), "price") == 2451
    assert usd_to_micros("12.345678") == 12_345_678
    assert micros_to_usd(12_345_678) == "12.345678"
    with pytest.raises(UnitError, match="not a multiple"):
        decimal_to_int("2.4515", Decimal("0.001"), "price")
    with pytest.raises(UnitError, match="decimal"):
        decimal_to_int("two", Decimal("0.001"), "price")
    with pytest.raises(UnitError):
        decimal_to_int("NaN", Decimal("0.001"), "price")


LOOSE = ["1e28", "9" * 100, "1E+999999", "1e20", "１２", "1_000", "+5", " 5 ", "5\n", "٣", "²"]
LOOSE += ["5.", ".5", "1..0", "1.2.3", "", "-", "--1", "Infinity", "NaN", "0x10", "1,5", "5 "]


@pytest.mark.parametrize("text", LOOSE)
def test_decimals_are_ascii_digits_with_one_point_and_nothing_else(text):
    for step in (Decimal(1), Decimal("0.001"), Decimal("0.000001")):
        with pytest.raises(UnitError, match="expected a decimal string of ASCII digits"):
            decimal_to_int(text, step, "qty")
        with pytest.raises(UnitError):
            decimal_to_int(text, step, "qty", negative=True)
    with pytest.raises(UnitError, match="expected an integer string of 1-19 ASCII digits"):
        digits_to_int(text, "start_ns")


def test_a_sign_only_where_negatives_mean_something_and_every_count_within_int_max():
    assert decimal_to_int("-2.5", Decimal("0.001"), "price", negative=True) == -2500
    with pytest.raises(UnitError, match="expected a decimal string"):
        decimal_to_int("-2.5", Decimal("0.001"), "price")
    assert decimal_to_int(str(INT_MAX), Decimal(1), "qty") == INT_MAX
    with pytest.raises(UnitError, match="expected at most"):
        decimal_to_int(str(INT_MAX + 1), Decimal(1), "qty")
    with pytest.raises(UnitError, match="expected at most"):
        decimal_to_int(f"-{INT_MAX + 1}", Decimal(1), "qty", negative=True)
    with pytest.raises(UnitError, match="expected at most"):
        decimal_to_int("9" * 19 + ".5", Decimal("0.1"), "qty")  # 40 characters, too many steps
    assert digits_to_int(str(INT_MAX), "ts_ns") == INT_MAX
    with pytest.raises(UnitError, match="expected at most"):
        digits_to_int(str(INT_MAX + 1), "ts_ns")
    with pytest.raises(UnitError, match="expected a decimal string"):
        decimal_to_int("1" * (DECIMAL_CHARS_MAX + 1), Decimal(1), "qty")


def test_off_step_is_its_own_error():
    with pytest.raises(OffStepError):
        decimal_to_int("2.4515", Decimal("0.001"), "price")
    assert decimal_to_int("2.4510000", Decimal("0.001"), "price") == 2451


def _reference(text: str, step: Decimal) -> int | None:
    """The obviously-correct parse: the grammar by hand, the value by Decimal at ample precision."""
    parts = (text[1:] if text.startswith("-") else text).split(".")
    digits = all(part and set(part) <= set("0123456789") for part in parts)
    if len(text) > DECIMAL_CHARS_MAX or len(parts) > 2 or not digits:
        return None
    with localcontext() as context:
        context.prec = 200
        count, remainder = divmod(Decimal(text), step)
    if remainder != 0 or abs(count) > INT_MAX:
        return None
    return int(count)


_NUMERIC = st.text(alphabet="0123456789.-+eE_ ²１٣", max_size=45)


@settings(max_examples=500, deadline=None)
@given(
    text=st.one_of(
        _NUMERIC,
        st.text(max_size=45),
        st.from_regex(r"-?[0-9]{1,25}(\.[0-9]{1,20})?", fullmatch=True),
    )
)
def test_decimal_to_int_is_the_reference_or_a_unit_error(text):
    for step in (Decimal(1), Decimal("0.001"), Decimal("0.000001")):
        try:
            got: int | None = decimal_to_int(text, step, "x", negative=True)
        except UnitError:
            got = None
        assert got == _reference(text, step), (text, step)
        if got is not None:
            assert -INT_MAX <= got <= INT_MAX


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(_NUMERIC, st.text(max_size=25), st.integers(0, 2**64).map(str)))
def test_digits_to_int_is_int_of_ascii_digits_or_a_unit_error(text):
    try:
        got: int | None = digits_to_int(text, "x")
    except UnitError:
        got = None
    fits = 0 < len(text) <= 19 and set(text) <= set("0123456789") and int(text) <= INT_MAX
    assert got == (int(text) if fits else None)
