"""Who receives which pushes: public streams by stream key, private pushes by account.

A WebSocket connection subscribes to public streams (`subscribe_public`) and, once logged on,
has its account's private pushes routed to it (`attach_account`). The hub hands every push it
reads to `publish` (public) or `deliver` (private); handlers register and unregister here, never
through the hub.

Each connection's streams are also kept in its own `StreamSet`, by channel and symbol, so that an
unsubscribe looks its streams up instead of scanning them all. A connection holds at most
`STREAMS_PER_CONNECTION_MAX` public streams and the connections of one IP at most
`STREAMS_PER_IP_MAX` together (`check_room`, refused with `TOO_MANY_STREAMS`): every stream costs
a fan-out append per push and a line of every heartbeat.

A book depth is computed by the market feed only while someone watches it, and for
`resume_linger_s` after its last subscriber left, so that a client that lost its connection can
resume with `resume_from_seq` instead of starting over from a snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from exchange.gateway.fanout import Queued, fan_out
from exchange.gateway.market_feed import MarketFeed, StreamKey
from exchange.wire import ErrorCode, WireError

__all__ = [
    "STREAMS_PER_CONNECTION_MAX",
    "STREAMS_PER_IP_MAX",
    "StreamSet",
    "Subscriber",
    "Subscriptions",
    "resume_linger_s",
]

resume_linger_s = 60.0  # a book depth nobody watches any more keeps its resume buffer this long
STREAMS_PER_CONNECTION_MAX = 1_000  # public streams one connection holds at once
STREAMS_PER_IP_MAX = 5_000  # public streams the connections of one IP hold together


class StreamSet:
    """One connection's public streams by channel and symbol: looked up, never scanned."""

    __slots__ = ("_by_channel", "_count")

    def __init__(self) -> None:
        # channel -> symbol -> its streams (one per book depth or candle interval)
        self._by_channel: dict[str | int, dict[str | int, set[StreamKey]]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, tuple) or len(key) < 2:
            return False
        found = self._by_channel.get(key[0], {}).get(key[1])
        return found is not None and key in found

    def __iter__(self) -> Iterator[StreamKey]:
        for symbols in self._by_channel.values():
            for keys in symbols.values():
                yield from keys

    def add(self, key: StreamKey) -> None:
        """Hold a stream (holding it already changes nothing)."""
        keys = self._by_channel.setdefault(key[0], {}).setdefault(key[1], set())
        if key not in keys:
            keys.add(key)
            self._count += 1

    def discard(self, key: StreamKey) -> None:
        """Stop holding a stream (not holding it changes nothing)."""
        symbols = self._by_channel.get(key[0])
        keys = symbols.get(key[1]) if symbols is not None else None
        if symbols is None or keys is None or key not in keys:
            return
        keys.discard(key)
        self._count -= 1
        if not keys:
            del symbols[key[1]]
            if not symbols:
                del self._by_channel[key[0]]

    def of(self, channel: str, symbols: Iterable[str]) -> list[StreamKey]:
        """The streams held of a channel's symbols, every depth or interval of each."""
        held = self._by_channel.get(channel)
        if held is None:
            return []
        return [key for symbol in symbols for key in held.get(symbol, ())]


class Subscriber(Queued, Protocol):
    """A connection as the subscriptions see it: pushes must not block."""

    ip: str  # its client's address: streams are limited per IP too
    public: StreamSet  # its public streams, kept by the subscriptions

    def push(self, key: Any, body: bytes) -> None: ...


class Subscriptions:
    """The registry of one gateway's subscribers and the fan-out of pushes to them."""

    def __init__(
        self,
        feed: MarketFeed,
        *,
        streams_per_connection_max: int = STREAMS_PER_CONNECTION_MAX,
        streams_per_ip_max: int = STREAMS_PER_IP_MAX,
    ) -> None:
        if streams_per_connection_max < 1:
            raise ValueError(
                f"streams_per_connection_max: expected >= 1, found {streams_per_connection_max}"
            )
        if streams_per_ip_max < 1:
            raise ValueError(f"streams_per_ip_max: expected >= 1, found {streams_per_ip_max}")
        self.feed = feed
        self.streams_per_connection_max = streams_per_connection_max
        self.streams_per_ip_max = streams_per_ip_max
        self.public: dict[StreamKey, set[Subscriber]] = {}  # stream key -> its subscribers
        self.private: dict[int, set[Subscriber]] = {}  # account -> its logged-on connections
        self._ip_streams: dict[str, int] = {}  # IP -> public streams its connections hold
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

    def ip_streams(self, ip: str) -> int:
        """The public streams the connections of `ip` hold."""
        return self._ip_streams.get(ip, 0)

    def check_room(self, subscriber: Subscriber, adding: int) -> None:
        """Refuse (TOO_MANY_STREAMS) `adding` streams more than the connection or its IP may hold."""
        held, most = len(subscriber.public), self.streams_per_connection_max
        if held + adding > most:
            raise WireError(
                ErrorCode.TOO_MANY_STREAMS,
                f"streams per connection: expected at most {most}, found {held} held and "
                f"{adding} more asked for; unsubscribe some first",
            )
        held, most = self.ip_streams(subscriber.ip), self.streams_per_ip_max
        if held + adding > most:
            raise WireError(
                ErrorCode.TOO_MANY_STREAMS,
                f"streams per IP: expected at most {most}, found {held} held from "
                f"{subscriber.ip} and {adding} more asked for; unsubscribe some first",
            )

    def subscribe_public(self, subscriber: Subscriber, key: StreamKey) -> None:
        """Add a subscriber to a public stream (book depths are computed while watched).

        The caller checks the limits first (`check_room`).
        """
        subscribers = self.public.setdefault(key, set())
        if subscriber in subscribers:
            return
        subscribers.add(subscriber)
        subscriber.public.add(key)
        ip = subscriber.ip
        self._ip_streams[ip] = self._ip_streams.get(ip, 0) + 1
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
        subscriber.public.discard(key)
        ip = subscriber.ip
        left = self._ip_streams[ip] - 1
        if left:
            self._ip_streams[ip] = left
        else:
            del self._ip_streams[ip]
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
