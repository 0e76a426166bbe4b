"""The async client: REST calls and WebSocket feeds and order entry under ccxt-style names.

    async with Client("http://127.0.0.1:8080", key, secret) as c:
        book = await c.fetch_order_book("H100-SXM.us-east.1h.2026-12-01T14")
        placed = await c.create_order(symbol, "limit", "buy", 5, "2.400")
        async for book in c.watch_order_book(symbol):
            print(book.best_bid(), book.best_ask())

REST goes through httpx (signed per `exchange/wire.py`); the WebSocket opens lazily on the first
watch or WebSocket call and stays open, reconnecting and resubscribing by itself. Placement
(REST and WebSocket) always carries a `client_order_id`, so retries after a lost answer are
idempotent: the gateway answers a repeated id with the order the first attempt made.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from types import TracebackType
from typing import Any, TypeVar

import httpx

from exchange.client.book import LocalBook
from exchange.client.errors import GatewayError, NetworkError
from exchange.client.feeds import ACCOUNT_CHANNELS, BOOK_DEPTHS, Feeds, Watch
from exchange.client.models import (
    Balance,
    Candle,
    Delivery,
    DeliveryUpdate,
    Execution,
    Fees,
    Fill,
    LedgerEntry,
    LedgerPage,
    Market,
    Order,
    OrderBook,
    OrderResult,
    Position,
    ProvisionRequest,
    RouteResult,
    SshKey,
    Ticker,
    Trade,
    Transfer,
    to_model,
)
from exchange.client.orders import Number, amend_body, decimal_str, order_body, route_body
from exchange.client.rest import (
    RETRIES_MAX,
    RETRY_BACKOFF_S,
    RETRY_DELAY_S_MAX,
    RestTransport,
    segment,
)
from exchange.client.signing import Credentials
from exchange.client.ws import HEARTBEAT_TIMEOUT_S, WsSession

__all__ = ["Client", "TIMEFRAMES", "TIMEOUT_S", "DEFAULT_BASE_URL"]

log = logging.getLogger("gx.client")

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
TIMEOUT_S = 10.0  # per REST request and per WebSocket answer
TIMEFRAMES = ("1m", "1h", "1d")
R = TypeVar("R")


def _ws_url(base_url: str) -> str:
    url = base_url.rstrip("/")
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :] + "/ws"
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :] + "/ws"
    raise ValueError(f"base_url: expected http:// or https://, found {base_url!r}")


def _timeframe(timeframe: str) -> str:
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"timeframe: expected one of {TIMEFRAMES}, found {timeframe!r}")
    return timeframe


def _book_depth(limit: int) -> int:
    """Return the smallest subscribable depth holding `limit` levels."""
    for depth in BOOK_DEPTHS:
        if limit <= depth:
            return depth
    raise ValueError(f"limit: expected at most {BOOK_DEPTHS[-1]} levels, found {limit}")


class Client:
    """An async client of one gateway; use as `async with Client(...) as c:`."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        key: str | None = None,
        secret: str | None = None,
        *,
        timeout_s: float = TIMEOUT_S,
        retries_max: int = RETRIES_MAX,
        retry_backoff_s: float = RETRY_BACKOFF_S,
        ws_url: str | None = None,
        cancel_on_disconnect: str = "none",
        heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Configure the client; nothing connects until the first call.

        `retries_max` bounds the retries of reads and order placement after a network error,
        a timeout or a 5xx answer. `cancel_on_disconnect` (`none`, `connection`, `account`) is
        sent with the WebSocket logon. `transport` is an httpx transport (tests use a mock).
        """
        self.credentials = Credentials(key or "", secret or "") if key or secret else None
        self.retries_max = retries_max
        self.retry_backoff_s = retry_backoff_s
        self.rest = RestTransport(
            base_url,
            self.credentials,
            timeout_s=timeout_s,
            retries_max=retries_max,
            retry_backoff_s=retry_backoff_s,
            transport=transport,
        )
        self.feeds = Feeds()
        self.session = WsSession(
            ws_url or _ws_url(base_url),
            self.credentials,
            on_push=self.feeds.on_push,
            on_connected=self.feeds.on_connected,
            on_stopped=self.feeds.on_stopped,
            cancel_on_disconnect=cancel_on_disconnect,
            request_timeout_s=timeout_s,
            heartbeat_timeout_s=heartbeat_timeout_s,
        )
        self.feeds.bind(self.session)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """End every watch, close the WebSocket and the HTTP pool."""
        await self.feeds.close()
        await self.session.close()
        await self.rest.close()

    # ------------------------------------------------------------------ public REST

    async def fetch_markets(self) -> list[Market]:
        """Return the listed instruments, each with the catalog's tick."""
        answer = await self.rest.request("GET", "/instruments", retry=True)
        tick = (answer.get("catalog") or {}).get("tick")
        return [to_model({"tick": tick, **row}, Market) for row in answer.get("instruments", [])]

    async def fetch_order_book(self, symbol: str, limit: int = 10) -> OrderBook:
        """Return the book of `symbol` to `limit` levels per side."""
        answer = await self.rest.request(
            "GET", f"/book/{segment(symbol)}", query={"depth": limit}, retry=True
        )
        return to_model({"symbol": symbol, **answer}, OrderBook)

    async def fetch_trades(self, symbol: str, limit: int = 100) -> list[Trade]:
        """Return the latest public trades of `symbol`, newest first (as the gateway sends)."""
        answer = await self.rest.request(
            "GET", f"/trades/{segment(symbol)}", query={"limit": limit}, retry=True
        )
        return [to_model({"symbol": symbol, **t}, Trade) for t in answer.get("trades", [])]

    async def fetch_candles(
        self, symbol: str, timeframe: str = "1m", limit: int = 100
    ) -> list[Candle]:
        """Return the latest candles of `symbol`, oldest first."""
        answer = await self.rest.request(
            "GET",
            f"/candles/{segment(symbol)}",
            query={"interval": _timeframe(timeframe), "limit": limit},
            retry=True,
        )
        fields = {"symbol": symbol, "interval": timeframe}
        return [to_model({**fields, **row}, Candle) for row in answer.get("candles", [])]

    async def fetch_ohlcv(
        self, symbol: str, timeframe: str = "1m", limit: int = 100
    ) -> list[list[int | Decimal]]:
        """Return ccxt rows `[ts_ms, open, high, low, close, volume]`, oldest first."""
        return [c.ohlcv() for c in await self.fetch_candles(symbol, timeframe, limit)]

    async def fetch_ticker(self, symbol: str) -> Ticker:
        """Return an instrument's top of book, last trade and rolling 24 h figures."""
        answer = await self.rest.request("GET", f"/ticker/{segment(symbol)}", retry=True)
        return to_model(answer, Ticker)

    async def fetch_tickers(self) -> list[Ticker]:
        """Return the ticker of every instrument with a book or a trade."""
        answer = await self.rest.request("GET", "/tickers", retry=True)
        return [to_model(t, Ticker) for t in answer.get("tickers", [])]

    async def fetch_trading_fees(self) -> Fees:
        """Return the maker and taker fees and the delivery penalty."""
        return to_model(await self.rest.request("GET", "/fees", retry=True), Fees)

    # ------------------------------------------------------------------ private REST

    async def fetch_balance(self) -> Balance:
        """Return the account's cash by bucket."""
        return to_model(await self._get("/balances"), Balance)

    async def fetch_positions(self) -> list[Position]:
        """Return the account's positions (signed lots; short < 0)."""
        answer = await self._get("/positions")
        return [to_model(p, Position) for p in answer.get("positions", [])]

    async def create_order(
        self,
        symbol: str,
        type: str,
        side: str,
        amount: Number,
        price: Number | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> OrderResult:
        """Place an order; retry a lost answer up to `retries_max` times with the same id.

        `params` may hold `tif`, `post_only`, `stp`, `expire_ns` and `client_order_id`; one is
        generated when none is given. A refusal raises (RejectedError for the engine's).
        """
        body = order_body(symbol, type, side, amount, price, params)
        answer = await self.rest.request("POST", "/orders", body=body, private=True, retry=True)
        return to_model(answer, OrderResult)

    async def amend_order(self, id: int, price: Number, amount: Number) -> Order:
        """Change an open order's price and remaining quantity.

        `amount` is the lots still to fill (the engine's AmendOrder sets the remaining lots):
        the order's `qty` becomes `cum_qty + amount`. A pure decrease keeps time priority.
        """
        answer = await self.rest.request(
            "PATCH", f"/orders/{segment(id)}", body=amend_body(price, amount), private=True
        )
        return to_model(answer.get("order"), Order)

    async def edit_order(self, id: int, price: Number, amount: Number) -> Order:
        """ccxt's name for `amend_order`: `amount` is the lots still to fill."""
        return await self.amend_order(id, price, amount)

    async def fetch_ledger(
        self,
        limit: int = 100,
        cursor: str | None = None,
        since_ns: int | None = None,
        until_ns: int | None = None,
    ) -> LedgerPage:
        """Return a page of the account's ledger, newest first; pass `next_cursor` for more."""
        query = {"limit": limit, "cursor": cursor, "from": since_ns, "to": until_ns}
        return to_model(await self._get("/ledger", query), LedgerPage)

    async def fetch_statement(
        self, since_ns: int | None = None, until_ns: int | None = None
    ) -> list[LedgerEntry]:
        """Return the period's ledger entries, oldest first, each with its running balance."""
        answer = await self._get("/statements", {"from": since_ns, "to": until_ns})
        return [to_model(e, LedgerEntry) for e in answer.get("entries", [])]

    async def cancel_order(self, id: int) -> Order:
        """Cancel one order; return it as cancelled."""
        answer = await self.rest.request("DELETE", f"/orders/{segment(id)}", private=True)
        return to_model(answer.get("order"), Order)

    async def cancel_all_orders(self, symbol: str | None = None) -> int:
        """Cancel every open order (of `symbol` if given); return how many were cancelled."""
        answer = await self.rest.request(
            "DELETE", "/orders", query={"symbol": symbol}, private=True
        )
        return int(answer.get("canceled", 0))

    async def fetch_order(self, id: int) -> Order:
        """Return one of the account's orders by order id."""
        return to_model(await self._get(f"/orders/{segment(id)}"), Order)

    async def fetch_order_by_client_id(self, client_order_id: str) -> Order:
        """Return one of the account's orders by client order id (the lost-answer lookup)."""
        return to_model(await self._get(f"/orders/client/{segment(client_order_id)}"), Order)

    async def fetch_open_orders(self, symbol: str | None = None) -> list[Order]:
        """Return the account's open orders (of `symbol` if given)."""
        return await self._orders("open", symbol)

    async def fetch_closed_orders(self, symbol: str | None = None) -> list[Order]:
        """Return the account's filled, cancelled, expired and rejected orders."""
        return await self._orders("closed", symbol)

    async def fetch_my_trades(self, symbol: str | None = None, limit: int = 100) -> list[Fill]:
        """Return the account's fills, newest first."""
        answer = await self._get("/fills", {"symbol": symbol, "limit": limit})
        return [to_model(f, Fill) for f in answer.get("fills", [])]

    # ------------------------------------------------------------------ money in and out

    async def withdraw(self, amount: Number, destination: str) -> Transfer:
        """Ask to be paid `amount` USD out to `destination` (a key with scope `withdraw`): it
        leaves available at once and is pending until an operator approves or rejects it. Not
        retried: a lost answer shows in `fetch_withdrawals`."""
        body = {"amount": decimal_str(amount, "amount"), "destination": destination}
        answer = await self.rest.request("POST", "/withdrawals", body=body, private=True)
        return to_model(answer.get("withdrawal"), Transfer)

    async def fetch_withdrawals(self, limit: int = 100) -> list[Transfer]:
        """Return the account's withdrawals, newest first."""
        answer = await self._get("/withdrawals", {"limit": limit})
        return [to_model(w, Transfer) for w in answer.get("withdrawals", [])]

    async def fetch_deposits(self, limit: int = 100) -> list[Transfer]:
        """Return the account's deposits, newest first."""
        answer = await self._get("/deposits", {"limit": limit})
        return [to_model(d, Transfer) for d in answer.get("deposits", [])]

    # ------------------------------------------------------------------ SSH keys

    async def add_ssh_key(self, public_key: str) -> SshKey:
        """Register an OpenSSH public key line; providers install it on machines you receive."""
        answer = await self.rest.request(
            "POST", "/ssh_keys", body={"public_key": public_key}, private=True
        )
        return to_model(answer, SshKey)

    async def fetch_ssh_keys(self) -> list[SshKey]:
        """Return the account's SSH public keys, oldest first."""
        answer = await self._get("/ssh_keys")
        return [to_model(k, SshKey) for k in answer.get("ssh_keys", [])]

    async def remove_ssh_key(self, fingerprint: str) -> None:
        """Remove one of the account's SSH keys by its fingerprint ("SHA256:...")."""
        # A query, not a path segment: a fingerprint's base64 may hold "/".
        await self.rest.request(
            "DELETE", "/ssh_keys", query={"fingerprint": fingerprint}, private=True
        )

    # ------------------------------------------------------------------ deliveries

    async def fetch_deliveries(
        self, state: str | None = None, role: str | None = None
    ) -> list[Delivery]:
        """Return the account's deliveries as holder and provider, with the access of confirmed
        ones: active first, by obligation id, then settled, newest first.

        `state` keeps one of `assigned`, `confirmed`, `disputed`, `settled`; `role` (`holder`
        or `provider`) one side.
        """
        answer = await self._get("/deliveries", {"state": state, "role": role})
        return [to_model(d, Delivery) for d in answer.get("deliveries", [])]

    async def dispute_delivery(self, obligation_id: int, reason: str = "") -> Delivery:
        """Dispute a delivery you hold whose machines you cannot reach (in its first hour): the
        provider is paid no more hours until an operator resolves it. Not retried: a lost answer
        shows in `fetch_deliveries` (state `disputed`)."""
        answer = await self.rest.request(
            "POST",
            f"/deliveries/{segment(int(obligation_id))}/dispute",
            body={"reason": reason},
            private=True,
        )
        return to_model(answer.get("delivery"), Delivery)

    async def route_order(
        self,
        gpu: str,
        gpu_hours: int,
        start_ns: int,
        end_ns: int,
        max_price: Number,
        *,
        regions: Iterable[str] = (),
        products: Iterable[str] = (),
        client_order_id: str | None = None,
    ) -> RouteResult:
        """Buy `gpu_hours` of `gpu` delivered within [start_ns, end_ns), cheapest first.

        Not retried: the gateway places the children as IOC orders, and a caller who lost the
        answer looks the children up by `client_order_id` + `-<index>`.
        """
        body = route_body(
            gpu, gpu_hours, start_ns, end_ns, max_price, regions, products, client_order_id
        )
        answer = await self.rest.request("POST", "/route", body=body, private=True)
        return to_model(answer, RouteResult)

    async def _get(self, path: str, query: Mapping[str, object] | None = None) -> Any:
        return await self.rest.request("GET", path, query=query, private=True, retry=True)

    async def _orders(self, status: str, symbol: str | None) -> list[Order]:
        answer = await self._get("/orders", {"status": status, "symbol": symbol})
        return [to_model(o, Order) for o in answer.get("orders", [])]

    # ------------------------------------------------------------------ WebSocket feeds

    def watch_order_book(self, symbol: str, limit: int = 10) -> Watch[LocalBook]:
        """Watch the verified local book of `symbol`; it resyncs itself on a gap or mismatch.

        A symbol has one book subscription: its depth is the first watch's (1, 10, 25 or 100
        levels, the smallest holding `limit`).
        """
        return self.feeds.watch("book", symbol, depth=_book_depth(limit))

    def watch_trades(self, symbol: str) -> Watch[Trade]:
        """Watch the public trades of `symbol`: every trade, in order (a push carries a batch)."""
        return self.feeds.watch("trades", symbol)

    def watch_ticker(self, symbol: str) -> Watch[Ticker]:
        """Watch the best bid, best ask, last trade and rolling 24 h figures of `symbol`."""
        return self.feeds.watch("ticker", symbol)

    def watch_ohlcv(self, symbol: str, timeframe: str = "1m") -> Watch[Candle]:
        """Watch the candles of `symbol` (the current one updates until it closes)."""
        return self.feeds.watch("candles", symbol, interval=_timeframe(timeframe))

    def watch_orders(self) -> Watch[Execution]:
        """Watch the account's executions (first one `snapshot` item per open order)."""
        return self.feeds.watch("executions")

    def watch_balance(self) -> Watch[Balance]:
        """Watch the account's cash."""
        return self.feeds.watch("balances")

    def watch_positions(self) -> Watch[list[Position]]:
        """Watch the account's positions: every item is the whole current list."""
        return self.feeds.watch("positions")

    def watch_deliveries(self) -> Watch[DeliveryUpdate]:
        """Watch the account's deliveries as holder and provider: first one `snapshot` item per
        current delivery, then each change (`assigned`, `confirmed` with the access,
        `hour_released`, `disputed`, `resolved`, `settled`)."""
        return self.feeds.watch("deliveries")

    def watch_provisioning(self) -> Watch[ProvisionRequest]:
        """Watch the provisioning requests addressed to this provider."""
        return self.feeds.watch("provisioning")

    def watch(self, channel: str, symbol: str = "", *, interval: str = "") -> Watch[Any]:
        """Watch any channel: `index` and `curve` yield raw push dicts, the others as their
        `watch_*` method does (`book` has `watch_order_book`, which sets the depth).
        """
        if channel == "book":
            raise ValueError("channel 'book': use watch_order_book(symbol, limit)")
        return self.feeds.watch(channel, symbol, interval=interval)

    async def unwatch(self, channel: str, symbol: str = "", interval: str = "") -> None:
        """Unsubscribe a channel (and symbol; and interval for candles); its watchers end."""
        account = channel in ACCOUNT_CHANNELS
        await self.feeds.unwatch((channel, "" if account else symbol, interval))

    # ------------------------------------------------------------------ WebSocket requests

    async def ws_request(self, method: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """Send one WebSocket request and return its `result` (raise its error)."""
        return await self.session.request(method, params)

    async def create_order_ws(
        self,
        symbol: str,
        type: str,
        side: str,
        amount: Number,
        price: Number | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> OrderResult:
        """Place an order over the WebSocket; retried like `create_order` with the same id."""
        body = order_body(symbol, type, side, amount, price, params)
        answer = await self._retrying(lambda: self.session.request("order.place", body))
        return to_model(answer, OrderResult)

    async def amend_order_ws(
        self,
        price: Number,
        amount: Number,
        *,
        order_id: int | None = None,
        client_order_id: str | None = None,
    ) -> Order:
        """Amend an order named by order id or client order id over the WebSocket.

        `amount` is the remaining quantity, as in `amend_order`.
        """
        params = {**_order_ref(order_id, client_order_id), **amend_body(price, amount)}
        answer = await self.session.request("order.amend", params)
        return to_model(answer.get("order"), Order)

    async def cancel_order_ws(
        self, order_id: int | None = None, *, client_order_id: str | None = None
    ) -> Order:
        """Cancel an order named by order id or client order id over the WebSocket."""
        answer = await self.session.request("order.cancel", _order_ref(order_id, client_order_id))
        return to_model(answer.get("order"), Order)

    async def cancel_all_orders_ws(self, symbol: str | None = None) -> int:
        """Cancel every open order (of `symbol` if given) over the WebSocket."""
        params = {} if symbol is None else {"symbol": symbol}
        answer = await self.session.request("order.cancel_all", params)
        return int(answer.get("canceled", 0))

    async def order_status(
        self, client_order_id: str | None = None, *, order_id: int | None = None
    ) -> Order:
        """Return an order by client order id (or order id) over the WebSocket."""
        params = _order_ref(order_id, client_order_id)
        answer = await self._retrying(lambda: self.session.request("order.status", params))
        return to_model(answer.get("order"), Order)

    async def cancel_all_after(self, timeout_ms: int) -> dict[str, Any]:
        """Arm the dead man's switch: cancel all orders unless re-armed within `timeout_ms`.

        0 disarms. Return `{"armed": bool, "deadline_ms": ...}`.
        """
        return await self.session.request("cancel_all_after", {"timeout_ms": int(timeout_ms)})

    async def _retrying(self, call: Callable[[], Awaitable[R]]) -> R:
        """Run an idempotent WebSocket call, retrying network errors and 5xx answers."""
        for attempt in range(self.retries_max + 1):
            try:
                return await call()
            except GatewayError as error:
                retry = isinstance(error, NetworkError) or error.status >= 500
                if not retry or attempt >= self.retries_max:
                    raise
                delay = min(
                    RETRY_DELAY_S_MAX,
                    max(self.retry_backoff_s * 2.0**attempt, error.retry_after_ms / 1000),
                )
                log.info("retry WebSocket request in %.2f s after %s", delay, error.code)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _order_ref(order_id: int | None, client_order_id: str | None) -> dict[str, Any]:
    if order_id is not None:
        return {"order_id": int(order_id)}
    if client_order_id:
        return {"client_order_id": client_order_id}
    raise ValueError("order_id or client_order_id: expected one, found neither")
