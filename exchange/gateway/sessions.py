"""The logged-on WebSocket sessions of one gateway, by API key; a revoked key's sessions close.

`session.logon` checks a key once, so revocation must reach the sessions it opened. The guarantee:
a session logged on with a key that is then revoked refuses every request and is closed
(WebSocket code 1008, exchange/gateway/ws.py) on the gateway that revoked it before the revoke is
answered (the close frame follows at once), and on every other gateway sharing the database
within `REVOCATION_POLL_INTERVAL_S` plus one query. From then on the key is out of that gateway's
key cache, so REST and new logons refuse it there at once too.

How other gateways learn of it: each polls the database for which of the keys it has sessions
for are revoked now (`KeyStore.revoked_among`, one primary-key probe per distinct key). Chosen
over LISTEN/NOTIFY issued by `revoke`, because a notification is lost while the listening
connection is down or behind a transaction-pooling proxy, and is never sent for a revocation
written by anything but `KeyStore.revoke` (an operator's SQL). And over a "revoked since my last
look" cursor, because that needs a revocation sequence whose values commit out of order (a
cursor can step over one) and it misses a key revoked just before a logon read it from a stale
cache. Asking about the live keys has no cursor to lose: each poll re-reads the truth, so a
failed poll is repaired by the next one.

Revoking a key revokes the keys minted under it (KeyStore.revoke returns them all); the gateway
closes the sessions of each, and the poll finds each on the other gateways. A key no longer
stored (a pruned revoked key) counts as revoked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from exchange.gateway.keys import KeyStore

__all__ = ["Sessions", "Revocable", "REVOCATION_POLL_INTERVAL_S"]

log = logging.getLogger("gx.gateway.sessions")

REVOCATION_POLL_INTERVAL_S = 0.25  # per gateway: one query while any session is logged on


class Revocable(Protocol):
    """A logged-on session: told when its key is revoked, it refuses everything and closes."""

    def revoke(self) -> None: ...


class Sessions:
    """Logged-on sessions by key id, and the watch that closes those of revoked keys."""

    def __init__(
        self, keys: KeyStore, *, poll_interval_s: float = REVOCATION_POLL_INTERVAL_S
    ) -> None:
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s: expected > 0, found {poll_interval_s}")
        self.keys = keys
        self.poll_interval_s = poll_interval_s
        self._by_key: dict[str, set[Revocable]] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, key_id: str, session: Revocable) -> None:
        """Register a session that logged on with `key_id`."""
        self._by_key.setdefault(key_id, set()).add(session)

    def remove(self, key_id: str, session: Revocable) -> None:
        """Forget a session (it closed)."""
        sessions = self._by_key.get(key_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._by_key[key_id]

    def count(self, key_id: str) -> int:
        """Return how many sessions are logged on with `key_id`."""
        return len(self._by_key.get(key_id, ()))

    def revoked(self, key_id: str) -> int:
        """Close every session of `key_id` and drop it from the key cache; return how many."""
        self.keys.forget(key_id)
        sessions = self._by_key.pop(key_id, set())
        for session in sessions:
            session.revoke()
        if sessions:
            log.info("key %s revoked: closed %d session(s)", key_id, len(sessions))
        return len(sessions)

    async def poll(self) -> int:
        """Look once for revoked keys among the logged-on ones; return the sessions closed."""
        if not self._by_key:
            return 0
        closed = 0
        for key_id in await self.keys.revoked_among(list(self._by_key)):
            closed += self.revoked(key_id)
        return closed

    def start(self) -> None:
        """Start polling (GatewayServer.start)."""
        if self._task is None:
            self._task = asyncio.create_task(self._watch(), name="gx-revocation-watch")

    async def stop(self) -> None:
        """Stop polling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _watch(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.poll_interval_s)
            try:
                await self.poll()
            except Exception as error:  # the next poll re-reads everything: log once, go on
                if not failing:
                    log.warning(
                        "revocation watch: cannot read api_keys (%s); retrying every %.2f s",
                        error,
                        self.poll_interval_s,
                    )
                failing = True
            else:
                if failing:
                    log.info("revocation watch: reading api_keys again")
                failing = False
