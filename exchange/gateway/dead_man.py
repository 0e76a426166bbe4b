"""The dead-man switch `cancel_all_after`: one timer per account, kept beyond the socket.

A client arms the switch with a timeout and refreshes it before the timeout runs out; when it
runs out, the gateway cancels every open order of the account (`CancelAll`). The switch exists
for the client that goes away without a word, so it belongs to the account, not to the
connection: a socket that drops leaves it counting (as Kraken's `cancelAllOrdersAfter` does), a
refresh from any of the account's sessions re-arms the same timer, and `timeout_ms` 0 disarms
it. At most one timer per account (`len(switches)` <= accounts that armed one).

The timer lives in the gateway the request reached. A client that moves to another gateway arms
a timer there, and the first still fires unless disarmed: the switch errs toward cancelling. A
gateway that stops fires the switches still armed (`fire_all`): the sessions that would refresh
them close with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from exchange.wire import ErrorCode, WireError
from schemas import commands as c

__all__ = ["DeadManSwitches", "dead_man_timeout_ms_min", "dead_man_timeout_ms_max"]

log = logging.getLogger("gx.gateway.dead_man")

dead_man_timeout_ms_min = 100
dead_man_timeout_ms_max = 3_600_000


class DeadManSwitches:
    """Each account's `cancel_all_after` timer; `submit_later` sends the CancelAll it fires."""

    def __init__(self, submit_later: Callable[[c.Command], None], *, shard: int = 0) -> None:
        self._submit_later = submit_later
        self._shard = shard
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._deadlines_ms: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._timers)

    def deadline_ms(self, account: int) -> int | None:
        """Return when the account's switch fires (UNIX ms), or None when it is not armed."""
        return self._deadlines_ms.get(account)

    def arm(self, account: int, timeout_ms: int) -> int:
        """Arm (or re-arm) the account's switch to fire in `timeout_ms`; return the deadline.

        Raises WireError(BAD_REQUEST) for a timeout out of range; the switch is left as it was.
        """
        if not dead_man_timeout_ms_min <= timeout_ms <= dead_man_timeout_ms_max:
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"timeout_ms: expected 0 or {dead_man_timeout_ms_min}-{dead_man_timeout_ms_max}, "
                f"found {timeout_ms}",
            )
        self.disarm(account)
        loop = asyncio.get_running_loop()
        self._timers[account] = loop.call_later(timeout_ms / 1000, self._fire, account)
        deadline_ms = time.time_ns() // 1_000_000 + timeout_ms
        self._deadlines_ms[account] = deadline_ms
        return deadline_ms

    def disarm(self, account: int) -> bool:
        """Disarm the account's switch; tell whether it was armed."""
        timer = self._timers.pop(account, None)
        self._deadlines_ms.pop(account, None)
        if timer is None:
            return False
        timer.cancel()
        return True

    def fire_all(self) -> int:
        """Fire every armed switch now (the gateway is stopping); return how many fired."""
        accounts = list(self._timers)
        for account in accounts:
            self._timers[account].cancel()
            self._fire(account)
        if accounts:
            log.info("gateway stopping: %d dead-man switches fired early", len(accounts))
        return len(accounts)

    def _fire(self, account: int) -> None:
        self._timers.pop(account, None)
        self._deadlines_ms.pop(account, None)
        log.info("cancel_all_after fired for account %d", account)
        self._submit_later(c.CancelAll(shard=self._shard, account=account, ts_init=time.time_ns()))
