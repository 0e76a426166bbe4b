"""Schemas: symbols, units, catalog limits and the codecs."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest

from schemas import codec
from schemas import commands as c
from schemas import events as e
from schemas.catalog import CatalogError, load_catalog, parse_catalog
from schemas.symbols import SymbolError, format_symbol, parse_symbol
from schemas.units import UnitError, decimal_to_int, micros_to_usd, usd_to_micros


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
    ],
)
def test_bad_symbols_are_refused_with_the_reason(bad):
    with pytest.raises(SymbolError):
        parse_symbol(bad)


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


def test_packaged_catalog_is_in_integer_units():
    cat = load_catalog()
    assert cat.tick_micros == 1000
    assert cat.price_band_max_ticks == 100_000
    assert {p.code for p in cat.products} == {"1h", "1d", "1w"}


def test_catalog_refuses_limits_that_overflow_fee_arithmetic():
    import json
    from importlib import resources

    raw = json.loads(resources.files("schemas").joinpath("catalog.json").read_text())
    raw["lots_max"] = 1_000_000
    raw["price_band_max_usd"] = "100000.000"
    with pytest.raises(CatalogError, match="overflows"):
        parse_catalog(raw)


def test_commands_and_events_round_trip_through_both_codecs():
    place = c.PlaceOrder(account=10, symbol="x", side="buy", lots=2, price_ticks=2400)
    assert codec.decode_command(codec.encode(place)) == place
    assert codec.decode_command_json(codec.encode_json(place)) == place
    trade = e.TradeExecuted(
        trade_id=1,
        symbol="x",
        price_ticks=2400,
        lots=2,
        aggressor_side="buy",
        maker_order_id=1,
        taker_order_id=2,
        maker_account=10,
        taker_account=11,
        maker_fee_micros=1,
        taker_fee_micros=2,
        seq=5,
    )
    assert codec.decode_event(codec.encode(trade)) == trade


def test_malformed_input_names_the_field():
    with pytest.raises(codec.DecodeError, match="lots"):
        codec.decode_command_json(b'{"type":"PlaceOrder","account":1,"symbol":"x","side":"buy"}')
    with pytest.raises(codec.DecodeError, match="side"):
        codec.decode_command_json(
            b'{"type":"PlaceOrder","account":1,"symbol":"x","side":"up","lots":1}'
        )
    with pytest.raises(codec.DecodeError):
        codec.decode_command(b"\xc1garbage")


def test_old_logs_decode_when_fields_are_added():
    # Every field added after the first release has a default: a minimal message still decodes.
    minimal = msgspec.json.encode({"type": "ClockTick", "ts_ns": 5})
    assert codec.decode_command_json(minimal) == c.ClockTick(ts_ns=5)
