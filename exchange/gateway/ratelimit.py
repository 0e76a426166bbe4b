"""Token buckets: the gateway's message-rate limits, per account, per IP and per connection.

Signed traffic is limited per account, not per API key: an account's keys share its buckets, so
creating more keys (up to keys.KEYS_PER_ACCOUNT_MAX) buys no extra rate.

Pure: the caller passes the clock (`now_s`, monotonic seconds), so tests need no sleeping. Every
limit is named once, in `RateLimits`. A refused request changes nothing and learns how long to
wait (`retry_after_ms` of the RATE_LIMITED error).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import msgspec

from exchange.wire import ErrorCode, WireError

__all__ = ["RateLimits", "TokenBucket", "RateLimiter", "ConnectionCounter", "RATE_LIMIT_KEYS_MAX"]

RATE_LIMIT_KEYS_MAX = 100_000  # buckets kept per limiter; the least recently used go first
# Float refill can land a hair under a whole token (0.02 s x 50/s = 0.9999999999998).
_TOKENS_EPSILON = 1e-9


class RateLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Every rate limit of the gateway: sustained rate per second and burst (bucket size)."""

    rest_per_account_per_s: int = 50  # signed requests, all the account's keys together
    rest_per_account_burst: int = 100
    rest_per_ip_per_s: int = 100
    rest_per_ip_burst: int = 200
    ws_messages_per_conn_per_s: int = 100
    ws_messages_per_conn_burst: int = 200
    # every request of the account's logged-on connections together (many sockets of one key
    # stay within what one account may ask), and of all connections from one IP
    ws_messages_per_account_per_s: int = 500
    ws_messages_per_account_burst: int = 1_000
    ws_messages_per_ip_per_s: int = 2_000
    ws_messages_per_ip_burst: int = 4_000
    # RATE_LIMITED answers an account's connections may take together (an IP's, before logon;
    # a client that reads its retry_after_ms never comes near): past them, the connection
    # refused is closed with 1008, and a flood costs no more answers
    ws_refusals_per_account_per_s: int = 10
    ws_refusals_per_account_burst: int = 100
    # order entry (and withdrawals) over REST and WebSocket, all the account's keys together
    orders_per_account_per_s: int = 100
    orders_per_account_burst: int = 200
    ws_connections_per_ip: int = 50  # open at once
    # `session.logon` attempts, the only WebSocket message that reaches the database unsigned;
    # the per-IP burst lets a full set of connections log on at once.
    ws_logons_per_ip_per_s: int = 10
    ws_logons_per_ip_burst: int = 50
    ws_logons_per_conn_per_s: int = 1
    ws_logons_per_conn_burst: int = 3
    ws_logon_failures_per_conn_max: int = 5  # refused logons (any reason), then closed with 1008
    # A socket closed for its failed logons or spent refusals is closed that long after the last
    # refusal (reading nothing meanwhile): a client cycling sockets of guessed keys gets one
    # socket per delay, not one per round trip (measured: 200 sockets a second set up and torn
    # down were the gateway's largest cost under a logon flood)
    ws_policy_close_delay_ms: int = 1_000
    keys_max: int = RATE_LIMIT_KEYS_MAX  # buckets per limiter


class TokenBucket:
    """A bucket of `burst` tokens refilled at `rate_per_s`; it starts full."""

    __slots__ = ("rate_per_s", "burst", "tokens", "last_s")

    def __init__(self, rate_per_s: float, burst: int) -> None:
        if not rate_per_s > 0:
            raise ValueError(f"rate_per_s: expected > 0, found {rate_per_s}")
        if burst < 1:
            raise ValueError(f"burst: expected >= 1, found {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = float(burst)
        self.last_s: float | None = None

    def available(self, now_s: float) -> float:
        """Return the tokens the bucket would hold at `now_s` (no state change)."""
        if self.last_s is None:
            return self.tokens
        # A clock that steps back refills nothing rather than draining the bucket.
        elapsed_s = max(0.0, now_s - self.last_s)
        return min(float(self.burst), self.tokens + elapsed_s * self.rate_per_s)

    def take(self, now_s: float, cost: int = 1) -> float:
        """Take `cost` tokens: return 0.0 when allowed, else the seconds until it would be.

        A refusal leaves the bucket unchanged.
        """
        if not 1 <= cost <= self.burst:
            raise ValueError(f"cost: expected 1..{self.burst} (the burst), found {cost}")
        tokens = self.available(now_s)
        if tokens + _TOKENS_EPSILON < cost:
            return (cost - tokens) / self.rate_per_s
        self.tokens = max(0.0, tokens - cost)
        self.last_s = now_s if self.last_s is None else max(self.last_s, now_s)
        return 0.0


class RateLimiter:
    """Token buckets per key string (an account, an IP, a connection), at most `keys_max`.

    `name` says what is limited in the error message ("REST requests per account").
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        name: str = "requests",
        keys_max: int = RATE_LIMIT_KEYS_MAX,
    ) -> None:
        TokenBucket(rate_per_s, burst)  # validate once, here
        if keys_max < 1:
            raise ValueError(f"keys_max: expected >= 1, found {keys_max}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.name = name
        self.keys_max = keys_max
        self.refusals = 0  # RATE_LIMITED answers given (exchange/gateway/metrics.py)
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def check(self, key: str, now_s: float, cost: int = 1) -> None:
        """Take `cost` from `key`'s bucket, or raise WireError(RATE_LIMITED) with retry_after_ms.

        A key not seen before gets a full bucket; beyond `keys_max` keys the least recently used
        bucket is forgotten (an idle one is full anyway once burst / rate seconds have passed).
        """
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst)
            while len(self._buckets) > self.keys_max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        wait_s = bucket.take(now_s, cost)
        if wait_s > 0.0:
            self.refusals += 1
            retry_after_ms = max(1, math.ceil(wait_s * 1000))
            raise WireError(
                ErrorCode.RATE_LIMITED,
                f"{self.name}: expected at most {self.rate_per_s:g}/s (burst {self.burst}), "
                f"found more for {key}; retry after {retry_after_ms} ms",
                retry_after_ms=retry_after_ms,
            )

    def forget(self, key: str) -> None:
        """Drop `key`'s bucket (a closed connection)."""
        self._buckets.pop(key, None)


class ConnectionCounter:
    """Open connections per key string (an IP), at most `limit` at once."""

    retry_after_ms = 1000  # a refused client may try again after this

    def __init__(self, limit: int, *, name: str = "WebSocket connections per IP") -> None:
        if limit < 1:
            raise ValueError(f"limit: expected >= 1, found {limit}")
        self.limit = limit
        self.name = name
        self.refusals = 0  # connections refused (exchange/gateway/metrics.py)
        self._open: dict[str, int] = {}

    def open(self, key: str) -> None:
        """Count a new connection, or raise WireError(RATE_LIMITED) when `key` has `limit`."""
        count = self._open.get(key, 0)
        if count >= self.limit:
            self.refusals += 1
            raise WireError(
                ErrorCode.RATE_LIMITED,
                f"{self.name}: expected at most {self.limit} open at once, found {count} from "
                f"{key}; close one first",
                retry_after_ms=self.retry_after_ms,
            )
        self._open[key] = count + 1

    def close(self, key: str) -> None:
        """Count a connection closed."""
        count = self._open.get(key, 0)
        if count <= 1:
            self._open.pop(key, None)
        else:
            self._open[key] = count - 1

    def count(self, key: str) -> int:
        """Return the connections open from `key`."""
        return self._open.get(key, 0)
