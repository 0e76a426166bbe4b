"""The hub keeps completed commands' events for late waiters by time, so a steady load stays flat."""

from __future__ import annotations

import pytest

from exchange.gateway.hub import RecentCommands


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_command_completed_within_the_window_is_answered_from_memory() -> None:
    clock = _Clock()
    recent = RecentCommands(window_s=60.0, count_max=1000, clock=clock)
    recent.add((0, 7), [])
    clock.now = 59.0
    assert recent.get((0, 7)) == []
    assert recent.get((0, 8)) is None


def test_a_steady_load_keeps_only_the_last_window_of_commands() -> None:
    # 40 commands a second for half an hour: the old count-only bound (100,000) held all 72,000.
    clock = _Clock()
    recent = RecentCommands(window_s=60.0, count_max=100_000, clock=clock)
    for offset in range(72_000):
        clock.now = offset / 40
        recent.add((0, offset), [])
    assert len(recent) == 60 * 40 + 1
    assert recent.get((0, 0)) is None
    assert recent.get((0, 71_999)) == []


def test_the_count_bound_holds_inside_the_window() -> None:
    recent = RecentCommands(window_s=60.0, count_max=10, clock=_Clock())
    for offset in range(25):
        recent.add((1, offset), [])
    assert len(recent) == 10
    assert recent.get((1, 14)) is None and recent.get((1, 15)) == []


@pytest.mark.parametrize(("window_s", "count_max"), [(0.0, 10), (60.0, 0)])
def test_bounds_must_be_positive(window_s: float, count_max: int) -> None:
    with pytest.raises(ValueError):
        RecentCommands(window_s=window_s, count_max=count_max)
