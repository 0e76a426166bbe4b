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
STATE_HASH = "8ee094eda7bf0f99368964a6708a66f4e8269d1578bce968c38e915f2f251ece"
SNAPSHOT_HASH = "842bbc45c3650049d682f328a777561a60e990b2a97eea42b2e0c7e3c547d154"
EVENTS_HASH = "9d64d6b2dd5841b01f5e2906ffb34fa36f85ac365845f087803c61f45064eed8"


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
