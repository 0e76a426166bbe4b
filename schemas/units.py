"""Fixed-point units. Money is integer micro-dollars, prices integer ticks, time integer ns.

Nothing in state is a float: decimal strings enter and leave at the gateway through these helpers.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction

__all__ = [
    "MICROS_PER_USD",
    "NS_PER_SECOND",
    "NS_PER_MINUTE",
    "NS_PER_HOUR",
    "NS_PER_DAY",
    "BPS_PER_UNIT",
    "INT_MAX",
    "DECIMAL_CHARS_MAX",
    "INT_DIGITS_MAX",
    "UnitError",
    "OffStepError",
    "decimal_to_int",
    "digits_to_int",
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


# The largest magnitude an integer from outside may have: the engine's int64 rows take values
# strictly inside int64 (matching/engine.py `_int`), so every boundary refuses beyond this.
INT_MAX = 2**63 - 2
DECIMAL_CHARS_MAX = 40  # of a decimal string, sign and point included
INT_DIGITS_MAX = 19  # of an integer string: INT_MAX has 19 digits

# ASCII digits only ([0-9], never \d, which takes "²", "１" and "٣" too), one optional point
# with a digit on each side, and a sign only where the caller allows one. No exponent, "+",
# spaces, "_", "NaN" or "Infinity", all of which Decimal() or int() would take.
_DECIMAL = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")
_DIGITS = re.compile(f"[0-9]{{1,{INT_DIGITS_MAX}}}")


class UnitError(ValueError):
    """A decimal string that does not fit the fixed-point unit it is meant for."""


class OffStepError(UnitError):
    """A well-formed decimal that is not a whole number of its step (a price off tick)."""


def _echo(text: object) -> str:
    shown = repr(text)
    return shown if len(shown) <= DECIMAL_CHARS_MAX + 2 else shown[:DECIMAL_CHARS_MAX] + "..."


def decimal_to_int(text: str, step: Decimal, field: str, *, negative: bool = False) -> int:
    """Convert a decimal string to an integer count of `step`, refusing anything else.

    Accepted: at most DECIMAL_CHARS_MAX characters of ASCII digits with at most one "." between
    digits, led by "-" only when `negative`; the count must be within +-INT_MAX.
    Raises OffStepError for a remainder, UnitError for anything else (naming the field).
    """
    fits = isinstance(text, str) and len(text) <= DECIMAL_CHARS_MAX
    match = _DECIMAL.fullmatch(text) if fits else None
    if match is None or (match[1] and not negative):
        sign = "an optional leading '-', " if negative else ""
        raise UnitError(
            f"{field}: expected a decimal string of ASCII digits with {sign}at most one '.' "
            f'and at most {DECIMAL_CHARS_MAX} characters (like "12.5"), found {_echo(text)}'
        )
    sign, whole, fraction = match[1], match[2], match[3] or ""
    value = Fraction(int(whole + fraction), 10 ** len(fraction)) / Fraction(step)
    if value.denominator != 1:
        raise OffStepError(f"{field}: {text} is not a multiple of {step}")
    count = -value.numerator if sign else value.numerator
    if not -INT_MAX <= count <= INT_MAX:
        raise UnitError(f"{field}: expected at most {INT_MAX} steps of {step}, found {_echo(text)}")
    return count


def digits_to_int(text: object, field: str) -> int:
    """Convert a string of 1-INT_DIGITS_MAX ASCII digits to an integer 0..INT_MAX.

    Raises UnitError naming the field for anything else (a sign, a point, spaces, "²").
    """
    if not isinstance(text, str) or len(text) > INT_DIGITS_MAX or not _DIGITS.fullmatch(text):
        raise UnitError(
            f"{field}: expected an integer string of 1-{INT_DIGITS_MAX} ASCII digits, "
            f"found {_echo(text)}"
        )
    value = int(text)
    if value > INT_MAX:
        raise UnitError(f"{field}: expected at most {INT_MAX}, found {text}")
    return value


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
