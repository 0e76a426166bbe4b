"""Token buckets refill at their rate, refuse without side effects, and stay bounded in keys."""

from __future__ import annotations

from pathlib import Path

import pytest

import exchange
from exchange.gateway.ratelimit import ConnectionCounter, RateLimiter, RateLimits, TokenBucket
from exchange.wire import ErrorCode, WireError


def test_bucket_starts_full_and_allows_the_burst_at_once():
    bucket = TokenBucket(rate_per_s=10, burst=5)
    assert [bucket.take(100.0) for _ in range(5)] == [0.0] * 5
    assert bucket.take(100.0) == pytest.approx(0.1)


def test_bucket_refills_at_its_rate_up_to_the_burst():
    bucket = TokenBucket(rate_per_s=50, burst=100)
    for _ in range(100):
        assert bucket.take(0.0) == 0.0
    assert bucket.available(0.5) == pytest.approx(25.0)
    assert bucket.available(1.0) == pytest.approx(50.0)
    assert bucket.available(60.0) == 100.0  # capped at the burst
    assert bucket.take(0.02) == 0.0  # 0.02 s x 50/s is one token
    assert bucket.take(0.02) == pytest.approx(0.02)


def test_bucket_allows_a_whole_token_despite_float_refill_error():
    bucket = TokenBucket(rate_per_s=50, burst=1)
    assert bucket.take(100.0) == 0.0
    # 100.02 - 100.0 is 0.0199999..., a hair under one token.
    assert bucket.take(100.02) == 0.0


def test_refused_take_leaves_the_bucket_unchanged():
    bucket = TokenBucket(rate_per_s=10, burst=3)
    for _ in range(3):
        bucket.take(1.0)
    before = (bucket.tokens, bucket.last_s)
    wait_s = bucket.take(1.05, cost=2)
    assert wait_s == pytest.approx((2 - 0.5) / 10)
    assert (bucket.tokens, bucket.last_s) == before
    # Waiting exactly the answer is enough.
    assert bucket.take(1.05 + wait_s, cost=2) == 0.0
    assert bucket.tokens == pytest.approx(0.0)


def test_clock_stepping_back_refills_nothing():
    bucket = TokenBucket(rate_per_s=10, burst=2)
    bucket.take(5.0)
    bucket.take(5.0)
    assert bucket.take(4.0) == pytest.approx(0.1)
    assert bucket.take(5.1) == 0.0


def test_bucket_refuses_bad_limits_and_costs_beyond_the_burst():
    with pytest.raises(ValueError, match="rate_per_s"):
        TokenBucket(rate_per_s=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(rate_per_s=1, burst=0)
    with pytest.raises(ValueError, match="cost"):
        TokenBucket(rate_per_s=1, burst=2).take(0.0, cost=3)


def test_limiter_raises_rate_limited_with_retry_after_ms_rounded_up():
    limiter = RateLimiter(rate_per_s=3, burst=1, name="REST requests per key")
    limiter.check("gxkey", 10.0)
    with pytest.raises(WireError) as refused:
        limiter.check("gxkey", 10.0)
    error = refused.value
    assert error.code == ErrorCode.RATE_LIMITED
    assert error.status == 429 and error.retryable
    assert error.retry_after_ms == 334  # 1/3 s is 333.33 ms, rounded up
    assert error.body()["retry_after_ms"] == 334
    assert "REST requests per key" in error.msg and "gxkey" in error.msg
    limiter.check("gxkey", 10.0 + 0.334)


def test_limiter_retry_after_is_at_least_one_ms():
    limiter = RateLimiter(rate_per_s=1_000_000, burst=1)
    limiter.check("k", 0.0)
    with pytest.raises(WireError) as refused:
        limiter.check("k", 0.0)
    assert refused.value.retry_after_ms == 1


def test_limiter_keeps_separate_buckets_per_key():
    limiter = RateLimiter(rate_per_s=1, burst=1)
    limiter.check("a", 0.0)
    limiter.check("b", 0.0)
    with pytest.raises(WireError):
        limiter.check("a", 0.0)


def test_limiter_evicts_the_least_recently_used_key_beyond_keys_max():
    limiter = RateLimiter(rate_per_s=1, burst=1, keys_max=3)
    for key in ("a", "b", "c"):
        limiter.check(key, 0.0)
    with pytest.raises(WireError):
        limiter.check("a", 0.5)  # a refused check still counts as a use of "a"
    limiter.check("d", 0.5)  # evicts "b", the least recently used
    assert len(limiter) == 3
    assert "b" not in limiter and all(key in limiter for key in "acd")
    limiter.check("b", 0.5)  # a fresh, full bucket; evicts "c"
    assert "c" not in limiter and len(limiter) == 3


def test_connection_counter_limits_open_connections_per_ip():
    counter = ConnectionCounter(limit=2)
    counter.open("10.0.0.1")
    counter.open("10.0.0.1")
    with pytest.raises(WireError) as refused:
        counter.open("10.0.0.1")
    assert refused.value.code == ErrorCode.RATE_LIMITED and refused.value.retry_after_ms > 0
    counter.open("10.0.0.2")
    counter.close("10.0.0.1")
    counter.open("10.0.0.1")
    assert counter.count("10.0.0.1") == 2
    counter.close("10.0.0.2")
    assert counter.count("10.0.0.2") == 0


def test_default_limits_are_the_published_ones():
    limits = RateLimits()
    assert limits.rest_per_account_per_s == 50
    assert limits.rest_per_ip_per_s == 100
    assert (limits.ws_messages_per_conn_per_s, limits.ws_messages_per_conn_burst) == (100, 200)
    assert (limits.orders_per_account_per_s, limits.orders_per_account_burst) == (100, 200)
    assert limits.ws_connections_per_ip == 50
    assert (limits.ws_logons_per_ip_per_s, limits.ws_logons_per_ip_burst) == (10, 50)
    assert (limits.ws_logons_per_conn_per_s, limits.ws_logons_per_conn_burst) == (1, 3)
    assert limits.ws_logon_failures_per_conn_max == 5
    for rate, burst in (
        (limits.rest_per_account_per_s, limits.rest_per_account_burst),
        (limits.rest_per_ip_per_s, limits.rest_per_ip_burst),
    ):
        assert burst >= rate
    # every open connection of an address can log on at once
    assert limits.ws_logons_per_ip_burst >= limits.ws_connections_per_ip


def test_every_limit_is_documented_in_the_api_page():
    page = (Path(exchange.__file__).parent / "API.md").read_text()
    limits = page[page.index("## Limits") :]
    for name in RateLimits.__struct_fields__:
        assert name in limits, f"RateLimits.{name} is missing from API.md ## Limits"
    for name in (
        "KEY_LOOKUPS_CONCURRENT_MAX",
        "KEY_LOOKUPS_WAITING_MAX",
        "KEY_UNKNOWN_CACHE_TTL_S",
        "KEY_UNKNOWN_CACHE_ENTRIES_MAX",
        "KEY_CACHE_TTL_S",
        "REVOCATION_POLL_INTERVAL_S",
    ):
        assert name in limits, f"{name} is missing from API.md ## Limits"
