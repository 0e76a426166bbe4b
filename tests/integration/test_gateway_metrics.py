"""The gateway's health and Prometheus metrics, scraped from a live gateway as Prometheus would."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gateway_harness import rest, running_exchange, socket

from .conftest import run


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition by (name, labels), parsed by the library's own parser."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _ioc(symbol: str) -> dict[str, Any]:
    return {"symbol": symbol, "side": "buy", "price": "1.000", "qty": "1", "tif": "ioc"}


def test_health_and_metrics_say_what_the_gateway_serves(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            alive = await rest(ex, "GET", "/healthz")
            assert alive.status_code == 200 and alive.json() == {"alive": True}
            ready = await rest(ex, "GET", "/readyz")
            assert ready.status_code == 200 and ready.json() == {"ready": True}

            before = _samples((await rest(ex, "GET", "/metrics")).text)
            assert before[("gx_gateway_ready", ())] == 1
            assert before[("gx_gateway_connections", ())] == 0
            async with socket(ex) as ws, socket(ex) as other:
                assert (await ws.logon(ex.keys["trader"]))["status"] == 200
                await other.request("subscribe", {"channel": "trades", "symbols": [ex.symbol]})
                for _ in range(3):
                    assert (await ws.request("order.place", _ioc(ex.symbol)))["status"] == 200
                placed = await rest(
                    ex, "POST", "/api/v1/orders", ex.keys["trader"], _ioc(ex.symbol)
                )
                assert placed.status_code == 200, placed.text
                refused = await other.request(
                    "session.logon", {"key": "gx" + "0" * 24, "ts_ms": 1, "nonce": "n" * 8,
                                      "signature": "0" * 64, "sig_version": 2},
                )  # fmt: skip
                assert refused["status"] == 401, refused
                response = await rest(ex, "GET", "/metrics")
                assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
                live = _samples(response.text)
            assert live[("gx_gateway_connections", ())] == 2
            assert live[("gx_gateway_sessions", ())] == 1
            assert live[("gx_gateway_subscriptions", ())] >= 1
            assert live[("gx_gateway_send_queue_frames_max", ())] >= 0
            # four placements answered (three over the socket, one over REST)
            assert live[("gx_gateway_order_round_trip_seconds_count", ())] == 4
            assert live[("gx_gateway_order_round_trip_seconds_bucket", (("le", "+Inf"),))] == 4
            failures = {k: v for k, v in live.items() if k[0] == "gx_gateway_auth_failures_total"}
            assert sum(failures.values()) == 1, (refused, failures)
            assert live[("gx_gateway_signatures_total", (("version", "2"),))] >= 2

            # a refusal is counted under the limit that gave it
            async with socket(ex) as flood:
                for i in range(2 * ex.gateway.limits.ws_messages_per_conn_burst):
                    await flood.send_raw(orjson.dumps({"id": i + 1, "method": "ping"}))
                await ex.wait_for(
                    lambda: any(a["status"] == 429 for a in flood.answers.values()),
                    what="a RATE_LIMITED answer",
                )
            after = _samples((await rest(ex, "GET", "/metrics")).text)
            key = ("gx_gateway_rate_limit_refusals_total", (("limit", "WebSocket messages per connection"),))  # fmt: skip
            assert after[key] >= 1 and after[key] > before.get(key, 0)
            assert after[("gx_gateway_connections", ())] == 0

            # a database it cannot reach: not ready, and it says why (a closed pool of the
            # same database, as after PostgreSQL went away)
            pool = ex.gateway.pool
            gone = await asyncpg.create_pool(dsn, min_size=1, max_size=1)
            await gone.close()
            ex.gateway.pool = gone
            try:
                down = await rest(ex, "GET", "/readyz")
            finally:
                ex.gateway.pool = pool
            assert down.status_code == 503, down.text
            assert down.json()["ready"] is False and down.json()["error"]["code"] == "UNAVAILABLE"
            assert "database" in down.json()
            assert (await rest(ex, "GET", "/readyz")).status_code == 200

            # health(): what `gx gateway` watches to say it waits for the broker, and resumed
            server = ex.stack.gateway
            assert server is not None
            look = await server.health()
            assert look.ready and look.lag is not None and look.database is True, look
            broker.broker_down(-1)
            try:
                look = await server.health()
                assert look.lag is None and not look.ready, look
            finally:
                broker.broker_up(-1)
            for _ in range(100):
                look = await server.health()
                if look.ready:
                    break
                await asyncio.sleep(0.1)
            assert look.ready and look.lag is not None, look

    run(scenario(), timeout_s=120)
