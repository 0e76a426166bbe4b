"""How every process of the exchange reads its logs from Kafka."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer

__all__ = ["log_consumer"]


def log_consumer(
    bootstrap: str | None, *, check_crcs: bool, fetch_wait_ms: int | None = None, **options: Any
) -> AIOKafkaConsumer:
    """A consumer for reading topics by assignment from a position the reader keeps itself.

    No group offsets are committed (every sink stores its own position), only committed
    transactions are read, and reading starts at the beginning unless `options` say otherwise.
    `check_crcs` is False only against the embedded broker, whose transaction markers carry
    CRC 0 (streams/embedded_broker.py).
    """
    settings: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "check_crcs": check_crcs,
    }
    if fetch_wait_ms is not None:
        settings["fetch_max_wait_ms"] = fetch_wait_ms
    settings.update(options)
    return AIOKafkaConsumer(bootstrap_servers=bootstrap, **settings)
