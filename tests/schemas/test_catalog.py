"""The catalog: the packaged one is in integer units; limits that could overflow are refused."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from schemas.catalog import CatalogError, load_catalog, parse_catalog


def test_packaged_catalog_is_in_integer_units():
    cat = load_catalog()
    assert cat.tick_micros == 1000
    assert cat.price_band_max_ticks == 100_000
    assert {p.code for p in cat.products} == {"1h", "1d", "1w"}


def test_catalog_refuses_limits_that_overflow_fee_arithmetic():
    raw = json.loads(resources.files("schemas").joinpath("catalog.json").read_text())
    raw["lots_max"] = 1_000_000
    raw["price_band_max_usd"] = "100000.000"
    with pytest.raises(CatalogError, match="overflows"):
        parse_catalog(raw)


@pytest.mark.parametrize("name", ["mars base", "us-east\n", "", "-west", "a" * 33, "ｕｓ"])
def test_catalog_refuses_a_region_or_model_no_symbol_could_name(name):
    raw = json.loads(resources.files("schemas").joinpath("catalog.json").read_text())
    raw["regions"].append(name)
    with pytest.raises(CatalogError, match="GPU model or region"):
        parse_catalog(raw)
    raw["regions"].pop()
    raw["gpus"][0]["model"] = name
    with pytest.raises(CatalogError, match="GPU model or region"):
        parse_catalog(raw)
