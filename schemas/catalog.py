"""The catalog: what is listed (GPU models, regions, products) and the rules of trading it.

The catalog file ships with the package (`catalog.json`); `load_catalog()` reads it once and turns
every decimal into the integer unit the engine works in.
"""

from __future__ import annotations

import json
from decimal import Decimal
from importlib import resources
from pathlib import Path

import msgspec

from schemas.symbols import SYMBOL_NAME_CHARS_MAX, is_symbol_name
from schemas.units import MICROS_PER_USD, NS_PER_SECOND, decimal_to_int, usd_to_micros

__all__ = ["GpuModel", "Product", "Catalog", "CatalogError", "load_catalog"]

# Hours in the longest product: bounds every notional so int64 arithmetic cannot overflow.
_HOURS_MAX = 168
_INT64_MAX = 2**63 - 1


class CatalogError(ValueError):
    """The catalog file is inconsistent; the message names the field."""


class GpuModel(msgspec.Struct, frozen=True, kw_only=True):
    """A GPU model that can be traded, with what a buyer needs to know about the machine."""

    model: str
    memory_gb: int
    interconnect: str
    reference_price_ticks: int


class Product(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery product: `1h` hourly, `1d` day block (00-24 UTC), `1w` week block (Monday)."""

    code: str
    hours: int
    listing_horizon_hours: int


class Catalog(msgspec.Struct, frozen=True, kw_only=True):
    """Everything listed and every trading rule, in integer units."""

    tick_micros: int
    regions: tuple[str, ...]
    gpus: tuple[GpuModel, ...]
    products: tuple[Product, ...]
    lots_max: int
    price_band_min_ticks: int
    price_band_max_ticks: int
    market_protection_bps: int
    gate_closure_lead_ns: int
    maker_fee_bps: int
    taker_fee_bps: int
    penalty_per_gpu_hour_micros: int
    provisioning_deadline_ns: int

    @property
    def tick_decimal(self) -> Decimal:
        """Return the tick as a USD decimal (0.001)."""
        return Decimal(self.tick_micros) / MICROS_PER_USD

    def gpu_index(self, model: str) -> int:
        """Return the position of a GPU model, or raise KeyError."""
        for index, gpu in enumerate(self.gpus):
            if gpu.model == model:
                return index
        raise KeyError(model)

    def region_index(self, region: str) -> int:
        """Return the position of a region, or raise KeyError."""
        return self.regions.index(region)

    def product(self, code: str) -> Product:
        """Return the product with this code, or raise KeyError."""
        for product in self.products:
            if product.code == code:
                return product
        raise KeyError(code)

    def product_index(self, code: str) -> int:
        """Return the position of a product code, or raise KeyError."""
        return self.products.index(self.product(code))


class _GpuFile(msgspec.Struct, frozen=True):
    model: str
    memory_gb: int
    interconnect: str
    reference_price_usd: str


class _CatalogFile(msgspec.Struct, frozen=True):
    """The catalog file as written: decimals as strings, durations in seconds."""

    tick_usd: str
    regions: list[str]
    gpus: list[_GpuFile]
    products: list[Product]
    lots_max: int
    price_band_min_usd: str
    price_band_max_usd: str
    market_protection_bps: int
    gate_closure_lead_s: int
    maker_fee_bps: int
    taker_fee_bps: int
    penalty_per_gpu_hour_usd: str
    provisioning_deadline_s: int


def _ticks(text: str, tick_micros: int, field: str) -> int:
    return decimal_to_int(text, Decimal(tick_micros) / MICROS_PER_USD, field)


def parse_catalog(raw: object) -> Catalog:
    """Build a Catalog from the decoded catalog file, checking every limit."""
    try:
        f = msgspec.convert(raw, _CatalogFile)
    except msgspec.ValidationError as error:
        raise CatalogError(f"catalog file: {error}") from None
    tick_micros = usd_to_micros(f.tick_usd)
    if tick_micros <= 0:
        raise CatalogError(f"tick_usd: expected a positive amount, found {f.tick_usd}")
    catalog = Catalog(
        tick_micros=tick_micros,
        regions=tuple(f.regions),
        gpus=tuple(
            GpuModel(
                model=g.model,
                memory_gb=g.memory_gb,
                interconnect=g.interconnect,
                reference_price_ticks=_ticks(g.reference_price_usd, tick_micros, "reference_price"),
            )
            for g in f.gpus
        ),
        products=tuple(f.products),
        lots_max=f.lots_max,
        price_band_min_ticks=_ticks(f.price_band_min_usd, tick_micros, "price_band_min"),
        price_band_max_ticks=_ticks(f.price_band_max_usd, tick_micros, "price_band_max"),
        market_protection_bps=f.market_protection_bps,
        gate_closure_lead_ns=f.gate_closure_lead_s * NS_PER_SECOND,
        maker_fee_bps=f.maker_fee_bps,
        taker_fee_bps=f.taker_fee_bps,
        penalty_per_gpu_hour_micros=usd_to_micros(f.penalty_per_gpu_hour_usd),
        provisioning_deadline_ns=f.provisioning_deadline_s * NS_PER_SECOND,
    )
    _check(catalog)
    return catalog


def _check(catalog: Catalog) -> None:
    if not 0 < catalog.price_band_min_ticks < catalog.price_band_max_ticks:
        raise CatalogError("price band: expected 0 < min < max")
    if not 0 < catalog.lots_max <= 1_000_000:
        raise CatalogError(f"lots_max: expected 1..1000000, found {catalog.lots_max}")
    if not (0 <= catalog.maker_fee_bps <= 1000 and 0 <= catalog.taker_fee_bps <= 1000):
        raise CatalogError("fees: expected 0..1000 bps")
    for product in catalog.products:
        if product.code not in ("1h", "1d", "1w") or product.hours > _HOURS_MAX:
            raise CatalogError(f"product {product.code}: unknown code or too many hours")
    for name in [gpu.model for gpu in catalog.gpus] + list(catalog.regions):
        if not is_symbol_name(name):  # it names instruments: parse_symbol must take them back
            raise CatalogError(
                f"GPU model or region {name!r:.40}: expected 1-{SYMBOL_NAME_CHARS_MAX} "
                "characters of [A-Za-z0-9_-], starting with a letter or digit"
            )
    if len(catalog.regions) * len(catalog.gpus) > 64:
        raise CatalogError("at most 64 GPU model x region pairs (capacity keys use 6 bits)")
    # notional x bps must stay inside int64 for the largest order the catalog admits.
    worst = catalog.price_band_max_ticks * catalog.tick_micros * _HOURS_MAX * catalog.lots_max
    if worst * 10_000 >= _INT64_MAX:
        raise CatalogError("price band x lots_max x hours overflows int64 fee arithmetic")


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Load the catalog file (the packaged one unless a path is given)."""
    if path is None:
        text = resources.files("schemas").joinpath("catalog.json").read_text()
    else:
        text = Path(path).read_text()
    return parse_catalog(json.loads(text))
