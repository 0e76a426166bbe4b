"""Instrument symbols: `GPU.REGION.PRODUCT.DELIVERY`, e.g. `H100-SXM.us-east.1h.2026-12-01T14`.

Hourly products name their hour (`2026-12-01T14`), day blocks their date (`2026-12-01`), week blocks
the Monday they start (`2026-11-30`). All times are UTC.

Each instrument has one spelling: `parse_symbol` takes only the canonical one, as
`format_symbol` writes it (ASCII digits, zero-padded, upper-case `T`), with a GPU model and a
region of `[A-Za-z0-9_-]` (`SYMBOL_NAME_CHARS_MAX` at most, starting with a letter or digit) and a
delivery window within int64 nanoseconds (1970 to 2262), so a name never holds a space, a newline
or another script's digits, and `start_ns` fits the engine's rows.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import lru_cache

import msgspec

from schemas.units import INT_MAX, NS_PER_DAY, NS_PER_HOUR, NS_PER_SECOND

__all__ = [
    "SYMBOL_NAME_CHARS_MAX",
    "InstrumentKey",
    "SymbolError",
    "parse_symbol",
    "format_symbol",
    "product_hours",
    "is_symbol_name",
]

SYMBOL_NAME_CHARS_MAX = 32  # of a GPU model or a region
# Always fullmatch ("$" would take a trailing newline); [0-9], never \d (it takes "٣" and "２").
_NAME = re.compile(f"[A-Za-z0-9][A-Za-z0-9_-]{{0,{SYMBOL_NAME_CHARS_MAX - 1}}}")
_STAMP = {
    "1h": re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}"),
    "1d": re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
    "1w": re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"),
}

_HOURS = {"1h": 1, "1d": 24, "1w": 168}
# 1970-01-01 was a Thursday: Monday-aligned weeks start 3 days later.
_WEEK_OFFSET_NS = 4 * NS_PER_DAY


class SymbolError(ValueError):
    """A symbol that does not name an instrument."""


class InstrumentKey(msgspec.Struct, frozen=True, kw_only=True):
    """What an instrument is: GPU model, region, product and delivery start."""

    gpu: str
    region: str
    product: str
    start_ns: int

    @property
    def hours(self) -> int:
        """Return the length of the delivery window in hours."""
        return _HOURS[self.product]

    @property
    def end_ns(self) -> int:
        """Return the end of the delivery window (exclusive)."""
        return self.start_ns + self.hours * NS_PER_HOUR

    @property
    def symbol(self) -> str:
        """Return the canonical symbol."""
        return format_symbol(self)


def is_symbol_name(name: object) -> bool:
    """Whether `name` may be the GPU model or the region of a symbol."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def product_hours(product: str) -> int:
    """Return the hours of delivery of a product code."""
    try:
        return _HOURS[product]
    except KeyError:
        raise SymbolError(f"product: expected one of 1h, 1d, 1w, found {product!r}") from None


def is_aligned(product: str, start_ns: int) -> bool:
    """Tell whether a delivery start lies on the product's grid."""
    if product == "1h":
        return start_ns % NS_PER_HOUR == 0
    if product == "1d":
        return start_ns % NS_PER_DAY == 0
    return (start_ns - _WEEK_OFFSET_NS) % (7 * NS_PER_DAY) == 0


def format_symbol(key: InstrumentKey) -> str:
    """Format an instrument key as its symbol."""
    when = datetime.fromtimestamp(key.start_ns // NS_PER_SECOND, tz=UTC)
    stamp = when.strftime("%Y-%m-%dT%H") if key.product == "1h" else when.strftime("%Y-%m-%d")
    return f"{key.gpu}.{key.region}.{key.product}.{stamp}"


@lru_cache(maxsize=8192)  # pure, and the same few symbols arrive again and again
def parse_symbol(symbol: str) -> InstrumentKey:
    """Parse a canonical symbol, checking that its delivery start lies on the product's grid.

    Raises SymbolError naming the part that is wrong, for anything `format_symbol` would not
    have written.
    """
    parts = symbol.split(".") if isinstance(symbol, str) else []
    if len(parts) != 4 or not all(parts):
        raise SymbolError(f"symbol: expected GPU.REGION.PRODUCT.DELIVERY, found {symbol!r:.80}")
    gpu, region, product, stamp = parts
    for part, name in (("GPU", gpu), ("region", region)):
        if not is_symbol_name(name):
            raise SymbolError(
                f"symbol {symbol!r:.80}: the {part} must be 1-{SYMBOL_NAME_CHARS_MAX} characters "
                "of [A-Za-z0-9_-], starting with a letter or digit"
            )
    product_hours(product)
    layout = "%Y-%m-%dT%H" if product == "1h" else "%Y-%m-%d"
    try:
        if not _STAMP[product].fullmatch(stamp):
            raise ValueError(stamp)
        when = datetime.strptime(stamp, layout).replace(tzinfo=UTC)
    except ValueError:
        shown = "YYYY-MM-DDTHH" if product == "1h" else "YYYY-MM-DD"
        raise SymbolError(f"symbol {symbol!r:.80}: delivery must look like {shown}") from None
    start_ns = int(when.timestamp()) * NS_PER_SECOND
    if not 0 <= start_ns <= INT_MAX - _HOURS[product] * NS_PER_HOUR:
        raise SymbolError(
            f"symbol {symbol!r:.80}: the delivery window must lie within int64 nanoseconds "
            "(1970 to 2262)"
        )
    if not is_aligned(product, start_ns):
        raise SymbolError(f"symbol {symbol!r:.80}: a week block starts on a Monday")
    return InstrumentKey(gpu=gpu, region=region, product=product, start_ns=start_ns)
