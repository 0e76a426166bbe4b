"""Settings come from GX_* variables, typed, with sandbox defaults."""

from __future__ import annotations

import pytest

from streams.settings import Settings, load_settings
from streams.topics import topics


def test_defaults_run_the_embedded_sandbox():
    settings = load_settings({})
    assert settings == Settings()
    assert settings.kafka_bootstrap is None and settings.database_url is None


def test_variables_are_typed():
    settings = load_settings({"GX_SHARDS": "4", "GX_KAFKA_TRANSACTIONS": "true", "PATH": "/x"})
    assert settings.shards == 4 and settings.kafka_transactions is True


def test_unknown_or_mistyped_variables_are_refused_with_the_name():
    with pytest.raises(ValueError, match="GX_SHARD:"):
        load_settings({"GX_SHARD": "4"})
    with pytest.raises(ValueError, match="shards"):
        load_settings({"GX_SHARDS": "many"})


def test_settlement_priority_is_a_nice_increment_from_0_to_19():
    assert Settings().settle_nice == 10
    assert load_settings({"GX_SETTLE_NICE": "0"}).settle_nice == 0
    for value in ("-1", "20"):  # a negative increment would raise priority above the engine's
        with pytest.raises(ValueError, match="settle_nice"):
            load_settings({"GX_SETTLE_NICE": value})


def test_commands_and_events_have_one_partition_per_shard():
    layout = topics(load_settings({"GX_SHARDS": "3", "GX_TOPIC_PREFIX": "t."}))
    assert layout["commands"].name == "t.commands" and layout["commands"].partitions == 3
    assert layout["events"].partitions == 3 and layout["events"].retention_ms == -1
