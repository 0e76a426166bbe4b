"""Pins a seeded simulation's state hash, snapshot bytes and event bytes.

Kernel refactors must not move a byte: snapshots written before a change restore after it, and
recovery compares state hashes across versions. A literal changes only with a deliberate change
of the state layout or of the engine's behaviour.
"""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from tests.support.simulation import run_simulation

pytestmark = pytest.mark.nojit

SEED, BATCHES = 13, 20
STATE_HASH = "e6c514286c077573047387efb8d60482705012223277605c1d26d5b4e664b326"
SNAPSHOT_HASH = "959afb078e11ad13601dfb391b8650921f8d4db99135daeea5eef3005daf7e2c"
EVENTS_HASH = "53debb768e79f571c971395c3a67d142034e80ec735d95839aff7baef63be6d0"


def _blake(parts: list[bytes]) -> str:
    digest = hashlib.blake2b(digest_size=32)
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def test_seeded_simulation_keeps_its_state_snapshot_and_event_bytes(catalog):
    engine, _, events = run_simulation(catalog, seed=SEED, batches=BATCHES)
    assert engine.state_hash() == STATE_HASH
    assert _blake([engine.snapshot()]) == SNAPSHOT_HASH
    assert _blake([msgspec.msgpack.encode(x) for x in events]) == EVENTS_HASH
