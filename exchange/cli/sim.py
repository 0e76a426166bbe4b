"""`gx sim`: the deterministic simulation of engine, settlement and market data, by seed.

    gx sim --seed 4242 --verbose     # replay one seed step by step
    gx sim --seeds 0..9999           # a range of seeds
    gx sim --budget-s 30             # as many seeds from --first as fit in 30 s

Exit status: 0 every seed held its invariants, 1 a seed failed (the seed, the step and the
invariant are printed, with the command that replays it), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable

from exchange.cli.process import usage_error
from schemas.catalog import load_catalog
from streams.simulation.simulator import SimulationFailure, Simulator, steps_default
from streams.simulation.sinks import LedgerSink

__all__ = ["parse_seeds", "register", "run", "simulate"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sim` to the `gx` command line."""
    p = subparsers.add_parser(
        "sim",
        help="deterministic simulation with faults: one seed, a range, or a time budget",
        description="Run the engine, an in-memory settlement ledger and market data on one "
        "thread from a seed, with snapshot restarts, lost and torn produces, duplicated, "
        "redelivered and reordered records, checking invariants after every step.",
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument("--seed", type=int, help="run this one seed")
    which.add_argument("--seeds", help="run the seeds A..B (inclusive)")
    p.add_argument("--budget-s", type=float, help="stop starting seeds after this many seconds")
    p.add_argument("--first", type=int, default=0, help="first seed of a budgeted run")
    p.add_argument("--steps", type=int, default=steps_default, help="steps per seed")
    p.add_argument("--verbose", action="store_true", help="print every step")
    p.set_defaults(handler=run)


def parse_seeds(text: str) -> range:
    """`A..B` (inclusive) as a range; raise ValueError naming what was expected."""
    first, sep, last = text.partition("..")
    try:
        a, b = int(first), int(last)
    except ValueError:
        raise ValueError(f"--seeds: expected A..B with integers, found {text!r}") from None
    if not sep or b < a:
        raise ValueError(f"--seeds: expected A..B with A <= B, found {text!r}")
    return range(a, b + 1)


def run(args: argparse.Namespace) -> int:
    """Run the seeds the arguments name; print a summary; return 0, 1 or 2."""
    try:
        if args.steps < 1:
            raise ValueError(f"--steps: expected >= 1, found {args.steps}")
        if args.seed is not None:
            seeds: range = range(args.seed, args.seed + 1)
        elif args.seeds is not None:
            seeds = parse_seeds(args.seeds)
        elif args.budget_s is not None:
            seeds = range(args.first, 2**62)
        else:
            raise ValueError("name --seed N, --seeds A..B or --budget-s S")
    except ValueError as error:
        return usage_error("sim", error)
    log = print if args.verbose else None
    return simulate(seeds, steps=args.steps, budget_s=args.budget_s, log=log)


def simulate(
    seeds: range,
    *,
    steps: int = steps_default,
    budget_s: float | None = None,
    log: Callable[[str], None] | None = None,
    ledger_sink: Callable[[], LedgerSink] = LedgerSink,
) -> int:
    """Run seeds in order (until `budget_s` runs out); print what ran; 1 at the first failure."""
    simulator = Simulator(load_catalog(), steps=steps, log=log, ledger_sink=ledger_sink)
    started = time.monotonic()
    faults: Counter[str] = Counter()
    ran = events = 0
    for seed in seeds:
        if budget_s is not None and time.monotonic() - started >= budget_s:
            break
        try:
            result = simulator.run(seed)
        except SimulationFailure as failure:
            print(f"gx sim: FAILED {failure}", file=sys.stderr)
            print(f"gx sim: reproduce with: gx sim --seed {failure.seed} --steps {steps} --verbose",
                  file=sys.stderr)  # fmt: skip
            return 1
        ran += 1
        events += result.events
        faults.update(result.faults)
    elapsed = time.monotonic() - started
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(faults.items()))
    print(f"gx sim: {ran} seeds passed, {ran * steps} steps, {events} events in {elapsed:.1f} s")
    print(f"gx sim: faults injected: {kinds or 'none'}")
    return 0
