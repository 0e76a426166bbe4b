"""Who receives which pushes: public streams by stream key, private pushes by account.

A WebSocket connection subscribes to public streams (`subscribe_public`) and, once logged on,
has its account's private pushes routed to it (`attach_account`). The hub hands every push it
reads to `publish` (public) or `deliver` (private); handlers register and unregister here, never
through the hub.

A book depth is computed by the market feed only while someone watches it, and for
`resume_linger_s` after its last subscriber left, so that a client that lost its connection can
resume with `resume_from_seq` instead of starting over from a snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

from exchange.gateway.fanout import Queued, fan_out
from exchange.gateway.market_feed import MarketFeed, StreamKey

__all__ = ["Subscriber", "Subscriptions", "resume_linger_s"]

resume_linger_s = 60.0  # a book depth nobody watches any more keeps its resume buffer this long


class Subscriber(Queued, Protocol):
    """A connection as the subscriptions see it: pushes must not block."""

    def push(self, key: Any, body: bytes) -> None: ...


class Subscriptions:
    """The registry of one gateway's subscribers and the fan-out of pushes to them."""

    def __init__(self, feed: MarketFeed) -> None:
        self.feed = feed
        self.public: dict[StreamKey, set[Subscriber]] = {}  # stream key -> its subscribers
        self.private: dict[int, set[Subscriber]] = {}  # account -> its logged-on connections
        self._lingering: dict[StreamKey, asyncio.TimerHandle] = {}

    def close(self) -> None:
        """Cancel the timers of book depths that linger after their last subscriber."""
        for handle in self._lingering.values():
            handle.cancel()
        self._lingering.clear()

    # ------------------------------------------------------------------ pushes

    def publish(self, pushes: Iterable[tuple[StreamKey, bytes]]) -> None:
        """Fan public pushes out to the subscribers of their streams."""
        public = self.public
        for key, body in pushes:
            subscribers = public.get(key)
            if subscribers:
                fan_out(key, body, subscribers)

    def deliver(self, pushes: Iterable[tuple[int, str, bytes]]) -> None:
        """Push private `(account, channel, body)` pushes to the account's connections."""
        private = self.private
        for account, channel, body in pushes:
            for subscriber in private.get(account, ()):
                subscriber.push(channel, body)

    # ------------------------------------------------------------------ public streams

    def subscribe_public(self, subscriber: Subscriber, key: StreamKey) -> None:
        """Add a subscriber to a public stream (book depths are computed while watched)."""
        subscribers = self.public.setdefault(key, set())
        if subscriber in subscribers:
            return
        subscribers.add(subscriber)
        if key[0] == "book":
            lingering = self._lingering.pop(key, None)
            if lingering is not None:
                lingering.cancel()  # still watched: the resume buffer never stopped
            else:
                self.feed.watch(key)

    def unsubscribe_public(self, subscriber: Subscriber, key: StreamKey) -> None:
        """Remove a subscriber from a public stream."""
        subscribers = self.public.get(key)
        if subscribers is None or subscriber not in subscribers:
            return
        subscribers.discard(subscriber)
        if subscribers:
            return
        del self.public[key]
        if key[0] == "book" and key not in self._lingering:
            # A client that lost its connection comes back with resume_from_seq: keep the
            # depth (and its resume buffer) going for a while after its last subscriber left.
            loop = asyncio.get_running_loop()
            self._lingering[key] = loop.call_later(resume_linger_s, self._stop_watching, key)

    def _stop_watching(self, key: StreamKey) -> None:
        self._lingering.pop(key, None)
        self.feed.unwatch(key)

    # ------------------------------------------------------------------ private pushes

    def attach_account(self, subscriber: Subscriber, account: int) -> None:
        """Route an account's private pushes to a logged-on connection."""
        self.private.setdefault(account, set()).add(subscriber)

    def detach_account(self, subscriber: Subscriber, account: int) -> None:
        """Stop routing an account's private pushes to a connection."""
        subscribers = self.private.get(account)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self.private[account]
