"""The gateway application: Litestar routes (REST, `/ws`, `/ready`), errors, start-up, `serve`.

`GatewayServer` owns what one gateway process holds (the hub's Kafka clients, a PostgreSQL pool,
the key store) and runs Litestar on uvicorn; tests and the sandbox start it in-process on a
loopback port, `gx gateway` in the foreground.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import uvicorn
from litestar import Litestar, Request, Response, get
from litestar.exceptions import HTTPException, SerializationException
from litestar.openapi import OpenAPIConfig
from litestar.routes import HTTPRoute
from litestar.static_files import create_static_files_router
from litestar.types import Message, Scope

from exchange.gateway.accounts import Accounts
from exchange.gateway.asyncapi import PATH as ASYNCAPI_PATH
from exchange.gateway.asyncapi import asyncapi_document
from exchange.gateway.context import Gateway
from exchange.gateway.deliveries import Deliveries
from exchange.gateway.hub import Hub
from exchange.gateway.keys import KeyStore
from exchange.gateway.market_feed import MarketFeed
from exchange.gateway.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from exchange.gateway.openapi import GatewayDocument, closed, components
from exchange.gateway.orders import (
    PLACE_RULES,
    AmendParams,
    CapacityParams,
    PlaceParams,
    RouteParams,
)
from exchange.gateway.provisioning import Provisioning
from exchange.gateway.ratelimit import RateLimits
from exchange.gateway.rest import (
    AccountController,
    DisputeBody,
    KeyParams,
    OrderController,
    ProviderController,
    PublicController,
    SshKeyParams,
)
from exchange.gateway.snapshot import GatewaySnapshots
from exchange.gateway.ssh_keys import SshKeyStore
from exchange.gateway.subscriptions import Subscriptions
from exchange.gateway.transfers import WithdrawParams
from exchange.gateway.ws import serve_socket
from exchange.wire import ErrorCode, Prices, WireError
from schemas.catalog import Catalog, load_catalog
from streams.ledger.schema import migrate
from streams.metrics import Health, check_health
from streams.settings import Settings

__all__ = ["GatewayServer", "build_app", "request_body_bytes_max", "ready_wait_s"]

log = logging.getLogger("gx.gateway")

WEB_DIR = Path(__file__).resolve().parent.parent / "web"  # the market page's files
request_body_bytes_max = 65_536  # REST bodies; larger ones get PAYLOAD_TOO_LARGE
ws_frame_bytes_max = 1_048_576  # uvicorn closes a socket sending more (1009); smaller: answered
http_error_chars_max = 300  # a refusal Litestar raised quotes at most this much
database_check_timeout_s = 2.0  # /readyz: PostgreSQL answers `SELECT 1` within this
ready_wait_s = 60.0  # start() waits this long for the hub to be ready before it listens anyway
# The REST bodies: each refuses unknown fields, and the document says so.
_BODIES = (
    PlaceParams,
    AmendParams,
    RouteParams,
    CapacityParams,
    WithdrawParams,
    KeyParams,
    SshKeyParams,
    DisputeBody,
)
_HTTP_CODES = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.BAD_REQUEST,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.UNAVAILABLE,
}


class WireRequest(Request[Any, Any, Any]):
    """A request whose JSON body nested too deeply is a client error (400), not a crash.

    msgspec's decoder raises RecursionError, which Litestar would answer 500; its
    SerializationException becomes Litestar's 400, answered by `_http_error`.
    """

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise SerializationException("body: JSON nested too deeply") from None


def _retry_after(error: WireError) -> dict[str, str]:
    """The `Retry-After` header (whole seconds, rounded up) of an error that says when."""
    if not error.retry_after_ms:
        return {}
    return {"Retry-After": str(max(1, -(-error.retry_after_ms // 1000)))}


def _wire_error(_: Request[Any, Any, Any], error: WireError) -> Response[Any]:
    return Response({"error": error.body()}, status_code=error.status, headers=_retry_after(error))


def _field_error(item: object) -> str:
    if not isinstance(item, dict):
        return str(item)
    message = str(item.get("message", ""))
    if "matching regex" in message:
        message = "expected the pattern of the OpenAPI document (/api/v1/schema/openapi.json)"
    return f"{item.get('key', '?')}: {message}"


def _http_error(_: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    fallback = ErrorCode.INTERNAL if error.status_code >= 500 else ErrorCode.BAD_REQUEST
    code = _HTTP_CODES.get(error.status_code, fallback)
    detail = str(error.detail)
    extra = getattr(error, "extra", None)
    if isinstance(extra, list):  # Litestar's validation errors: name each field, not its regex
        detail += ": " + "; ".join(_field_error(item) for item in extra)
    elif extra:
        detail += f": {extra}"
    if len(detail) > http_error_chars_max:  # the path or a value may be long
        detail = detail[: http_error_chars_max - 3] + "..."
    wire = WireError(code, detail)
    # Litestar's own headers stay: `Allow` on 405 (RFC 9110 requires it).
    return Response({"error": wire.body()}, status_code=error.status_code, headers=error.headers)


def _allow_fixer(app: Litestar) -> Any:
    """A `before_send` hook: an OPTIONS answer lists every method of its path in `Allow`.

    Litestar builds the OPTIONS handler of a path when its first handler is registered, so its
    `Allow` names that handler's method alone (GET /orders/{id} hides PATCH and DELETE).
    """
    methods: dict[str, str] = {}
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            methods[route.path] = ", ".join(sorted(route.methods))

    async def before_send(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
            return
        handler = scope.get("route_handler")
        path = next(iter(getattr(handler, "paths", ())), None)
        allow = methods.get(path) if path is not None else None
        if allow is not None:
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"allow"]
            message["headers"] = [*headers, (b"allow", allow.encode())]

    return before_send


def _document_rules(catalog: Catalog) -> dict[str, dict[str, Any]]:
    rules = closed(*_BODIES)
    rules[PlaceParams.__name__] = {**rules[PlaceParams.__name__], **PLACE_RULES}
    # A route names regions and products of this catalog, each at most once (orders.py).
    names = {"regions": list(catalog.regions), "products": [p.code for p in catalog.products]}
    rules[RouteParams.__name__]["properties"] = {
        field: {"items": {"enum": known}, "uniqueItems": True, "maxItems": len(known)}
        for field, known in names.items()
    }
    return rules


def _unexpected_error(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    """Answer a bug in the wire's shape (INTERNAL, 500), never Litestar's own body; log it."""
    log.error(
        "%s %s failed (a bug; the client got INTERNAL): report it with this traceback",
        request.method,
        request.url.path,
        exc_info=error,
    )
    wire = WireError.internal()
    return Response({"error": wire.body()}, status_code=wire.status)


@get(["/readyz", "/ready"], include_in_schema=False)
async def ready(request: Request[Any, Any, Any]) -> Response[Any]:
    """Readiness: 200 once the gateway has read the exchange's log up to where it ended at start
    (its private endpoints answer from then on) and PostgreSQL answers, else 503 saying which:
    the offsets left by topic, or the database's error."""
    gateway: Gateway = request.app.state.gateway
    try:
        gateway.require_ready()
    except WireError as error:
        body = {"ready": False, "behind": gateway.hub.behind(), "error": error.body()}
        return Response(body, status_code=error.status, headers=_retry_after(error))
    try:
        async with asyncio.timeout(database_check_timeout_s):
            await gateway.pool.fetchval("SELECT 1")
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        unavailable = WireError(
            ErrorCode.UNAVAILABLE, f"database: {type(error).__name__}", retry_after_ms=1_000
        )
        body = {"ready": False, "database": str(error)[:200], "error": unavailable.body()}
        return Response(body, status_code=unavailable.status, headers=_retry_after(unavailable))
    return Response({"ready": True})


