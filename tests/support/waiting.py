"""Waiting in tests for what arrives later (market data, the ledger), with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(
    check: Callable[[], Awaitable[T | None]],
    timeout_s: float = 10.0,
    what: str = "",
    interval_s: float = 0.02,
) -> T:
    """Await `check()` every `interval_s` until it returns a true value; return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or check}")
        await asyncio.sleep(interval_s)
