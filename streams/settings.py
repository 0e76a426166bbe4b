"""One typed settings object, read from `GX_*` environment variables.

Every default runs the embedded sandbox: no Kafka bootstrap means the embedded mock cluster, no
database URL means a private PostgreSQL cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Literal

import msgspec

__all__ = ["ENV_PREFIX", "NO_BROKER", "Settings", "load_settings"]

ENV_PREFIX = "GX_"
# What every process that needs Kafka says when it has none: the embedded broker lives inside the
# process that starts it, so a process of its own can only join a real cluster.
NO_BROKER = (
    "no Kafka broker: set GX_KAFKA_BOOTSTRAP=host:port (or pass --bootstrap); the embedded "
    "broker lives inside the process that starts it, so `make sandbox` runs the whole exchange"
)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the exchange's processes connect and how they behave."""

    kafka_bootstrap: str | None = None  # GX_KAFKA_BOOTSTRAP; None: the embedded mock cluster
    database_url: str | None = None  # GX_DATABASE_URL; None: a private PostgreSQL cluster
    topic_prefix: str = "gx."  # GX_TOPIC_PREFIX
    shards: int = 1  # GX_SHARDS: partitions of gx.commands and gx.events
    # GX_SHARD_MAP: which shard owns each GPU model and region ("H100-SXM/us-east=0,..."; every
    # pair once); empty: the catalog's sorted pairs dealt round-robin (schemas/shards.py)
    shard_map: str = ""
    marketdata_partitions: int = 4
    provisioning_partitions: int = 4
    replication_factor: int = 1  # GX_REPLICATION_FACTOR: 3 on a real cluster
    min_insync_replicas: int = 1
    kafka_transactions: bool = (
        False  # GX_KAFKA_TRANSACTIONS: real Kafka only (the mock's are not real)
    )
    # An idle fetch waits this long for data; aiokafka's 500 ms default would stall every stage
    # that has caught up for half a second.
    kafka_fetch_wait_ms: int = 10  # GX_KAFKA_FETCH_WAIT_MS
    snapshot_every_commands: int = 50_000  # GX_SNAPSHOT_EVERY_COMMANDS
    # GX_GATEWAY_SNAPSHOT_EVERY_EVENTS: a gateway saves its projections every this many messages
    # applied (gx.events events, gx.marketdata and gx.provisioning messages: what a replay costs;
    # a gx.events record holds from one to hundreds of events) and starts from the newest
    # (exchange/gateway/snapshot.py); 0: it neither saves nor loads one, it replays the whole log
    gateway_snapshot_every_events: Annotated[int, msgspec.Meta(ge=0)] = 100_000
    engine_batch_max: int = 4096  # commands per engine step
    settle_batch_max: int = 5000  # events per settlement transaction
    # The settlement writer runs this much nicer than the other processes (0-19; 0: as they do):
    # where it shares cores with the engine, market data or a gateway, they get a core first and
    # it catches up in the gaps with bigger transactions (the README's benchmark table has the
    # paced pipeline's tail with and without).
    settle_nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 10  # GX_SETTLE_NICE
    clock_interval_ms: int = 1000  # GX_CLOCK_INTERVAL_MS
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # GX_GATEWAY_MASTER_KEY: API secrets are derived from it (exchange/gateway/keys.py); at least
    # 32 characters, the same on every gateway, never in the database.
    gateway_master_key: str = ""
    log_level: str = "WARNING"  # quiet by default
    # GX_LOG_FORMAT: `text` (one line per record) or `json` (one JSON object per line, for a log
    # collector; streams/logs.py)
    log_format: Literal["text", "json"] = "text"
    # GX_READY_LAG_RECORDS_MAX: a stream process is ready (/readyz) while every partition it
    # reads is at most this many records behind the log's end (room for transaction markers and
    # the batch in flight)
    ready_lag_records_max: Annotated[int, msgspec.Meta(ge=0)] = 100
    # GX_HEALTH_PORT: a stream process serves /healthz, /readyz and /metrics there (0: it does
    # not; streams/health.py); GX_HEALTH_HOST where it listens
    health_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    health_host: str = "127.0.0.1"

    def broker(self) -> str:
        """The Kafka bootstrap servers; raise ValueError saying what to set when there are none."""
        if not self.kafka_bootstrap:
            raise ValueError(NO_BROKER)
        return self.kafka_bootstrap


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every `GX_<FIELD>` variable that names a settings field; refuse unknown ones."""
    env = os.environ if environ is None else environ
    fields = set(Settings.__struct_fields__)
    raw: dict[str, str] = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name not in fields:
            known = ", ".join(ENV_PREFIX + f.upper() for f in sorted(fields))
            raise ValueError(f"{key}: not a setting; known settings are {known}")
        raw[name] = value
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as error:
        raise ValueError(f"settings: {error} (from the GX_* environment)") from None
