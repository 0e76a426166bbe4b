"""What every request handler of one gateway shares: projections, subscriptions, desk, keys, limits.

Handlers read account state from `accounts`, market data from `feed`, provisioning requests
from `provisioning` and deliveries from `deliveries`, register subscribers with `subscriptions`, and send commands through `desk`
(order entry) or `hub` (background cancels); the hub feeds the projections from Kafka.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import asyncpg

from exchange.gateway import auth
from exchange.gateway.accounts import Accounts
from exchange.gateway.dead_man import DeadManSwitches
from exchange.gateway.deliveries import DELIVERY_ROLES, DELIVERY_STATES, Deliveries
from exchange.gateway.hub import Hub
from exchange.gateway.keys import SCOPES, ApiKey, KeyStore, is_key_id
from exchange.gateway.market_feed import MarketFeed
from exchange.gateway.metrics import GatewayMetrics
from exchange.gateway.orders import OrderDesk, PlaceParams, RouteParams, route_children_max
from exchange.gateway.provisioning import Provisioning
from exchange.gateway.ratelimit import ConnectionCounter, RateLimiter, RateLimits
from exchange.gateway.sessions import Sessions
from exchange.gateway.ssh_keys import FINGERPRINT_RE, SshKeyStore
from exchange.gateway.subscriptions import Subscriptions
from exchange.wire import ErrorCode, Prices, WireError
from schemas.catalog import Catalog

__all__ = ["Gateway", "SEND_QUEUE_MAX", "SEND_QUEUE_RESERVE", "not_ready_retry_after_ms"]

log = logging.getLogger("gx.gateway")

# Frames of every kind (answers, pushes, snapshots, replays, heartbeats, resync notices) waiting
# for one connection; a frame that finds the queue full closes the connection (ws.py).
SEND_QUEUE_MAX = 2_000
# The last frames of that queue are kept for answers, heartbeats and resync notices: pushes,
# snapshots and replays stop SEND_QUEUE_RESERVE short of it (the subscription gets
# `resync_required`, a replay becomes a snapshot), so a client that falls behind is told.
SEND_QUEUE_RESERVE = 200
not_ready_retry_after_ms = 1_000  # what a private request refused before the gateway is ready waits

# Each rate limiter: its kind (`check_rate`'s), the `RateLimits` fields `<limit>_per_s` and
# `<limit>_burst`, and what a refusal names.
_LIMITERS = (
    ("rest_account", "rest_per_account", "REST requests per account"),
    ("rest_ip", "rest_per_ip", "REST requests per IP"),
    ("ws_message", "ws_messages_per_conn", "WebSocket messages per connection"),
    ("ws_account_message", "ws_messages_per_account", "WebSocket messages per account"),
    ("ws_ip_message", "ws_messages_per_ip", "WebSocket messages per IP"),
    (
        "ws_refusal",
        "ws_refusals_per_account",
        "RATE_LIMITED answers per account (per IP before logon)",
    ),  # fmt: skip
    ("orders", "orders_per_account", "orders per account"),
    ("ws_logon_ip", "ws_logons_per_ip", "WebSocket logons per IP"),
    ("ws_logon_conn", "ws_logons_per_conn", "WebSocket logons per connection"),
)


class Gateway:
    """One gateway's shared state; handlers reach it as `request.app.state.gateway`."""

    def __init__(
        self,
        catalog: Catalog,
        hub: Hub,
        keys: KeyStore,
        pool: asyncpg.Pool,
        limits: RateLimits | None = None,
        *,
        accounts: Accounts,
        feed: MarketFeed,
        provisioning: Provisioning,
        deliveries: Deliveries,
        subscriptions: Subscriptions,
        ssh_keys: SshKeyStore | None = None,
    ) -> None:
        self.catalog = catalog
        self.prices = Prices(catalog.tick_micros)
        self.hub = hub
        self.accounts = accounts
        self.feed = feed
        self.provisioning = provisioning
        self.deliveries = deliveries
        self.subscriptions = subscriptions
        self.keys = keys
        self.sessions = Sessions(keys)  # logged-on WebSocket sessions; the server starts its watch
        self.ssh_keys = ssh_keys or SshKeyStore(pool)
        self.pool = pool
        self.limits = limits or RateLimits()
        self.desk = OrderDesk(
            hub, accounts, feed, provisioning, keys, catalog, self.prices, deliveries=deliveries
        )
        # `cancel_all_after` per account, beyond any one socket of it
        self.dead_man = DeadManSwitches(
            lambda command: self.hub.submit_later(command), shard=self.desk.shard
        )
        lim = self.limits
        self.limiters = {
            kind: RateLimiter(
                getattr(lim, f"{limit}_per_s"), getattr(lim, f"{limit}_burst"), name=name
            )
            for kind, limit, name in _LIMITERS
        }
        self.connections = ConnectionCounter(lim.ws_connections_per_ip)
        # each child takes an order token: never more children than the bucket can ever hold
        self.route_children_max = min(route_children_max, lim.orders_per_account_burst)
        # Signatures accepted, by version: an operator sees whether clients still sign v1
        # before auth.SIGN_V1_ACCEPTED_UNTIL_MS.
        self.signature_versions: dict[int, int] = {}
        self.auth_failures: dict[str, int] = {}  # signed requests and logons refused, by code
        self.live_connections: set[Any] = set()  # open WebSocket connections (ws.Connection)
        self.metrics = GatewayMetrics(self)
        self.send_queue_max = SEND_QUEUE_MAX
        self.send_queue_pushes_max = SEND_QUEUE_MAX - SEND_QUEUE_RESERVE
        self._gpus = {g.model for g in catalog.gpus}
        self._curves = {
            f"{g.model}.{r}.{p.code}"
            for g in catalog.gpus
            for r in catalog.regions
            for p in catalog.products
        }

    # ------------------------------------------------------------------ limits and auth

    def check_rate(self, name: str, kind: str, cost: int = 1) -> None:
        """Take `cost` tokens from the named bucket of a limiter; raise RATE_LIMITED when short."""
        self.limiters[kind].check(name, time.monotonic(), cost)

    def check_orders(self, account: int) -> None:
        """Apply the per-account order-entry limit (shared by every key of the account)."""
        self.check_rate(f"orders:{account}", "orders")

    def check_ip(self, request: Any) -> None:
        """Apply the per-IP REST limit."""
        client = request.client
        self.check_rate(f"ip:{client.host if client else '?'}", "rest_ip")

    async def verify(
        self,
        key_id: object,
        ts_ms: object,
        nonce: object,
        signature: object,
        method: str,
        path: str,
        body: bytes,
        *,
        sig_version: object,
    ) -> ApiKey:
        """Verify a signed request or logon (`sig_version` as received, None when absent);
        return its key."""
        now_ms = time.time_ns() // 1_000_000
        try:
            key = await auth.verify(
                self.keys,
                key_id,
                ts_ms,
                nonce,
                signature,
                method,
                path,
                body,
                now_ms,
                sig_version=sig_version,
            )
        except WireError as error:
            self.auth_failures[error.code] = self.auth_failures.get(error.code, 0) + 1
            raise
        version = auth.sign_version(sig_version)
        if version == 1 and not self.signature_versions.get(1):
            log.warning(
                "key %s signed with signature version 1, accepted until %s: move the clients "
                "to version 2 (exchange/wire.py)",
                key.key_id,
                auth.SIGN_V1_ACCEPTED_UNTIL,
            )
        self.signature_versions[version] = self.signature_versions.get(version, 0) + 1
        return key

    async def place(self, account: int, p: PlaceParams) -> dict[str, Any]:
        """Place an order (REST and WebSocket), its round trip observed for the metrics."""
        started = time.perf_counter()
        result = await self.desk.place(account, p)
        self.metrics.order_round_trip.observe(time.perf_counter() - started)
        return result

    def require_ready(self) -> None:
        """Refuse a private request with UNAVAILABLE (retryable) until the hub is ready.

        Before it, the projections hold a past state of the exchange (the hub is still reading
        the topics from their beginning): an account's orders and balances would be missing or
        stale, and a command's events would arrive only after it timed out.
        """
        if self.hub.ready.is_set():
            return
        left = sum(self.hub.behind().values())
        raise WireError(
            ErrorCode.UNAVAILABLE,
            f"the gateway is still reading the exchange's log ({left} offsets left) and cannot "
            "answer for accounts yet; retry shortly (GET /ready says when it can)",
            retry_after_ms=not_ready_retry_after_ms,
        )

    async def authenticate(self, request: Any, scope: str) -> ApiKey:
        """Verify a signed REST request and its scope; apply the per-account and per-IP limits.

        Refused UNAVAILABLE while the gateway is not ready (`require_ready`).
        """
        self.check_ip(request)
        self.require_ready()
        key_id, ts_ms, nonce, signature = auth.headers_of(request.headers)
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        path = raw_path.decode("latin-1")
        query = request.scope.get("query_string", b"")
        if query:
            path += "?" + query.decode("latin-1")
        body = await request.body()
        version = auth.sign_version_header(request.headers)
        key = await self.verify(
            key_id, ts_ms, nonce, signature, request.method, path, body, sig_version=version
        )
        self.check_rate(f"account:{key.account}", "rest_account")
        auth.require_scope(key, scope)
        return key

    async def route(self, account: int, key_id: str, p: RouteParams) -> dict[str, Any]:
        """Route a buy (`order.route`, `POST /route`): one order token per child placed.

        The request took one token on entry (it pays for the first child); the other children
        take theirs before any is placed, or the route is refused RATE_LIMITED, nothing placed.
        """

        def charge(children: int) -> None:
            self.check_rate(f"orders:{account}", "orders", children)

        return await self.desk.route(
            account, p, charge=charge, children_max=self.route_children_max
        )

    def known_symbol(self, channel: str, symbol: str) -> bool:
        """Tell whether a channel's symbol exists (listed instrument, GPU model, curve)."""
        if channel == "index":
            return symbol in self._gpus
        if channel == "curve":
            return symbol in self._curves
        return bool(self.accounts.is_listed(symbol))

    def check_logon(self, connection: Any) -> None:
        """Apply the per-connection, then the per-IP limit on `session.logon` attempts."""
        now_s = time.monotonic()
        self.limiters["ws_logon_conn"].check(f"conn:{connection.id}", now_s)
        self.limiters["ws_logon_ip"].check(f"ip:{connection.ip}", now_s)

    def connections_closed(self, connection: Any) -> None:
        """Forget what a closed connection held (its message and logon buckets)."""
        self.limiters["ws_message"].forget(f"conn:{connection.id}")
        self.limiters["ws_logon_conn"].forget(f"conn:{connection.id}")

    # ------------------------------------------------------------------ keys

    async def list_keys(self, account: int) -> list[dict[str, Any]]:
        """The account's keys, without secrets."""
        keys = await self.keys.list(account)
        return [
            {
                "key": k.key_id,
                "scopes": list(k.scopes),
                "created_ns": str(k.created_ns),
                "revoked": k.revoked,
                "parent": k.parent_key_id,
            }
            for k in keys
        ]

    async def create_key(self, caller: ApiKey, scopes: Any) -> dict[str, Any]:
        """Create a key for the caller's account with at most the caller's scopes, minted under
        the caller: revoking the caller revokes it."""
        if (
            not isinstance(scopes, list)
            or not scopes
            or not all(isinstance(s, str) for s in scopes)
        ):
            raise WireError(ErrorCode.BAD_REQUEST, f"scopes: expected a list of {SCOPES}")
        extra = set(scopes) - set(caller.scopes)
        if extra:
            raise WireError(ErrorCode.FORBIDDEN, f"scopes: this key cannot grant {sorted(extra)}")
        key, secret = await self.keys.create(caller.account, scopes, parent_key_id=caller.key_id)
        return {
            "key": key.key_id,
            "secret": secret,
            "scopes": list(key.scopes),
            "parent": caller.key_id,
        }

    async def revoke_key(self, account: int, key_id: str) -> dict[str, Any]:
        """Revoke one of the account's keys and those minted under it, and close their sessions
        here (other gateways poll)."""
        # Only a key id's form reaches the database (a NUL character would fail the query).
        revoked = await self.keys.revoke(account, key_id) if is_key_id(key_id) else []
        if not revoked:
            raise WireError(ErrorCode.NOT_FOUND, f"no key {key_id!r} of this account")
        for gone in revoked:
            self.sessions.revoked(gone)
        return {"key": key_id, "revoked": True, "revoked_keys": revoked}

    # ------------------------------------------------------------------ deliveries

    def list_deliveries(
        self, account: int, state: str | None = None, role: str | None = None
    ) -> dict[str, Any]:
        """The account's deliveries as holder and provider (`GET /deliveries`, `delivery.list`)."""
        if state is not None and state not in DELIVERY_STATES:
            raise WireError(
                ErrorCode.BAD_REQUEST, f"state: expected one of {DELIVERY_STATES}, found {state!r}"
            )
        if role is not None and role not in DELIVERY_ROLES:
            raise WireError(
                ErrorCode.BAD_REQUEST, f"role: expected holder or provider, found {role!r}"
            )
        return {"deliveries": self.deliveries.deliveries(account, state, role)}

    # ------------------------------------------------------------------ SSH keys

    async def list_ssh_keys(self, account: int) -> dict[str, Any]:
        """The account's SSH public keys, oldest first."""
        return {"ssh_keys": [k.view() for k in await self.ssh_keys.list(account)]}

    async def add_ssh_key(self, account: int, public_key: Any) -> dict[str, Any]:
        """Register an SSH public key; the answer names it by its fingerprint."""
        return (await self.ssh_keys.add(account, public_key)).view()

    async def remove_ssh_key(self, account: int, fingerprint: Any) -> dict[str, Any]:
        """Remove one of the account's SSH keys by fingerprint."""
        if (
            not isinstance(fingerprint, str)
            or FINGERPRINT_RE.fullmatch(fingerprint) is None
            or not await self.ssh_keys.remove(account, fingerprint)
        ):
            raise WireError(ErrorCode.NOT_FOUND, f"no SSH key {fingerprint!r} of this account")
        return {"fingerprint": fingerprint, "removed": True}

    def catalog_view(self) -> dict[str, Any]:
        """The catalog as the wire shows it (prices as decimal strings)."""
        cat = self.catalog
        p = self.prices
        return {
            "tick": p.to_str(1),
            "lots_max": cat.lots_max,
            "regions": list(cat.regions),
            "gpus": [
                {
                    "model": g.model,
                    "memory_gb": g.memory_gb,
                    "interconnect": g.interconnect,
                    "reference_price": p.to_str(g.reference_price_ticks),
                }
                for g in cat.gpus
            ],
            "products": [{"code": pr.code, "hours": pr.hours} for pr in cat.products],
            "maker_fee_bps": cat.maker_fee_bps,
            "taker_fee_bps": cat.taker_fee_bps,
        }
