"""The shard map: the default spread, GX_SHARD_MAP, its refusals and a stable digest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from schemas.catalog import Catalog
from schemas.ids import ID_LIMIT, ID_SHARD_STRIDE, SHARDS_MAX, id_base, shard_of_id
from schemas.shards import build_shard_map, shard_map
from schemas.symbols import SymbolError
from streams.settings import load_settings


def _pairs(catalog: Catalog) -> list[tuple[str, str]]:
    return sorted((g.model, r) for g in catalog.gpus for r in catalog.regions)


def test_one_shard_owns_the_whole_catalog(catalog):
    shards = build_shard_map(catalog, 1)
    assert shards.pairs_of(0) == tuple(_pairs(catalog))
    assert shards.shard_of("H100-SXM", "us-east") == 0


def test_default_map_deals_the_sorted_pairs_round_robin(catalog):
    shards = build_shard_map(catalog, 2)
    pairs = _pairs(catalog)
    for i, (gpu, region) in enumerate(pairs):
        assert shards.shard_of(gpu, region) == i % 2
    assert shards.pairs_of(0) + shards.pairs_of(1) != ()
    assert sorted(shards.pairs_of(0) + shards.pairs_of(1)) == pairs
    assert not set(shards.pairs_of(0)) & set(shards.pairs_of(1))
    assert abs(len(shards.pairs_of(0)) - len(shards.pairs_of(1))) <= 1


def test_more_shards_than_pairs_leaves_the_last_ones_empty(catalog):
    shards = build_shard_map(catalog, 20)
    assert shards.pairs_of(19) == ()
    assert sum(len(shards.pairs_of(s)) for s in range(20)) == len(_pairs(catalog))


def test_shard_of_symbol_reads_the_pair_of_the_instrument(catalog):
    shards = build_shard_map(catalog, 3)
    symbol = "L40S.eu-west.1h.2026-12-01T14"
    assert shards.shard_of_symbol(symbol) == shards.shard_of("L40S", "eu-west")
    with pytest.raises(SymbolError):
        shards.shard_of_symbol("not a symbol")
    with pytest.raises(KeyError, match="MI300X/us-east"):
        shards.shard_of_symbol("MI300X.us-east.1h.2026-12-01T14")


def _override(catalog: Catalog, special: dict[tuple[str, str], int]) -> str:
    return ",".join(f"{g}/{r}={special.get((g, r), 0)}" for g, r in _pairs(catalog))


def test_override_sets_every_owner_and_builds_back_from_its_text(catalog):
    text = _override(catalog, {("H100-SXM", "us-east"): 1, ("B200", "eu-west"): 2})
    shards = build_shard_map(catalog, 3, " " + text.replace(",", " , ") + " ")
    assert shards.shard_of("H100-SXM", "us-east") == 1
    assert shards.pairs_of(2) == (("B200", "eu-west"),)
    assert shards.shard_of("L40S", "us-west") == 0
    assert build_shard_map(catalog, 3, shards.text()) == shards


def test_settings_read_gx_shards_and_gx_shard_map(catalog):
    text = _override(catalog, {("A100-80G", "eu-west"): 1})
    settings = load_settings({"GX_SHARDS": "2", "GX_SHARD_MAP": text})
    shards = shard_map(settings, catalog)
    assert shards.pairs_of(1) == (("A100-80G", "eu-west"),)
    assert shard_map(load_settings({}), catalog) == build_shard_map(catalog, 1)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("MI300X/us-east=0", "not a GPU model and region of the catalog"),
        ("H100-SXM/mars=0", "not a GPU model and region of the catalog"),
        ("H100-SXM/us-east=2", "the shard must be 0..1"),
        ("H100-SXM/us-east=-1", "the shard must be 0..1"),
        ("H100-SXM/us-east=x", "the shard must be 0..1"),
        ("H100-SXM/us-east=١", "the shard must be 0..1"),
        ("H100-SXM us-east=0", "expected GPU/region=shard"),
        ("H100-SXM/us-east", "expected GPU/region=shard"),
    ],
)
def test_override_refuses_a_bad_entry_naming_it(catalog, entry, message):
    text = _override(catalog, {}).replace("H100-SXM/us-east=0", entry)
    if entry.startswith(("MI300X", "H100-SXM/mars")):
        text = _override(catalog, {}) + "," + entry
    with pytest.raises(ValueError, match=message):
        build_shard_map(catalog, 2, text)


def test_override_refuses_a_pair_mapped_twice_or_not_at_all(catalog):
    full = _override(catalog, {})
    with pytest.raises(ValueError, match="H100-SXM/us-east is mapped twice"):
        build_shard_map(catalog, 2, full + ",H100-SXM/us-east=1")
    partial = full.replace("L40S/us-west=0,", "").replace(",L40S/us-west=0", "")
    with pytest.raises(ValueError, match="missing L40S/us-west"):
        build_shard_map(catalog, 2, partial)


@pytest.mark.parametrize("shards", [0, -1, SHARDS_MAX + 1])
def test_shard_count_out_of_range_is_refused(catalog, shards):
    with pytest.raises(ValueError, match=f"GX_SHARDS: expected 1..{SHARDS_MAX}"):
        build_shard_map(catalog, shards)


def test_digest_tells_maps_apart(catalog):
    one, two, three = (build_shard_map(catalog, n) for n in (1, 2, 3))
    assert len({one.digest(), two.digest(), three.digest()}) == 3
    moved = build_shard_map(catalog, 2, _override(catalog, {("L40S", "us-west"): 1}))
    assert moved.digest() != build_shard_map(catalog, 2, _override(catalog, {})).digest()
    assert build_shard_map(catalog, 2).digest() == build_shard_map(catalog, 2, two.text()).digest()


def test_digest_is_the_same_in_another_python_process(catalog):
    code = (
        "from schemas.catalog import load_catalog\n"
        "from schemas.shards import build_shard_map\n"
        "print(build_shard_map(load_catalog(), 2).digest())\n"
    )
    # PYTHONHASHSEED differs per run: the digest must not depend on hash().
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        cwd=Path(__file__).resolve().parents[2],  # the checkout under test
    )
    assert other.stdout.strip() == build_shard_map(catalog, 2).digest()


def test_id_ranges_of_the_shards_stay_below_the_json_limit():
    assert SHARDS_MAX * ID_SHARD_STRIDE <= ID_LIMIT == 2**53
    assert id_base(0) == 0 and id_base(SHARDS_MAX - 1) + ID_SHARD_STRIDE <= ID_LIMIT
    assert shard_of_id(id_base(5) + 12345) == 5
    assert ID_SHARD_STRIDE % (1 << 24) == 0  # order ids keep their slot in the low 24 bits
    for bad in (-1, SHARDS_MAX):
        with pytest.raises(ValueError, match=f"shard: expected 0..{SHARDS_MAX - 1}"):
            id_base(bad)
