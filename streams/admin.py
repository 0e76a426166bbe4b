"""`gx topics create`: create the exchange's topics with their partitions, replication, retention.

Commands and events are kept forever (`retention.ms=-1`): the log is the source of truth that the
engine replays and the audit recomputes. On real Kafka this goes through CreateTopics with
`min.insync.replicas` (2 with replication 3, ARCHITECTURE 7); the embedded mock answers no
CreateTopics, so there the topics are made through its C API. Creating is idempotent: a topic
that exists is reported, and a partition count that differs from the settings is an error
(changing it would move keys between partitions).
"""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.embedded.broker import EmbeddedBroker, EmbeddedBrokerError
from streams.settings import Settings
from streams.topics import Topic, topics

__all__ = ["TopicsError", "create_topics"]

_topic_already_exists = 36  # Kafka protocol error TOPIC_ALREADY_EXISTS


class TopicsError(RuntimeError):
    """Raise when a topic cannot be created or exists with a different layout."""


def topic_configs(topic: Topic, settings: Settings) -> dict[str, str]:
    """The broker-side configuration of one topic."""
    return {
        "retention.ms": str(topic.retention_ms),
        "min.insync.replicas": str(settings.min_insync_replicas),
        "cleanup.policy": "delete",
    }


async def create_topics(
    settings: Settings, embedded: EmbeddedBroker | None = None
) -> dict[str, str]:
    """Create every topic of `topics(settings)`; return name -> "created" or "exists"."""
    if embedded is not None:
        return _create_embedded(settings, embedded)
    settings.broker()  # refuses a missing broker, saying what to set
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        wanted = list(topics(settings).values())
        response = await admin.create_topics(
            [
                NewTopic(
                    t.name,
                    t.partitions,
                    settings.replication_factor,
                    topic_configs=topic_configs(t, settings),
                )
                for t in wanted
            ]
        )
        outcome: dict[str, str] = {}
        for error in response.topic_errors:
            name, code = error[0], error[1]
            if code == 0:
                outcome[name] = "created"
            elif code == _topic_already_exists:
                outcome[name] = "exists"
            else:
                message = error[2] if len(error) > 2 else ""
                raise TopicsError(f"create topic {name}: Kafka error {code} {message}".strip())
        existing = [t for t in wanted if outcome.get(t.name) == "exists"]
        if existing:
            await _check_partitions(admin, existing)
        return outcome
    finally:
        await admin.close()


async def _check_partitions(admin: AIOKafkaAdminClient, wanted: list[Topic]) -> None:
    described = await admin.describe_topics([t.name for t in wanted])
    found = {d["topic"]: len(d["partitions"]) for d in described}
    for t in wanted:
        if found.get(t.name, t.partitions) != t.partitions:
            raise TopicsError(
                f"topic {t.name} exists with {found[t.name]} partitions, expected {t.partitions}: "
                f"partitions cannot change under a running exchange (keys would move)"
            )


def _create_embedded(settings: Settings, embedded: EmbeddedBroker) -> dict[str, str]:
    # The mock keeps no topic configuration: retention there is its own (about 5 MiB).
    replication = min(settings.replication_factor, embedded.broker_count)
    outcome: dict[str, str] = {}
    for t in topics(settings).values():
        try:
            embedded.create_topic(t.name, t.partitions, replication)
        except EmbeddedBrokerError as error:
            if "already exists" not in str(error):
                raise
            outcome[t.name] = "exists"
        else:
            outcome[t.name] = "created"
    return outcome
