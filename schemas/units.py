"""Fixed-point units. Money is integer micro-dollars, prices integer ticks, time integer ns.

Nothing in state is a float: decimal strings enter and leave at the gateway through these helpers.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

__all__ = [
    "MICROS_PER_USD",
    "NS_PER_SECOND",
    "NS_PER_MINUTE",
    "NS_PER_HOUR",
    "NS_PER_DAY",
    "BPS_PER_UNIT",
    "UnitError",
    "decimal_to_int",
    "int_to_decimal",
    "usd_to_micros",
    "micros_to_usd",
]

MICROS_PER_USD = 1_000_000
NS_PER_SECOND = 1_000_000_000
NS_PER_MINUTE = 60 * NS_PER_SECOND
NS_PER_HOUR = 60 * NS_PER_MINUTE
NS_PER_DAY = 24 * NS_PER_HOUR
BPS_PER_UNIT = 10_000


class UnitError(ValueError):
    """A decimal string that does not fit the fixed-point unit it is meant for."""


def decimal_to_int(text: str, step: Decimal, field: str) -> int:
    """Convert a decimal string to an integer count of `step`, refusing any remainder."""
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError):
        raise UnitError(f"{field}: expected a decimal string, found {text!r}") from None
    if not value.is_finite():
        raise UnitError(f"{field}: expected a finite decimal, found {text!r}")
    count, remainder = divmod(value, step)
    if remainder != 0:
        raise UnitError(f"{field}: {text} is not a multiple of {step}")
    return int(count)


def int_to_decimal(count: int, step: Decimal) -> str:
    """Format an integer count of `step` as a plain decimal string at the step's precision."""
    exponent = step.as_tuple().exponent
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    return f"{Decimal(count) * step:.{places}f}"


_MICRO = Decimal("0.000001")


def usd_to_micros(text: str) -> int:
    """Parse a USD amount string into integer micro-dollars."""
    return decimal_to_int(text, _MICRO, "amount")


def micros_to_usd(micros: int) -> str:
    """Format integer micro-dollars as a USD decimal string."""
    return int_to_decimal(micros, _MICRO)
