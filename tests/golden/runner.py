"""Golden scenarios: load a scenario file, run its commands through a fresh engine, give the events.

A scenario is one JSON file in `scenarios/`:

    {"description": "what it shows and why the expected events are right",
     "config": {EngineConfig overrides},
     "include_listings": false,
     "commands": [commands as msgspec JSON, tagged by "type"],
     "expected": [events as msgspec.to_builtins gives them]}

Each command's `input_offset` is its index in `commands`. `InstrumentListed` events are left out
of the comparison unless `include_listings` is true (the first tick lists 94 instruments).

Regenerate the expected events of scenarios from the engine's current output (check every
event by hand before committing it):

    python -m tests.golden.runner --write NAME [NAME ...]
    python -m tests.golden.runner --show NAME      # print the actual events, one per line
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from matching import layout as lay
from matching.engine import Engine, EngineConfig
from schemas.catalog import load_catalog
from schemas.commands import Command

__all__ = [
    "SCENARIOS_DIR",
    "BASE_CONFIG",
    "Scenario",
    "scenario_names",
    "load",
    "new_engine",
    "run",
    "run_one_at_a_time",
    "visible",
    "business_hash",
    "first_difference",
    "only_rejections",
    "write_expected",
]

SCENARIOS_DIR = Path(__file__).parent / "scenarios"

# One GPU model and region (94 instruments at the first tick) and small pools, so a scenario
# runs fast with the JIT off too. A scenario's "config" overrides any of these.
BASE_CONFIG: dict[str, Any] = {
    "gpus": ["H100-SXM"],
    "regions": ["us-east"],
    "accounts_max": 64,
    "instruments_max": 256,
    "orders_max": 256,
    "levels_max": 256,
    "positions_max": 256,
    "capacity_rows_max": 1024,
    "obligations_max": 64,
    "orders_open_max": 8,
}

_LISTED = "InstrumentListed"
_REJECTED = ("OrderRejected", "CommandRejected")
_commands_decoder = msgspec.json.Decoder(list[Command])


class Scenario(msgspec.Struct, kw_only=True):
    """One golden scenario as stored on disk (commands already decoded)."""

    name: str
    description: str
    config: dict[str, Any]
    include_listings: bool
    commands: list[Command]
    expected: list[dict[str, Any]]


def scenario_names() -> list[str]:
    """Return every scenario's name (its file name without `.json`), sorted."""
    return sorted(path.stem for path in SCENARIOS_DIR.glob("*.json"))


def _path(name: str) -> Path:
    return SCENARIOS_DIR / f"{name}.json"


def load(name: str) -> Scenario:
    """Read a scenario file; raise ValueError naming the file and the field that is wrong."""
    path = _path(name)
    raw = path.read_bytes()
    data = json.loads(raw)
    for field in ("description", "commands"):
        if field not in data:
            raise ValueError(f"{path}: expected a {field!r} field")
    try:
        # Decode the commands from their own JSON text so integers beyond int64 survive intact.
        commands = _commands_decoder.decode(json.dumps(data["commands"]))
    except msgspec.ValidationError as exc:
        raise ValueError(f"{path}: commands: {exc}") from None
    return Scenario(
        name=name,
        description=data["description"],
        config=data.get("config", {}),
        include_listings=bool(data.get("include_listings", False)),
        commands=commands,
        expected=data.get("expected", []),
    )


def new_engine(scenario: Scenario) -> Engine:
    """A fresh engine with the base configuration plus the scenario's overrides."""
    settings = {**BASE_CONFIG, **scenario.config}
    config = msgspec.convert(settings, EngineConfig)
    return Engine(load_catalog(), config)


def visible(scenario: Scenario, events: Sequence[msgspec.Struct]) -> list[dict[str, Any]]:
    """Events as JSON-able dicts, without listings unless the scenario asks for them."""
    out = [msgspec.to_builtins(e) for e in events]
    if not scenario.include_listings:
        out = [e for e in out if e["type"] != _LISTED]
    return out


def _batches(count: int, rng: random.Random | None) -> Iterator[range]:
    if rng is None:
        yield range(count)
        return
    start = 0
    while start < count:
        size = rng.randint(1, 4)
        yield range(start, min(start + size, count))
        start += size


