"""Sessions by key: a revoked key's sessions are told at once, and the watch finds revocations
made elsewhere, asks nothing while no one is logged on, and survives a failing database."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from exchange.gateway.keys import KeyStore
from exchange.gateway.sessions import Sessions


class FakeKeys:
    """The two KeyStore methods Sessions uses, over a set of revoked ids."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.asked: list[list[str]] = []
        self.forgotten: list[str] = []
        self.failing = False

    async def revoked_among(self, key_ids: list[str]) -> list[str]:
        self.asked.append(sorted(key_ids))
        if self.failing:
            raise OSError("connection refused")
        return [k for k in key_ids if k in self.revoked]

    def forget(self, key_id: str) -> None:
        self.forgotten.append(key_id)


class FakeSession:
    def __init__(self) -> None:
        self.revocations = 0

    def revoke(self) -> None:
        self.revocations += 1


def _sessions(keys: FakeKeys, **options: Any) -> Sessions:
    return Sessions(cast(KeyStore, keys), **options)


def test_revoking_tells_every_session_of_that_key_once_and_forgets_it():
    keys = FakeKeys()
    sessions = _sessions(keys)
    a1, a2, b = FakeSession(), FakeSession(), FakeSession()
    sessions.add("gxa", a1)
    sessions.add("gxa", a2)
    sessions.add("gxb", b)
    assert sessions.revoked("gxa") == 2
    assert (a1.revocations, a2.revocations, b.revocations) == (1, 1, 0)
    assert keys.forgotten == ["gxa"] and sessions.count("gxa") == 0
    assert sessions.revoked("gxa") == 0  # already closed: nothing told twice
    sessions.remove("gxb", b)
    assert sessions.count("gxb") == 0


def test_poll_asks_about_logged_on_keys_only_and_closes_the_revoked():
    async def main() -> None:
        keys = FakeKeys()
        sessions = _sessions(keys)
        assert await sessions.poll() == 0
        assert keys.asked == []  # no session: no query
        kept, gone = FakeSession(), FakeSession()
        sessions.add("gxkept", kept)
        sessions.add("gxgone", gone)
        keys.revoked.add("gxgone")
        assert await sessions.poll() == 1
        assert keys.asked == [["gxgone", "gxkept"]]
        assert (kept.revocations, gone.revocations) == (0, 1)
        assert await sessions.poll() == 0
        assert keys.asked[-1] == ["gxkept"]

    asyncio.run(main())


def test_watch_logs_a_failing_database_once_and_recovers(caplog):
    async def main() -> None:
        keys = FakeKeys()
        sessions = _sessions(keys, poll_interval_s=0.01)
        session = FakeSession()
        sessions.add("gxa", session)
        keys.failing = True
        sessions.start()
        await asyncio.sleep(0.1)
        keys.revoked.add("gxa")
        keys.failing = False
        for _ in range(100):
            if session.revocations:
                break
            await asyncio.sleep(0.01)
        await sessions.stop()
        assert session.revocations == 1
        assert len(keys.asked) > 3

    with caplog.at_level(logging.INFO, logger="gx.gateway.sessions"):
        asyncio.run(main())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot read api_keys" in warnings[0].getMessage()


def test_poll_interval_must_be_positive():
    with pytest.raises(ValueError, match="poll_interval_s"):
        _sessions(FakeKeys(), poll_interval_s=0)
