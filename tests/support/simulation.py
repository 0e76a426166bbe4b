"""The tests' entry to the seeded workload (streams/simulation/workload.py) and a driver over it."""

from __future__ import annotations

import random

import msgspec

from schemas import commands as c
from schemas import events as e
from streams.simulation.workload import ACCOUNTS, MINUTE_NS, PROVIDERS, Simulation

__all__ = ["ACCOUNTS", "MINUTE_NS", "PROVIDERS", "Simulation", "run_simulation"]


def run_simulation(catalog, seed: int, batches: int, config=None):
    """Drive a seeded simulation through `Engine.apply` with input offsets.

    Returns (engine, command log, every event). `config` defaults to the tests' SMALL engine.
    """
    from matching.engine import Engine
    from tests.conftest import SMALL, T0_NS

    engine = Engine(catalog, config or SMALL)
    shard = engine.config.shard
    log: list = []

    def apply(commands: list) -> list:
        if shard:  # the simulation writes shard-0 commands; another shard refuses them
            commands = [msgspec.structs.replace(command, shard=shard) for command in commands]
        offsets = range(len(log), len(log) + len(commands))
        log.extend(commands)
        return engine.apply(commands, offsets)

    events = apply([c.ClockTick(ts_ns=T0_NS)])
    sim = Simulation(seed, [x.symbol for x in events if isinstance(x, e.InstrumentListed)], T0_NS)
    rng = random.Random(seed)
    events += apply(sim.opening())
    for _ in range(batches):
        out = apply(sim.batch(rng.randint(1, 40)))
        sim.observe(out)
        events += out
    return engine, log, events
