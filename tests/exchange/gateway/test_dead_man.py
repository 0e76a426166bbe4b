"""The dead-man switch: one timer per account, re-armed by any refresh, fired once, 0 disarms."""

from __future__ import annotations

import asyncio

import pytest

from exchange.gateway.dead_man import (
    DeadManSwitches,
    dead_man_timeout_ms_max,
    dead_man_timeout_ms_min,
)
from exchange.wire import ErrorCode, WireError
from schemas import commands as c


def _switches() -> tuple[DeadManSwitches, list[c.Command]]:
    sent: list[c.Command] = []
    return DeadManSwitches(sent.append, shard=0), sent


def test_a_refresh_rearms_the_one_timer_of_the_account_and_it_fires_once():
    async def main() -> None:
        switches, sent = _switches()
        first = switches.arm(7, 300)
        await asyncio.sleep(0.2)
        second = switches.arm(7, 300)  # another session of account 7: the same timer
        assert len(switches) == 1 and second >= first
        await asyncio.sleep(0.2)
        assert sent == []  # re-armed in time
        await asyncio.sleep(0.3)
        assert [(type(m), m.account) for m in sent] == [(c.CancelAll, 7)]
        assert isinstance(sent[0], c.CancelAll) and sent[0].symbol is None
        assert len(switches) == 0 and switches.deadline_ms(7) is None
        await asyncio.sleep(0.15)
        assert len(sent) == 1

    asyncio.run(main())


def test_zero_disarms_and_accounts_count_apart():
    async def main() -> None:
        switches, sent = _switches()
        switches.arm(1, 100)
        switches.arm(2, 100)
        assert len(switches) == 2
        assert switches.disarm(1) is True and switches.disarm(1) is False
        await asyncio.sleep(0.15)
        assert [m.account for m in sent if isinstance(m, c.CancelAll)] == [2]

    asyncio.run(main())


@pytest.mark.parametrize("timeout_ms", [dead_man_timeout_ms_min - 1, dead_man_timeout_ms_max + 1])
def test_a_timeout_out_of_range_is_refused_and_leaves_the_switch_armed(timeout_ms):
    async def main() -> None:
        switches, _ = _switches()
        deadline_ms = switches.arm(3, 60_000)
        with pytest.raises(WireError) as refused:
            switches.arm(3, timeout_ms)
        assert refused.value.code == ErrorCode.BAD_REQUEST
        assert switches.deadline_ms(3) == deadline_ms
        switches.disarm(3)

    asyncio.run(main())


def test_a_stopping_gateway_fires_what_is_still_armed():
    async def main() -> None:
        switches, sent = _switches()
        switches.arm(4, 60_000)
        switches.arm(5, 60_000)
        assert switches.fire_all() == 2
        assert sorted(m.account for m in sent if isinstance(m, c.CancelAll)) == [4, 5]
        assert len(switches) == 0

    asyncio.run(main())