@get("/healthz", include_in_schema=False, sync_to_thread=False)
def healthz() -> dict[str, bool]:
    """Liveness: the process serves requests (whatever the log or the database)."""
    return {"alive": True}


@get("/metrics", include_in_schema=False, sync_to_thread=False)
def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """The gateway's Prometheus metrics (exchange/gateway/metrics.py)."""
    gateway: Gateway = request.app.state.gateway
    return Response(gateway.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


def asgi_app(gateway: Gateway, app: Litestar) -> Any:
    """`/ws` served directly, everything else by Litestar."""

    async def serve(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            await serve_socket(gateway, scope, receive, send)
        else:
            await app(scope, receive, send)

    return serve


@get(ASYNCAPI_PATH, include_in_schema=False, sync_to_thread=False)
def asyncapi_json(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Serve the AsyncAPI document of `/ws` and the topics (built once per app)."""
    state = request.app.state
    body = state.get("asyncapi")
    if body is None:
        settings = getattr(state.gateway.hub, "settings", None)  # the topics this gateway uses
        body = state.asyncapi = msgspec.json.encode(asyncapi_document(settings))
    return Response(body, media_type="application/json")


def build_app(gateway: Gateway, extra_handlers: list[Any] | None = None) -> Litestar:
    """The Litestar application serving one gateway's REST API and the market page (`/`)."""
    page = create_static_files_router(
        path="/", directories=[WEB_DIR], html_mode=True, include_in_schema=False, name="page"
    )
    app = Litestar(
        route_handlers=[
            PublicController,
            AccountController,
            OrderController,
            ProviderController,
            ready,
            healthz,
            metrics,
            asyncapi_json,
            *(extra_handlers or []),
            page,
        ],
        exception_handlers={
            WireError: _wire_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        request_class=WireRequest,
        # The JSON document only: a documentation page would load its scripts from a CDN into
        # the gateway's origin, where the signing keys of the market page live.
        openapi_config=OpenAPIConfig(
            title="gpu-exchange gateway",
            version="1",
            path="/api/v1/schema",
            components=components(),
            render_plugins=[
                GatewayDocument(gateway.prices.pattern, rules=_document_rules(gateway.catalog))
            ],
        ),
        request_max_body_size=request_body_bytes_max,
        # Litestar's default logging config sets the root logger to INFO with its own handler:
        # logging stays the process's (quiet by default).
        logging_config=None,
    )
    app.state.gateway = gateway
    app.before_send.append(_allow_fixer(app))  # type: ignore[arg-type]
    return app


# uvicorn's WebSocket implementation: its sans-I/O protocol lets exchange/gateway/fanout.py `Frames`
# write a batch of frames at once. Any other (uvicorn's "websockets") is served through plain
# ASGI sends, one per frame (the tests run the feed over both).
WEBSOCKET_IMPL = "websockets-sansio"


class GatewayServer:
    """One gateway: connect to Kafka and PostgreSQL, read the topics, serve HTTP and WebSocket."""

    def __init__(
        self,
        settings: Settings,
        dsn: str,
        *,
        catalog: Catalog | None = None,
        mock_broker: bool = False,
        host: str | None = None,
        port: int | None = None,
        limits: RateLimits | None = None,
        extra_handlers: list[Any] | None = None,
        websocket_impl: str = WEBSOCKET_IMPL,
    ) -> None:
        self.settings = settings
        self.dsn = dsn
        self.websocket_impl = websocket_impl
        self.catalog = catalog or load_catalog()
        self.mock_broker = mock_broker
        self.host = host or settings.gateway_host
        self.port = settings.gateway_port if port is None else port
        self.limits = limits
        self.extra_handlers = extra_handlers
        self.gateway: Gateway | None = None
        self.app: Litestar | None = None
        self._pool: asyncpg.Pool | None = None
        self._snapshots: GatewaySnapshots | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect, read the topics to their end, and listen; return once serving."""
        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=8)
        async with self._pool.acquire() as conn:
            await migrate(conn)
        keys = KeyStore(self._pool, self.settings.gateway_master_key)
        # The projections and the subscriptions: the hub feeds them, the handlers read them.
        prices = Prices(self.catalog.tick_micros)
        ssh_keys = SshKeyStore(self._pool)
        accounts, feed = Accounts(prices), MarketFeed(prices)
        provisioning = Provisioning(keys_of=ssh_keys.cached)
        deliveries = Deliveries(accounts)
        subscriptions = Subscriptions(feed)
        if self.settings.gateway_snapshot_every_events:
            self._snapshots = GatewaySnapshots(self.dsn)
            await self._snapshots.open()
        hub = Hub(
            self.settings,
            accounts=accounts,
            feed=feed,
            provisioning=provisioning,
            deliveries=deliveries,
            subscriptions=subscriptions,
            ssh_keys=ssh_keys,
            mock_broker=self.mock_broker,
            snapshots=self._snapshots,
        )
        keys.client_order_live = accounts.client_order_live
        await hub.start()
        self.gateway = Gateway(
            self.catalog,
            hub,
            keys,
            self._pool,
            self.limits,
            accounts=accounts,
            feed=feed,
            provisioning=provisioning,
            deliveries=deliveries,
            subscriptions=subscriptions,
            ssh_keys=ssh_keys,
        )
        self.gateway.sessions.start()  # revocations made elsewhere close this gateway's sessions
        try:
            async with asyncio.timeout(ready_wait_s):
                await hub.ready.wait()
        except TimeoutError:
            log.warning(
                "topics not read to their end after %.0f s (%s offsets left); serving market data "
                "now, private endpoints and GET /ready once caught up",
                ready_wait_s, hub.behind(),
            )  # fmt: skip
        self.app = build_app(self.gateway, self.extra_handlers)
        config = uvicorn.Config(
            asgi_app(self.gateway, self.app),
            host=self.host,
            port=self.port,
            log_level="warning",
            log_config=None,  # uvicorn's records go through the process's logging (JSON or text)
            ws_max_size=ws_frame_bytes_max,
            # Compression would run zlib per message per connection: the fan-out's largest cost,
            # for pushes of a few hundred bytes. Off: each push is framed as encoded, once.
            ws_per_message_deflate=False,
            ws=self.websocket_impl,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not listen
                raise RuntimeError(f"gateway: could not listen on {self.host}:{self.port}")
            await asyncio.sleep(0.02)
        if self.port == 0:
            sockets = self._server.servers[0].sockets
            self.port = sockets[0].getsockname()[1]

    async def health(self) -> Health:
        """Ready: the hub is within `ready_lag_records_max` of its topics' ends and PostgreSQL
        answers; so the gateway, like every stream process, says when it waits for either and
        when it resumed (streams/waits.py, run by streams/process.py)."""
        hub = None if self.gateway is None else self.gateway.hub
        lag = None if hub is None else hub.lag()
        if hub is None or lag is None:
            return Health(ready=False, lag={})  # starting
        return await check_health(
            hub.ready.is_set(), lag, self.dsn, self.settings.ready_lag_records_max
        )

    @property
    def url(self) -> str:
        """The HTTP base URL."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        """Ask the server to stop: `run()` then closes everything and returns."""
        if self._server is not None:
            self._server.should_exit = True

    async def close(self) -> None:
        """Stop listening (closing sockets), then the hub and the pool."""
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 10)
        if self.gateway is not None:
            await self.gateway.sessions.stop()
            self.gateway.dead_man.fire_all()  # sent before the hub stops (it waits for them)
            await self.gateway.hub.stop()
            self.gateway.subscriptions.close()
        if self._snapshots is not None:
            await self._snapshots.close()
        if self._pool is not None:
            await self._pool.close()

    async def run(self) -> None:
        """Serve until `stop()` (or SIGINT/SIGTERM, which uvicorn also handles)."""
        await self.start()
        try:
            assert self._task is not None
            await self._task
        finally:
            await self.close()
