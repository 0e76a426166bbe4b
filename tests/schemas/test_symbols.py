"""Symbols: a contract's name round-trips and a bad one is refused with the reason."""

from __future__ import annotations

import pytest

from schemas.symbols import SymbolError, format_symbol, parse_symbol


@pytest.mark.parametrize(
    "symbol",
    [
        "H100-SXM.us-east.1h.2026-12-01T14",
        "H100-SXM.us-east.1d.2026-12-01",
        "B200.eu-west.1w.2026-11-30",
    ],
)
def test_symbol_round_trips(symbol):
    assert format_symbol(parse_symbol(symbol)) == symbol


def test_hourly_symbol_names_its_start():
    key = parse_symbol("H100-SXM.us-east.1h.2026-12-01T14")
    assert key.start_ns == 1_796_133_600_000_000_000
    assert key.hours == 1 and key.end_ns - key.start_ns == 3_600_000_000_000


@pytest.mark.parametrize(
    "bad",
    [
        "H100-SXM.us-east.2h.2026-12-01T14",  # unknown product
        "H100-SXM.us-east.1w.2026-12-01",  # a Tuesday
        "H100-SXM.us-east.1h.2026-12-01",  # hour missing
        "H100-SXM.1h.2026-12-01T14",  # region missing
        "",
        # one spelling per instrument (found by tests/schemas/test_fuzz_decoders.py)
        "H100-SXM.us-east.1h.2026-1-1T1",  # not zero-padded
        "H100-SXM.us-east.1h.2026-12-01t14",  # lower-case t
        "H100-SXM.us-east.1h.２０２６-12-01T14",  # another script's digits
        "H100-SXM.us-east.1d.2026-12- 1",  # a space-padded day
        "H100 SXM.us-east.1h.2026-12-01T14",  # a space in the model
        "H100-SXM.us-east\n.1h.2026-12-01T14",  # a newline in the region
        # the window within int64 nanoseconds
        "H100-SXM.us-east.1h.1969-12-31T23",
        "H100-SXM.us-east.1h.0001-01-01T00",
        "H100-SXM.us-east.1d.9999-12-31",
    ],
)
def test_bad_symbols_are_refused_with_the_reason(bad):
    with pytest.raises(SymbolError):
        parse_symbol(bad)
