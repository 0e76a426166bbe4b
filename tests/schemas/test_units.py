"""Units: prices and money are exact integers; what is not is refused."""

from __future__ import annotations

from decimal import Decimal

import pytest

from schemas.units import UnitError, decimal_to_int, micros_to_usd, usd_to_micros


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
