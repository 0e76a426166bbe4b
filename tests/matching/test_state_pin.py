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
# State and snapshot moved with snapshot version 4 (market controls: halt and breaker columns,
# suspension); the events did not move a byte.
STATE_HASH = "d81bf0e00f50be57466378cc613d04704ef6afbc530d854cad4fc84d14030e69"
SNAPSHOT_HASH = "85e5811d22f7396ee281e1ab99e558abb9749cb0f3a63521879101b72a173b4e"
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