def run(scenario: Scenario, seed: int | None = None) -> list[dict[str, Any]]:
    """Run the scenario in one batch, or in random batches drawn from `seed`; return its events."""
    engine = new_engine(scenario)
    rng = None if seed is None else random.Random(seed)
    events: list[msgspec.Struct] = []
    for batch in _batches(len(scenario.commands), rng):
        events += engine.apply([scenario.commands[i] for i in batch], offsets=batch)
    return visible(scenario, events)


def business_hash(engine: Engine) -> str:
    """State hash with the event sequence counter left out.

    Every event (a rejection too) advances the shard's event sequence, which lives in the state;
    "a refusal changes no state" is about everything else.
    """
    meta = engine.state[lay.ST_META]
    seq = int(meta[0, lay.M_EVENT_SEQ])
    meta[0, lay.M_EVENT_SEQ] = 0
    try:
        return engine.state_hash()
    finally:
        meta[0, lay.M_EVENT_SEQ] = seq


def run_one_at_a_time(scenario: Scenario) -> list[tuple[int, list[dict[str, Any]], str, str]]:
    """Apply commands one by one; return (index, events, hash before, hash after) for each."""
    engine = new_engine(scenario)
    out = []
    for i, command in enumerate(scenario.commands):
        before = business_hash(engine)
        events = visible(scenario, engine.apply([command], offsets=[i]))
        out.append((i, events, before, business_hash(engine)))
    return out


def only_rejections(events: Sequence[dict[str, Any]]) -> bool:
    """Whether a command's events are all refusals (and there is at least one)."""
    return bool(events) and all(e["type"] in _REJECTED for e in events)


def first_difference(expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> str:
    """A readable account of the first event where two event lists differ ('' when equal)."""
    for i, (want, got) in enumerate(zip(expected, actual, strict=False)):
        if want != got:
            lines = [f"event {i} differs (expected {want.get('type')}, got {got.get('type')}):"]
            for key in sorted(set(want) | set(got)):
                if want.get(key, "<missing>") != got.get(key, "<missing>"):
                    lines.append(
                        f"  {key}: expected {want.get(key, '<missing>')!r},"
                        f" got {got.get(key, '<missing>')!r}"
                    )
            lines.append(f"  expected: {json.dumps(want)}")
            lines.append(f"  actual:   {json.dumps(got)}")
            return "\n".join(lines)
    if len(expected) != len(actual):
        n = min(len(expected), len(actual))
        longer, which = (expected, "expected") if len(expected) > n else (actual, "actual")
        extra = "\n".join(f"  {json.dumps(e)}" for e in longer[n : n + 5])
        return (
            f"{len(expected)} events expected, {len(actual)} produced; "
            f"first extra {which} events:\n{extra}"
        )
    return ""


# ------------------------------------------------------------------ writing scenario files


def dumps(data: dict[str, Any]) -> str:
    """Format a scenario file: top-level fields one per line, one command or event per line."""
    parts = []
    for key, value in data.items():
        if key in ("commands", "expected") and isinstance(value, list):
            items = ",\n".join(f"    {json.dumps(item)}" for item in value)
            body = f"[\n{items}\n  ]" if value else "[]"
        else:
            body = json.dumps(value)
        parts.append(f"  {json.dumps(key)}: {body}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def write_expected(name: str) -> int:
    """Overwrite a scenario's "expected" with the engine's current output; return the count."""
    path = _path(name)
    data = json.loads(path.read_bytes())
    actual = run(load(name))
    data["expected"] = actual
    path.write_text(dumps(data))
    return len(actual)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: regenerate or show scenarios."""
    parser = argparse.ArgumentParser(prog="python -m tests.golden.runner", description=__doc__)
    parser.add_argument("names", nargs="*", help="scenario names (default: all)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="write actual events into expected")
    group.add_argument("--show", action="store_true", help="print actual events")
    group.add_argument("--check", action="store_true", help="report scenarios that differ")
    args = parser.parse_args(argv)
    names = args.names or scenario_names()
    unknown = [n for n in names if not _path(n).exists()]
    if unknown:
        print(f"no such scenario: {', '.join(unknown)} (looked in {SCENARIOS_DIR})")
        return 2
    failed = 0
    for name in names:
        if args.write:
            print(f"{name}: wrote {write_expected(name)} events")
        elif args.show:
            print(f"# {name}")
            for i, event in enumerate(run(load(name))):
                print(i, json.dumps(event))
        else:
            scenario = load(name)
            diff = first_difference(scenario.expected, run(scenario))
            failed += bool(diff)
            print(f"{name}: {'differs' if diff else 'ok'}\n{diff}" if diff else f"{name}: ok")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
