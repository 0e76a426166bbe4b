"""The gateway's Prometheus metrics (`GET /metrics`), from the `prometheus-client` library.

Most figures are read from the gateway's own state when Prometheus scrapes (connections,
sessions, subscriptions, send queues, refusals counted by each limiter, how far the hub is
behind the log): nothing on the request path pays for them. Only the order round trip is a
histogram observed as each placement is answered.

Each gateway has a registry of its own, not the library's global one, so that several gateways
in one process (the tests, the sandbox) each report their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from exchange.gateway.context import Gateway

__all__ = ["GatewayMetrics", "CONTENT_TYPE", "ROUND_TRIP_BUCKETS_S"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format
# An order's place -> answer: the broker's fetch wait (10 ms) is the floor, 5 s the timeout.
ROUND_TRIP_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _GatewayState(Collector):
    """Reads a gateway's live state at each scrape."""

    def __init__(self, gateway: Gateway) -> None:
        self._gw = gateway

    def collect(self) -> Iterator[Metric]:
        gw = self._gw
        live = list(gw.live_connections)
        yield _gauge("gx_gateway_connections", "open WebSocket connections", len(live))
        sessions = sum(1 for c in live if c.account is not None)
        yield _gauge("gx_gateway_sessions", "logged-on WebSocket connections", sessions)
        streams = sum(len(c.public) + len(c.private) for c in live)
        yield _gauge("gx_gateway_subscriptions", "streams subscribed, all connections", streams)
        depths = [len(c.queue) for c in live]
        yield _gauge("gx_gateway_send_queue_frames", "frames queued, all connections", sum(depths))
        yield _gauge(
            "gx_gateway_send_queue_frames_max",
            "frames queued for the connection with most",
            max(depths, default=0),
        )
        refusals = CounterMetricFamily(
            "gx_gateway_rate_limit_refusals",
            "requests refused RATE_LIMITED, by limit",
            labels=["limit"],
        )
        for limiter in gw.limiters.values():
            refusals.add_metric([limiter.name], limiter.refusals)
        refusals.add_metric([gw.connections.name], gw.connections.refusals)
        yield refusals
        failures = CounterMetricFamily(
            "gx_gateway_auth_failures",
            "signed requests and logons refused, by code",
            labels=["code"],
        )
        for code, count in sorted(gw.auth_failures.items()):
            failures.add_metric([code], count)
        yield failures
        signed = CounterMetricFamily(
            "gx_gateway_signatures", "signatures accepted, by version", labels=["version"]
        )
        for version, count in sorted(gw.signature_versions.items()):
            signed.add_metric([str(version)], count)
        yield signed
        hub = gw.hub
        if hub is None:  # an offline gateway (tests): no log to read
            return
        yield _gauge("gx_gateway_ready", "1 once the hub has read the log to its start's end", int(hub.ready.is_set()))  # fmt: skip
        behind = GaugeMetricFamily(
            "gx_gateway_behind_offsets",
            "offsets left to read before ready, by topic",
            labels=["topic"],
        )
        for topic, left in sorted(hub.behind().items()):
            behind.add_metric([topic], left)
        yield behind


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class GatewayMetrics:
    """One gateway's registry: its live state, and the order round-trip histogram."""

    def __init__(self, gateway: Gateway) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_GatewayState(gateway))
        self.order_round_trip = Histogram(
            "gx_gateway_order_round_trip_seconds",
            "order placement received -> answered (the engine's events read back)",
            buckets=ROUND_TRIP_BUCKETS_S,
            registry=self.registry,
        )

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return bytes(generate_latest(self.registry))
