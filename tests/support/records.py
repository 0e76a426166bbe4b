"""gx.events records for tests: the events of each command in a record of its own."""

from __future__ import annotations

import itertools
from typing import Any

from schemas.codec import encode
from streams.event_records import pack_events


def per_command(events: list[Any]) -> list[bytes | None]:
    """One gx.events record per command, none split: a reader may stop at any record."""
    groups = itertools.groupby(events, key=lambda x: (x.shard, x.input_offset))
    return [pack_events([encode(x) for x in group]) for _, group in groups]
