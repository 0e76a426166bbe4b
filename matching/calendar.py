"""The listing calendar: which instruments should be open for trading at a given engine time."""

from __future__ import annotations

from collections.abc import Iterable

from schemas.catalog import Catalog
from schemas.symbols import InstrumentKey, is_aligned
from schemas.units import NS_PER_DAY, NS_PER_HOUR

__all__ = ["due_listings", "capacity_horizon_hours"]

_STEP_NS = {"1h": NS_PER_HOUR, "1d": NS_PER_DAY, "1w": 7 * NS_PER_DAY}


def _first_start(product: str, after_ns: int) -> int:
    """First delivery start on the product's grid strictly after `after_ns`."""
    start = (after_ns // NS_PER_HOUR + 1) * NS_PER_HOUR
    while not is_aligned(product, start):
        start += NS_PER_HOUR
    return start


def capacity_horizon_hours(catalog: Catalog) -> int:
    """Hours from the current one within which a listed instrument can deliver.

    An instrument is listed while its start lies within its product's listing horizon, and it
    delivers for the product's hours from there: capacity for any later hour backs nothing.
    """
    return max(product.listing_horizon_hours + product.hours for product in catalog.products)


def due_listings(
    catalog: Catalog,
    now_ns: int,
    listed: Iterable[InstrumentKey] | set[InstrumentKey],
    gpus: tuple[str, ...] | None = None,
    regions: tuple[str, ...] | None = None,
    pairs: tuple[tuple[str, str], ...] | None = None,
) -> list[InstrumentKey]:
    """Return the instruments to list now, in a fixed order (product, GPU, region, start).

    Only GPU models in `gpus`, regions in `regions` and (GPU model, region) pairs in `pairs` are
    listed (None: all); a shard lists its own pairs.

    An instrument is listed while its gate is still ahead (start - lead > now) and its start lies
    within the product's listing horizon.
    """
    have = set(listed)
    lead = catalog.gate_closure_lead_ns
    due = []
    for product in catalog.products:
        step = _STEP_NS[product.code]
        horizon = now_ns + product.listing_horizon_hours * NS_PER_HOUR
        first = _first_start(product.code, now_ns + lead)
        for gpu in catalog.gpus:
            if gpus is not None and gpu.model not in gpus:
                continue
            for region in catalog.regions:
                if regions is not None and region not in regions:
                    continue
                if pairs is not None and (gpu.model, region) not in pairs:
                    continue
                start = first
                while start <= horizon:
                    key = InstrumentKey(
                        gpu=gpu.model, region=region, product=product.code, start_ns=start
                    )
                    if key not in have:
                        due.append(key)
                    start += step
    return due
