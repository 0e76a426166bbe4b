"""The engine runner's shard map check on restore: the map is part of the log's configuration."""

from __future__ import annotations

import msgspec
import pytest

from matching.engine import Engine
from schemas.shards import build_shard_map
from streams.engine_runner import RecoveryError, check_shard_map, shard_engine_config
from tests.conftest import SMALL, started_engine


def _restored_config(catalog, shards: int | None):
    config = (
        SMALL if shards is None else shard_engine_config(SMALL, build_shard_map(catalog, shards))
    )
    engine = started_engine(catalog, config)
    return Engine.restore(engine.snapshot(), catalog).config


def test_a_snapshot_restores_under_the_map_it_was_taken_under(catalog):
    for shards in (1, 2):
        check_shard_map(_restored_config(catalog, shards), build_shard_map(catalog, shards), 7)


def test_a_snapshot_under_another_map_is_refused_saying_what_to_do(catalog):
    with pytest.raises(RecoveryError) as refused:
        check_shard_map(_restored_config(catalog, 1), build_shard_map(catalog, 2), 7)
    message = str(refused.value)
    assert "snapshot at offset 7" in message and "GX_SHARDS=2" in message
    assert "Start the engine with the GX_SHARDS and GX_SHARD_MAP the log was written under" in (
        message
    )
    text = build_shard_map(catalog, 2).text().replace("L40S/us-west=0", "L40S/us-west=1")
    with pytest.raises(RecoveryError):
        check_shard_map(_restored_config(catalog, 2), build_shard_map(catalog, 2, text), 7)


def test_a_snapshot_from_before_shard_maps_is_the_map_of_one_shard(catalog):
    legacy = _restored_config(catalog, None)
    assert legacy.shard_map_digest == "" and legacy.pairs is None
    check_shard_map(legacy, build_shard_map(catalog, 1), 7)
    with pytest.raises(RecoveryError, match="none \\(one shard, the whole catalog\\)"):
        check_shard_map(legacy, build_shard_map(catalog, 2), 7)


def test_the_map_survives_the_snapshot(catalog):
    shards = build_shard_map(catalog, 2)
    restored = _restored_config(catalog, 2)
    assert restored.pairs == shards.pairs_of(0)
    assert restored.shard_map_digest == shards.digest()
    assert restored == msgspec.structs.replace(
        SMALL, pairs=shards.pairs_of(0), shard_map_digest=shards.digest()
    )
