"""Golden scenarios: commands in, expected events out, compared exactly (tests/golden/scenarios).

Regenerate a scenario's expected events with `python -m tests.golden.runner --write NAME`, and
check every event by hand before committing it.
"""

from __future__ import annotations

import zlib
from collections import defaultdict

import pytest

from schemas.codes import Reject
from tests.golden import runner

pytestmark = pytest.mark.nojit

NAMES = runner.scenario_names()

# Reject codes no command can provoke, with the reason. Empty: every code has a scenario.
UNREACHABLE: dict[Reject, str] = {}


@pytest.fixture(scope="module", params=NAMES)
def scenario(request: pytest.FixtureRequest) -> runner.Scenario:
    return runner.load(request.param)


def _assert_same(scenario: runner.Scenario, actual: list, how: str) -> None:
    diff = runner.first_difference(scenario.expected, actual)
    if diff:
        pytest.fail(
            f"scenario {scenario.name} ({how}):\n{diff}\n"
            f"if the change is intended, regenerate with "
            f"`python -m tests.golden.runner --write {scenario.name}` and check it by hand",
            pytrace=False,
        )


def test_scenario_has_expected_events(scenario: runner.Scenario) -> None:
    assert scenario.expected, f"{scenario.name}: no expected events; run the runner with --write"
    assert scenario.description.strip(), f"{scenario.name}: say what it shows and why"


def test_scenario_gives_expected_events(scenario: runner.Scenario) -> None:
    _assert_same(scenario, runner.run(scenario), "one batch")


def test_batching_does_not_change_events(scenario: runner.Scenario) -> None:
    seed = zlib.crc32(scenario.name.encode())
    for k in range(3):
        _assert_same(
            scenario, runner.run(scenario, seed=seed + k), f"random batches, seed {seed + k}"
        )


def test_refused_commands_change_no_state(scenario: runner.Scenario) -> None:
    for index, events, before, after in runner.run_one_at_a_time(scenario):
        if runner.only_rejections(events):
            assert before == after, (
                f"{scenario.name}: command {index} was refused "
                f"({', '.join(e['reason'] for e in events)}) but changed the state"
            )


def test_cash_moves_of_each_command_sum_to_zero(scenario: runner.Scenario) -> None:
    net: dict[int, int] = defaultdict(int)
    for e in scenario.expected:
        if e["type"] == "CashChanged":
            net[e["input_offset"]] += (
                e["available_delta"]
                + e["held_delta"]
                + e["escrow_delta"]
                + e["collateral_delta"]
                + e.get("pending_delta", 0)
            )
    assert {k: v for k, v in net.items() if v} == {}, f"{scenario.name}: unbalanced commands"


def test_every_reject_code_has_a_scenario() -> None:
    seen = {
        e["code"]
        for name in NAMES
        for e in runner.load(name).expected
        if e["type"] in ("OrderRejected", "CommandRejected")
    }
    missing = [code.name for code in Reject if code not in seen and code not in UNREACHABLE]
    assert not missing, f"reject codes with no golden scenario: {missing}"
    stale = [code.name for code in UNREACHABLE if code in seen]
    assert not stale, f"codes listed as unreachable but seen in a scenario: {stale}"
