"""The faults the simulator injects, chosen by its seeded random source.

Engine side: `restart` (crash after applying a batch, restore the latest snapshot, replay the
commands since it with recovery's suppression), `lost_produce` (the crash loses the batch's
events before any reached the log), `torn_produce` (the crash comes after only some of the
batch's records reached the log, a command split over records included), `small_records`
(records so small that commands split over several, `gx-partial` marked).
Sink side: `duplicate` (a record delivered twice in a row), `redeliver` (the sink crashes and
resumes from its committed position), `reorder` (an older record delivered again after newer
ones; to the ledger only between commits, see `LedgerSink.accepts_stale`), `partial_read` (a
read that stops inside a split command).
"""

from __future__ import annotations

import random
from collections import Counter

import msgspec

__all__ = ["ENGINE_FAULTS", "SINK_FAULTS", "FaultRates", "FaultPlan"]

ENGINE_FAULTS = ("restart", "lost_produce", "torn_produce", "small_records")
SINK_FAULTS = ("duplicate", "redeliver", "reorder", "partial_read")


class FaultRates(msgspec.Struct, frozen=True, kw_only=True):
    """Odds of each fault per step (engine faults) or per delivered record (sink faults)."""

    restart: float = 0.04
    lost_produce: float = 0.03
    torn_produce: float = 0.04
    small_records: float = 0.15
    duplicate: float = 0.04
    redeliver: float = 0.03
    reorder: float = 0.03
    partial_read: float = 0.1


class FaultPlan:
    """Draws faults from a seeded source and counts the ones injected."""

    def __init__(self, rng: random.Random, rates: FaultRates) -> None:
        self.rng = rng
        self.rates = rates
        self.injected: Counter[str] = Counter()

    def draw(self, kind: str) -> bool:
        """Whether fault `kind` happens now (counted when it does)."""
        if self.rng.random() < getattr(self.rates, kind):
            self.injected[kind] += 1
            return True
        return False
