"""The exchange's Kafka topics: names, keys, partitions, retention."""

from __future__ import annotations

import msgspec

from streams.settings import Settings

__all__ = ["Topic", "topics", "shard_key"]


class Topic(msgspec.Struct, frozen=True):
    """One topic and how it is laid out."""

    name: str
    partitions: int
    key: str  # what the message key is
    retention_ms: int  # -1: kept forever (the log is the source of truth)


def topics(settings: Settings) -> dict[str, Topic]:
    """All topics by role: commands, events, marketdata, provisioning."""
    p = settings.topic_prefix
    return {
        "commands": Topic(f"{p}commands", settings.shards, "shard", -1),
        "events": Topic(f"{p}events", settings.shards, "shard", -1),
        "marketdata": Topic(
            f"{p}marketdata", settings.marketdata_partitions, "instrument", 7 * 24 * 3_600_000
        ),
        "provisioning": Topic(f"{p}provisioning", settings.provisioning_partitions, "provider", -1),
    }


def shard_key(shard: int) -> bytes:
    """The message key of a shard's commands and events (partition = shard)."""
    return str(shard).encode()
