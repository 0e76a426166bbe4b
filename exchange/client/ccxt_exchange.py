"""The gateway as a ccxt exchange: `GpuExchange`, a `ccxt.async_support.Exchange` subclass.

    from exchange.client.ccxt_exchange import GpuExchange

    ex = GpuExchange({"apiKey": key, "secret": secret,
                      "urls": {"api": {"rest": "http://127.0.0.1:8080"}}})
    markets = await ex.load_markets()
    order = await ex.create_order(symbol, "limit", "buy", 5, 2.4)
    await ex.close()

Every answer is one of ccxt's unified structures, built with ccxt's own `safe_*` and `parse_*`
helpers. Each instrument is a linear future settled in USD: an amount is whole lots (contracts)
of one GPU for the instrument's hours, so `contractSize` is its hours and a price is USD per
GPU-hour; `expiry` is the delivery start. Volumes (ticker `baseVolume`, OHLCV) are GPU-hours.
Numbers arrive as the gateway's decimal strings and are combined with ccxt's `Precise` string
arithmetic, so each float is the nearest float to the exact decimal. Requests are signed by the
SDK's own `signing.signed_headers`; refusals raise the ccxt error their stable code maps to
(`EXACT_ERRORS`).

The ccxt pro methods `watch_order_book`, `watch_trades`, `watch_ticker`, `watch_orders` and
`watch_my_trades` run over the SDK's WebSocket client (`exchange.client.Client`, created on the
first watch with the same URL and key, closed by `close()`). As in ccxt pro, the first call
subscribes and every call returns the next update; between calls the subscription stays open and
its updates are kept, so the next call returns everything that arrived meanwhile (trades, orders)
or the latest state (book, ticker). `info` of a watched structure is the SDK model's fields.

Not implemented (their `has` flags are False): deposits, withdrawals and transfers (the gateway
has no such endpoints yet), positions, `watch_balance` and `watch_ohlcv` (use
`exchange.client.Client`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping
from decimal import Decimal
from typing import Any

import ccxt.async_support as ccxt_async
import msgspec
from ccxt.base.decimal_to_precision import TICK_SIZE
from ccxt.base.errors import (
    AccountNotEnabled,
    AccountSuspended,
    AuthenticationError,
    BadRequest,
    BadSymbol,
    ExchangeClosedByUser,
    ExchangeError,
    ExchangeNotAvailable,
    InsufficientFunds,
    InvalidNonce,
    InvalidOrder,
    MarketClosed,
    NetworkError,
    OperationRejected,
    OrderImmediatelyFillable,
    OrderNotFillable,
    OrderNotFound,
    PermissionDenied,
    RateLimitExceeded,
    RequestTimeout,
)
from ccxt.base.precise import Precise

from exchange.client.client import DEFAULT_BASE_URL, TIMEFRAMES, Client
from exchange.client.errors import GatewayError
from exchange.client.errors import NetworkError as SdkNetworkError
from exchange.client.feeds import FeedClosed, SlowConsumer, Watch
from exchange.client.models import Execution, Order
from exchange.client.orders import lots_str, order_body
from exchange.client.rest import API_PREFIX, segment
from exchange.client.signing import Credentials, signed_headers
from exchange.gateway.ratelimit import RateLimits
from exchange.wire import ErrorCode
from schemas.codes import Reject

__all__ = ["GpuExchange", "EXACT_ERRORS", "EXCHANGE_ID", "QUOTE"]

EXCHANGE_ID = "gpuexchange"
QUOTE = "USD"  # every price, fee and balance
NS_PER_MS = 1_000_000
BPS_PER_UNIT = 10_000
FILLS_PAGE_MAX = 1000  # fills read to give fetched orders their trades (average, cost)
BOOK_LEVELS_DEFAULT = 10  # levels a side of fetch_order_book and watch_order_book without a limit

Params = dict[str, Any] | None

# Engine refusals (`schemas.codes.Reject` names) and gateway codes (`wire.ErrorCode`) to ccxt.
_REJECT_ERRORS: dict[Reject, type[Exception]] = {
    Reject.UNKNOWN_INSTRUMENT: BadSymbol,
    Reject.INSTRUMENT_NOT_TRADING: MarketClosed,
    Reject.PRICE_OUT_OF_BAND: InvalidOrder,
    Reject.PRICE_INVALID: InvalidOrder,
    Reject.LOTS_INVALID: InvalidOrder,
    Reject.LOTS_ABOVE_MAX: InvalidOrder,
    Reject.UNKNOWN_ACCOUNT: AccountNotEnabled,
    Reject.ORDER_TYPE_INVALID: InvalidOrder,
    Reject.AMOUNT_INVALID: BadRequest,
    Reject.UNKNOWN_ORDER: OrderNotFound,
    Reject.NOT_ORDER_OWNER: OrderNotFound,  # another account's order is not told apart
    Reject.CAPACITY_RANGE_INVALID: BadRequest,
    Reject.EXPIRY_INVALID: InvalidOrder,
    Reject.MALFORMED: BadRequest,
    Reject.WRONG_SHARD: ExchangeError,
    Reject.INSUFFICIENT_CASH: InsufficientFunds,
    Reject.INSUFFICIENT_COVER: InsufficientFunds,
    Reject.OPEN_ORDERS_LIMIT: OperationRejected,
    Reject.CAPACITY_BELOW_COMMITTED: BadRequest,
    Reject.ENGINE_FULL: OperationRejected,
    Reject.BALANCE_LIMIT: OperationRejected,
    Reject.POST_ONLY_WOULD_TAKE: OrderImmediatelyFillable,
    Reject.FOK_NOT_FILLABLE: OrderNotFillable,
    Reject.NO_LIQUIDITY: OrderNotFillable,
    Reject.AMEND_NO_CHANGE: InvalidOrder,
    Reject.UNKNOWN_OBLIGATION: BadRequest,
    Reject.OBLIGATION_STATE: BadRequest,
    Reject.NOT_OBLIGATION_PROVIDER: PermissionDenied,
    Reject.NOT_OBLIGATION_HOLDER: PermissionDenied,
    Reject.DISPUTE_WINDOW: BadRequest,
    Reject.DUPLICATE_REFERENCE: BadRequest,
    Reject.UNKNOWN_WITHDRAWAL: BadRequest,
    Reject.WITHDRAWAL_LIMIT: OperationRejected,
    Reject.CAPACITY_LIMIT: OperationRejected,
    Reject.NOT_OPERATOR: PermissionDenied,
    Reject.INSTRUMENT_HALTED: MarketClosed,  # until resumed or the breaker's halt ends
    Reject.INSTRUMENT_NOT_HALTED: BadRequest,
    Reject.ACCOUNT_SUSPENDED: AccountSuspended,
    Reject.ACCOUNT_NOT_SUSPENDED: BadRequest,
}
_GATEWAY_ERRORS: dict[ErrorCode, type[Exception]] = {
    ErrorCode.BAD_REQUEST: BadRequest,
    ErrorCode.PAYLOAD_TOO_LARGE: BadRequest,
    ErrorCode.UNKNOWN_METHOD: BadRequest,
    ErrorCode.UNKNOWN_CHANNEL: BadRequest,
    ErrorCode.UNKNOWN_SYMBOL: BadSymbol,
    ErrorCode.PRICE_OFF_TICK: InvalidOrder,
    ErrorCode.QTY_INVALID: InvalidOrder,
    ErrorCode.UNAUTHORIZED: AuthenticationError,
    ErrorCode.BAD_SIGNATURE: AuthenticationError,
    ErrorCode.TIMESTAMP_EXPIRED: InvalidNonce,  # ccxt's class for clock-window refusals
    ErrorCode.NONCE_REUSED: InvalidNonce,
    ErrorCode.NOT_LOGGED_ON: AuthenticationError,
    ErrorCode.FORBIDDEN: PermissionDenied,
    ErrorCode.UNKNOWN_ORDER: OrderNotFound,
    ErrorCode.NOT_FOUND: BadRequest,
    ErrorCode.RATE_LIMITED: RateLimitExceeded,
    ErrorCode.TIMEOUT: RequestTimeout,
    ErrorCode.UNAVAILABLE: ExchangeNotAvailable,
    ErrorCode.REJECTED: OperationRejected,
    ErrorCode.BAD_SSH_KEY: BadRequest,
    ErrorCode.SSH_KEYS_FULL: BadRequest,
    ErrorCode.KEYS_FULL: BadRequest,
    ErrorCode.BAD_ACCESS: BadRequest,
    ErrorCode.UNKNOWN_DELIVERY: BadRequest,
    ErrorCode.INTERNAL: ExchangeError,  # a gateway bug: the request's effect is unknown
    ErrorCode.TOO_MANY_STREAMS: BadRequest,  # unsubscribe some first: retrying will not help
}
EXACT_ERRORS: dict[str, type[Exception]] = {
    **{code.name: error for code, error in _REJECT_ERRORS.items()},
    **{str(code): error for code, error in _GATEWAY_ERRORS.items()},
}

_ORDER_STATUS = {
    "new": "open",
    "partially_filled": "open",
    "filled": "closed",
    "canceled": "canceled",
    "expired": "expired",
    "rejected": "rejected",
}
# `GET /ledger` and `/statements` name reasons by the CashReason member, lower case.
_LEDGER_TYPE: dict[str, str] = {
    "deposit": "transaction",
    "withdrawal": "transaction",
    "order_hold": "transfer",  # available -> held: a move between buckets
    "order_release": "transfer",
    "trade": "trade",
    "fee": "fee",
    "short_covered": "margin",  # collateral of a short
    "delivery_release": "settlement",
    "delivery_refund": "settlement",
    "delivery_penalty": "settlement",
    "withdrawal_requested": "transfer",  # available -> pending: settled later by an operator
    "withdrawal_rejected": "transfer",
}
# Our transfer statuses as ccxt's transaction statuses.
_TRANSFER_STATUS = {"pending": "pending", "completed": "ok", "rejected": "rejected"}
NETWORK = "BANK"  # money moves by bank transfer, never on a chain
_TIF_IN = {"GTC": "gtc", "GTD": "gtd", "IOC": "ioc", "FOK": "fok"}


def _rate(bps: object) -> str | None:
    """A fee rate in bps as a decimal string fraction (2 -> '0.0002')."""
    if not isinstance(bps, int) or isinstance(bps, bool):
        return None
    return str(Decimal(bps) / BPS_PER_UNIT)


def _ms(ts_ns: object) -> int | None:
    """Integer UNIX nanoseconds (int or string) to milliseconds; None for 0 or missing."""
    if ts_ns is None:
        return None
    value = int(str(ts_ns))
    return value // NS_PER_MS if value > 0 else None


def _builtins(model: msgspec.Struct) -> dict[str, Any]:
    """An SDK model as the gateway's JSON would give it (Decimal as its string), for `parse_*`."""
    fields: dict[str, Any] = msgspec.to_builtins(model)
    return fields


def _fill(x: Execution) -> dict[str, Any]:
    """The `GET /fills` row of a `trade` execution."""
    return {
        "trade_id": x.trade_id,
        "order_id": x.order.order_id,
        "symbol": x.order.symbol,
        "side": x.order.side,
        "price": None if x.last_price is None else str(x.last_price),
        "qty": None if x.last_qty is None else str(x.last_qty),
        "fee": None if x.fee is None else str(x.fee),
        "liquidity": x.liquidity,
        "ts_ns": x.ts_ns,
    }


async def _next_batch(batches: AsyncGenerator[list[Any], None]) -> list[Any]:
    try:
        return await anext(batches)
    except StopAsyncIteration:
        raise FeedClosed("the subscription ended") from None


class _Stream:
    """One watch_* stream: its SDK watcher stays attached between calls, so what arrives while
    the caller is busy comes with the next call.

    Concurrent calls share one pending batch (ccxt pro resolves them with the same update), and
    a caller that gives up (a timeout) leaves the batch to the next call instead of losing it.
    """

    def __init__(self, batches: AsyncGenerator[list[Any], None]) -> None:
        self._batches = batches
        self._pending: asyncio.Task[list[Any]] | None = None

    async def next(self) -> list[Any]:
        if self._pending is None:
            self._pending = asyncio.ensure_future(_next_batch(self._batches))
        pending = self._pending
        try:
            return await asyncio.shield(pending)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if pending.cancelled() and not (current is not None and current.cancelling()):
                raise FeedClosed("the watch was closed") from None  # by close(), not the caller
            raise
        finally:
            if pending.done() and self._pending is pending:
                self._pending = None

    async def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pending
        await self._batches.aclose()


class GpuExchange(ccxt_async.Exchange):  # type: ignore[misc]
    """The gpu-exchange gateway behind ccxt's unified async API.

    Configure the gateway with `urls.api.rest` (default `DEFAULT_BASE_URL`), the key with
    `apiKey` and `secret`.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(dict(config or {}))
        self._sdk: Client | None = None  # the WebSocket client of the watch_* methods
        self._watches: dict[tuple[str, str], _Stream] = {}

    def describe(self) -> Any:
        """Return ccxt's description of the exchange: capabilities, URLs, precision, errors."""
        return self.deep_extend(
            super().describe(),
            {
                "id": EXCHANGE_ID,
                "name": "GPU Exchange",
                "countries": [],
                "version": "v1",
                # ms between requests: the gateway's default per-key REST rate
                "rateLimit": 1000 / RateLimits().rest_per_account_per_s,
                "certified": False,
                "pro": True,
                "has": {
                    "CORS": None,
                    "spot": False,
                    "margin": False,
                    "swap": False,
                    "future": True,
                    "option": False,
                    "cancelAllOrders": True,
                    "cancelOrder": True,
                    "createOrder": True,
                    "createMarketOrder": True,
                    "createLimitOrder": True,
                    "createPostOnlyOrder": True,
                    "editOrder": True,
                    "fetchBalance": True,
                    "fetchClosedOrders": True,
                    "fetchCurrencies": False,
                    "fetchDeposits": True,
                    "fetchLedger": True,
                    "fetchMarkets": True,
                    "fetchMyTrades": True,
                    "fetchOHLCV": True,
                    "fetchOpenOrders": True,
                    "fetchOrder": True,
                    "fetchOrderBook": True,
                    "fetchPositions": False,
                    "fetchTicker": True,
                    "fetchTickers": True,
                    "fetchTime": False,
                    "fetchTrades": True,
                    "fetchTradingFee": True,
                    "fetchTradingFees": True,
                    "fetchWithdrawals": True,
                    "transfer": False,
                    "withdraw": True,
                    "ws": True,
                    "watchOrderBook": True,
                    "watchTicker": True,
                    "watchTrades": True,
                    "watchOrders": True,
                    "watchMyTrades": True,
                    "watchBalance": False,
                    "watchOHLCV": False,
                },
                "timeframes": {tf: tf for tf in TIMEFRAMES},
                "urls": {
                    "api": {"rest": DEFAULT_BASE_URL},
                    "www": DEFAULT_BASE_URL,
                    "doc": "exchange/API.md",
                },
                "api": {
                    "public": {
                        "get": {
                            "instruments": 1,
                            "ticker/{symbol}": 1,
                            "tickers": 1,
                            "fees": 1,
                            "book/{symbol}": 1,
                            "trades/{symbol}": 1,
                            "candles/{symbol}": 1,
                        }
                    },
                    "private": {
                        "get": {
                            "balances": 1,
                            "orders": 1,
                            "orders/{id}": 1,
                            "orders/client/{client_order_id}": 1,
                            "fills": 1,
                            "ledger": 1,
                            "statements": 1,
                            "deposits": 1,
                            "withdrawals": 1,
                        },
                        "post": {"orders": 1, "withdrawals": 1},
                        "patch": {"orders/{id}": 1},
                        "delete": {"orders/{id}": 1, "orders": 1},
                    },
                },
                "requiredCredentials": {"apiKey": True, "secret": True},
                "precisionMode": TICK_SIZE,
                "fees": {"trading": {"tierBased": False, "percentage": True}},
                "exceptions": {"exact": dict(EXACT_ERRORS), "broad": {}},
            },
        )

    # ------------------------------------------------------------------ transport

    def sign(
        self,
        path: str,
        api: Any = "public",
        method: str = "GET",
        params: Params = None,
        headers: Any = None,
        body: Any = None,
    ) -> dict[str, Any]:
        """Build a request: path parameters quoted, the query or JSON body, GX-* signature."""
        params = params or {}
        api_name = api[0] if isinstance(api, list) else api
        names = self.extract_params(path)
        values = {name: segment(params[name]) for name in names}
        rest = {k: v for k, v in self.omit(params, names).items() if v is not None}
        request_path = API_PREFIX + "/" + self.implode_params(path, values)
        content = ""
        if method in ("GET", "DELETE"):
            if rest:
                request_path += "?" + self.urlencode(rest)
        elif rest:
            content = self.json(rest)
        out_headers: dict[str, str] = {}
        if content:
            out_headers["Content-Type"] = "application/json"
        if api_name == "private":
            self.check_required_credentials()
            credentials = Credentials(self.apiKey, self.secret)
            out_headers.update(signed_headers(credentials, method, request_path, content.encode()))
        url = self.urls["api"]["rest"].rstrip("/") + request_path
        return {"url": url, "method": method, "body": content or None, "headers": out_headers}

    def handle_errors(
        self,
        code: int,
        reason: str,
        url: str,
        method: str,
        headers: Any,
        body: str,
        response: Any,
        request_headers: Any,
        request_body: Any,
    ) -> None:
        """Raise the ccxt error of the answer's stable `error.code`; ExchangeError if unknown."""
        if not isinstance(response, dict):
            return None  # not our JSON: ccxt maps the HTTP status
        error = response.get("error")
        if not isinstance(error, dict):
            return None
        feedback = f"{self.id} {method} {url}: {body}"
        self.throw_exactly_matched_exception(
            self.exceptions["exact"], self.safe_string(error, "code"), feedback
        )
        raise ExchangeError(feedback)

    async def _public(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return await self.request(path, "public", "GET", dict(params or {}))

    async def _private(
        self, path: str, method: str = "GET", params: Mapping[str, Any] | None = None
    ) -> Any:
        return await self.request(path, "private", method, dict(params or {}))

    # ------------------------------------------------------------------ market data

    async def fetch_markets(self, params: Params = None) -> list[Any]:
        """Return every listed instrument as a ccxt market (a linear USD future)."""
        answer = await self._public("instruments", params)
        catalog = self.safe_dict(answer, "catalog", {})
        return [self.parse_market({**row, "_catalog": catalog}) for row in answer["instruments"]]

    def parse_market(self, market: dict[str, Any]) -> Any:
        """Build a ccxt market from a `GET /instruments` row and the catalog."""
        catalog = market.pop("_catalog", {})
        symbol = self.safe_string(market, "symbol")
        gpu = self.safe_string(market, "gpu")
        hours = self.safe_string(market, "hours")
        expiry = _ms(market.get("start_ns"))
        return self.safe_market_structure(
            {
                "id": symbol,
                "symbol": symbol,
                "base": self.safe_currency_code(gpu),
                "quote": QUOTE,
                "settle": QUOTE,
                "baseId": gpu,
                "quoteId": QUOTE,
                "settleId": QUOTE,
                "type": "future",
                "spot": False,
                "margin": False,
                "swap": False,
                "future": True,
                "option": False,
                "index": None,
                "active": self.safe_string(market, "status") == "trading",
                "contract": True,
                "linear": True,
                "inverse": False,
                "subType": "linear",
                "taker": self.parse_number(_rate(catalog.get("taker_fee_bps"))),
                "maker": self.parse_number(_rate(catalog.get("maker_fee_bps"))),
                "contractSize": self.parse_number(hours),
                "expiry": expiry,
                "expiryDatetime": self.iso8601(expiry),
                "strike": None,
                "optionType": None,
                "precision": {
                    "price": self.parse_number(self.safe_string(catalog, "tick")),
                    "amount": self.parse_number("1"),
                },
                "limits": {
                    "leverage": {"min": None, "max": None},
                    "amount": {
                        "min": self.parse_number("1"),
                        "max": self.safe_number(market, "lots_max"),
                    },
                    "price": {
                        "min": self.safe_number(market, "price_band_min"),
                        "max": self.safe_number(market, "price_band_max"),
                    },
                    "cost": {"min": None, "max": None},
                },
                "marginModes": {"cross": None, "isolated": None},
                "created": None,
                "info": market,
            }
        )

    async def fetch_ticker(self, symbol: str, params: Params = None) -> Any:
        """Return the ticker of one instrument: top of book, last trade, rolling 24 h."""
        await self.load_markets()
        market = self.market(symbol)
        answer = await self._public("ticker/{symbol}", {"symbol": market["id"], **(params or {})})
        return self.parse_ticker(answer, market)

    async def fetch_tickers(self, symbols: list[str] | None = None, params: Params = None) -> Any:
        """Return the tickers of every instrument with a book or a trade (or of `symbols`)."""
        await self.load_markets()
        answer = await self._public("tickers", params)
        symbols = self.market_symbols(symbols)
        tickers = [self.parse_ticker(t) for t in self.safe_list(answer, "tickers", [])]
        return self.filter_by_array_tickers(tickers, "symbol", symbols)

    def parse_ticker(self, ticker: dict[str, Any], market: Any = None) -> Any:
        """Build a ccxt ticker from a `GET /ticker` object."""
        market = self.safe_market(self.safe_string(ticker, "symbol"), market)
        timestamp = _ms(ticker.get("ts_ns"))
        volume = self.safe_string(ticker, "volume")
        base_volume = None
        if volume is not None:
            base_volume = Precise.string_mul(volume, self.number_to_string(market["contractSize"]))
        return self.safe_ticker(
            {
                "symbol": market["symbol"],
                "timestamp": timestamp,
                "datetime": self.iso8601(timestamp),
                "high": self.safe_string(ticker, "high"),
                "low": self.safe_string(ticker, "low"),
                "bid": self.safe_string(ticker, "bid"),
                "bidVolume": self.safe_string(ticker, "bid_qty"),
                "ask": self.safe_string(ticker, "ask"),
                "askVolume": self.safe_string(ticker, "ask_qty"),
                "vwap": self.safe_string(ticker, "vwap"),
                "open": self.safe_string(ticker, "open"),
                "close": self.safe_string(ticker, "last"),
                "last": self.safe_string(ticker, "last"),
                "previousClose": None,
                "change": None,
                "percentage": None,
                "average": None,
                "baseVolume": base_volume,
                "quoteVolume": self.safe_string(ticker, "quote_volume"),
                "info": ticker,
            },
            market,
        )

    async def fetch_order_book(
        self, symbol: str, limit: int | None = None, params: Params = None
    ) -> Any:
        """Return the book of one instrument to `limit` levels a side (default BOOK_LEVELS_DEFAULT)."""
        await self.load_markets()
        market = self.market(symbol)
        request = {"symbol": market["id"], "depth": limit or BOOK_LEVELS_DEFAULT, **(params or {})}
        answer = await self._public("book/{symbol}", request)
        book = self.parse_order_book(answer, market["symbol"], _ms(answer.get("ts_ns")))
        book["nonce"] = self.safe_integer(answer, "seq")
        return book

    async def fetch_trades(
        self, symbol: str, since: int | None = None, limit: int | None = None, params: Params = None
    ) -> Any:
        """Return the latest public trades of one instrument, oldest first (ccxt's order)."""
        await self.load_markets()
        market = self.market(symbol)
        request = {"symbol": market["id"], "limit": limit or 100, **(params or {})}
        answer = await self._public("trades/{symbol}", request)
        rows = [{**t, "symbol": market["id"]} for t in self.safe_list(answer, "trades", [])]
        return self.parse_trades(rows, market, since, limit)

    async def fetch_ohlcv(
        self,
        symbol: str,
        timeframe: str = "1m",
        since: int | None = None,
        limit: int | None = None,
        params: Params = None,
    ) -> Any:
        """Return `[ms, open, high, low, close, volume in GPU-hours]` rows, oldest first."""
        await self.load_markets()
        market = self.market(symbol)
        request = {
            "symbol": market["id"],
            "interval": self.safe_string(self.timeframes, timeframe, timeframe),
            "limit": limit or 100,
            **(params or {}),
        }
        answer = await self._public("candles/{symbol}", request)
        candles = self.safe_list(answer, "candles", [])
        return self.parse_ohlcvs(candles, market, timeframe, since, limit)

    def parse_ohlcv(self, ohlcv: dict[str, Any], market: Any = None) -> list[Any]:
        """Build a ccxt OHLCV row from a `GET /candles` candle (volume lots x contract size)."""
        size = self.number_to_string(market["contractSize"]) if market else "1"
        return [
            _ms(ohlcv.get("start_ns")),
            self.safe_number(ohlcv, "open"),
            self.safe_number(ohlcv, "high"),
            self.safe_number(ohlcv, "low"),
            self.safe_number(ohlcv, "close"),
            self.parse_number(Precise.string_mul(self.safe_string(ohlcv, "volume"), size)),
        ]

    async def fetch_trading_fees(self, params: Params = None) -> Any:
        """Return every market's maker and taker rate (fractions of notional)."""
        await self.load_markets()
        answer = await self._public("fees", params)
        return {
            symbol: self.parse_trading_fee(answer, self.market(symbol)) for symbol in self.symbols
        }

    async def fetch_trading_fee(self, symbol: str, params: Params = None) -> Any:
        """Return one market's maker and taker rate."""
        await self.load_markets()
        answer = await self._public("fees", params)
        return self.parse_trading_fee(answer, self.market(symbol))

    def parse_trading_fee(self, fee: dict[str, Any], market: Any = None) -> Any:
        """Build a ccxt trading fee from the `GET /fees` object."""
        return {
            "info": fee,
            "symbol": self.safe_string(market, "symbol"),
            "maker": self.safe_number(fee, "maker"),
            "taker": self.safe_number(fee, "taker"),
            "percentage": True,
            "tierBased": False,
        }

    # ------------------------------------------------------------------ account

    async def fetch_balance(self, params: Params = None) -> Any:
        """Return the USD balance: free = available; used = held + escrow + collateral + pending
        (withdrawals not yet paid out are still the account's, but not to trade)."""
        answer = await self._private("balances", "GET", params)
        used = "0"
        for bucket in ("held", "escrow", "collateral", "pending"):
            used = Precise.string_add(used, self.safe_string(answer, bucket, "0"))
        free = self.safe_string(answer, "available", "0")
        account = {"free": free, "used": used, "total": Precise.string_add(free, used)}
        return self.safe_balance({"info": answer, QUOTE: account})

    async def fetch_ledger(
        self,
        code: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: Params = None,
    ) -> Any:
        """Return the account's ledger entries (USD) from `since` (ms), oldest first.

        Read from `GET /statements`, so `before` and `after` are the bucket's exact balance around
        each entry. `account` is the bucket (available, held, escrow, collateral).
        """
        await self.load_markets()
        query = dict(params or {})
        if since is not None:
            query.setdefault("from", str(int(since) * 1_000_000))
        answer = await self._private("statements", "GET", query)
        entries = self.safe_list(answer, "entries", [])
        currency = self.currency(code) if code is not None else None
        return self.parse_ledger(entries, currency, since, limit)

    def parse_ledger_entry(self, item: dict[str, Any], currency: Any = None) -> Any:
        """Build a ccxt ledger entry from a statement's entry."""
        amount = self.safe_string(item, "amount", "0")
        after = self.safe_string(item, "balance")
        before = None if after is None else Precise.string_sub(after, amount)
        timestamp = _ms(item.get("ts_ns"))
        return self.safe_ledger_entry(
            {
                "info": item,
                "id": self.safe_string(item, "id"),
                "timestamp": timestamp,
                "datetime": self.iso8601(timestamp),
                "direction": "out" if Precise.string_lt(amount, "0") else "in",
                "account": self.safe_string(item, "bucket"),
                "referenceId": self.safe_string(item, "ref_id"),
                "referenceAccount": None,
                "type": _LEDGER_TYPE.get(self.safe_string(item, "reason", "")),
                "currency": QUOTE,
                "amount": self.parse_number(Precise.string_abs(amount)),
                "before": self.parse_number(before),
                "after": self.parse_number(after),
                "status": "ok",
                "fee": {"cost": None, "currency": None},
            },
            currency,
        )

    # ------------------------------------------------------------------ deposits and withdrawals

    async def fetch_deposits(
        self,
        code: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: Params = None,
    ) -> Any:
        """Return the account's deposits (USD, credited by an operator), oldest first."""
        return await self._transactions("deposit", code, since, limit, params)

    async def fetch_withdrawals(
        self,
        code: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: Params = None,
    ) -> Any:
        """Return the account's withdrawals (pending, ok, rejected), oldest first."""
        return await self._transactions("withdrawal", code, since, limit, params)

    async def _transactions(
        self, kind: str, code: str | None, since: int | None, limit: int | None, params: Params
    ) -> Any:
        """`GET /deposits` or `/withdrawals` (`kind` + "s") as ccxt transactions."""
        await self.load_markets()
        path = kind + "s"
        answer = await self._private(path, "GET", {"limit": 1000, **(params or {})})
        rows = [{**row, "type": kind} for row in self.safe_list(answer, path, [])]
        return self.parse_transactions(rows, self._usd(code), since, limit)

    async def withdraw(
        self, code: str, amount: float, address: str, tag: Any = None, params: Params = None
    ) -> Any:
        """Ask to be paid `amount` USD to `address` (a bank account; `tag` is appended as a
        note). Needs a key with the `withdraw` scope; pending until an operator approves."""
        await self.load_markets()
        self._usd(code)
        destination = address if not tag else f"{address} {tag}"
        body = {"amount": self.number_to_string(amount), "destination": destination}
        answer = await self._private("withdrawals", "POST", {**body, **(params or {})})
        row = {**self.safe_dict(answer, "withdrawal", {}), "type": "withdrawal"}
        return self.parse_transaction(row)

    def _usd(self, code: str | None) -> Any:
        """The one currency; another code is refused with BadRequest."""
        if code is not None and code != QUOTE:
            raise BadRequest(f"{self.id} has one currency, {QUOTE}; found {code}")
        return self.currency(QUOTE)

    def parse_transaction(self, transaction: dict[str, Any], currency: Any = None) -> Any:
        """Build a ccxt transaction from a deposit or withdrawal. There is no chain: `network`
        is BANK, `txid` the deposit's payment reference or the withdrawal's id."""
        kind = self.safe_string(transaction, "type")
        timestamp = _ms(transaction.get("ts_ns"))
        updated = _ms(transaction.get("updated_ns"))
        destination = self.safe_string(transaction, "destination")
        reference = self.safe_string(transaction, "reference")
        txid = reference if kind == "deposit" and reference else self.safe_string(transaction, "id")
        return {
            "info": transaction,
            "id": self.safe_string(transaction, "id"),
            "txid": txid,
            "timestamp": timestamp,
            "datetime": self.iso8601(timestamp),
            "network": NETWORK,
            "address": destination,
            "addressTo": destination,
            "addressFrom": None,
            "tag": None,
            "tagTo": None,
            "tagFrom": None,
            "type": kind,
            "amount": self.safe_number(transaction, "amount"),
            "currency": QUOTE,
            "status": _TRANSFER_STATUS.get(self.safe_string(transaction, "status", ""), "pending"),
            "updated": updated,
            "internal": False,
            "comment": None,
            "fee": {"cost": 0.0, "currency": QUOTE},
        }

    # ------------------------------------------------------------------ orders

    async def create_order(
        self,
        symbol: str,
        type: str,
        side: str,
        amount: float,
        price: float | None = None,
        params: Params = None,
    ) -> Any:
        """Place an order; `amount` is lots. Params: `timeInForce` (GTC, GTD, IOC, FOK, PO),
        `postOnly`, `clientOrderId`, and the gateway's `stp` and `expire_ns`.
        """
        await self.load_markets()
        market = self.market(symbol)
        extra = dict(params or {})
        tif = str(extra.pop("timeInForce", "") or "").upper()
        client_order_id = extra.pop("clientOrderId", None)
        if tif == "PO":
            extra["post_only"], tif = True, ""
        if "postOnly" in extra:
            extra["post_only"] = bool(extra.pop("postOnly"))
        if tif:
            if tif not in _TIF_IN:
                raise InvalidOrder(
                    f"{self.id} timeInForce: expected one of {sorted(_TIF_IN)}, found {tif!r}"
                )
            extra["tif"] = _TIF_IN[tif]
        if client_order_id is not None:
            extra["client_order_id"] = client_order_id
        limit_price = None if price is None else self.price_to_precision(symbol, price)
        body = order_body(
            market["id"], type, side, self.amount_to_precision(symbol, amount), limit_price, extra
        )
        answer = await self._private("orders", "POST", body)
        fills = self.safe_list(answer, "fills", [])
        order = self.parse_order({**answer["order"], "_fills": fills}, market)
        order["info"] = answer
        return order

    async def edit_order(
        self,
        id: str,
        symbol: str,
        type: str | None = None,
        side: str | None = None,
        amount: float | None = None,
        price: float | None = None,
        params: Params = None,
    ) -> Any:
        """Amend an open order's price and size (PATCH /orders/{id}).

        `amount` is the order's new total, as ccxt defines it: the gateway's amend sets the
        remaining lots, so the order is read first and `amount - filled` is sent (a fill
        between the two requests makes the total that much larger). `params={"remaining": n}`
        sends the remaining lots directly. A missing `price` keeps the order's price.
        """
        await self.load_markets()
        market = self.market(symbol)
        extra = dict(params or {})
        remaining = extra.pop("remaining", None)
        current: dict[str, Any] = {}
        if price is None or remaining is None:
            current = await self._private("orders/{id}", "GET", {"id": id})
        if price is None:
            price_str = self.safe_string(current, "price")
        else:
            price_str = self.price_to_precision(symbol, price)
        if remaining is None:
            if amount is None:
                remaining = self.safe_string(current, "leaves_qty")
            else:
                total = self.amount_to_precision(symbol, amount)
                remaining = Precise.string_sub(total, self.safe_string(current, "cum_qty", "0"))
        if price_str is None or Precise.string_le(str(remaining), "0"):
            raise InvalidOrder(
                f"{self.id} edit_order {id}: expected a price and an amount above the filled "
                f"lots, found price {price_str}, remaining {remaining}"
            )
        body = {"id": id, "price": price_str, "qty": lots_str(str(remaining))}
        answer = await self._private("orders/{id}", "PATCH", body)
        return self.parse_order(answer["order"], market)

    async def cancel_order(self, id: str, symbol: str | None = None, params: Params = None) -> Any:
        """Cancel one order; return it as cancelled."""
        await self.load_markets()
        answer = await self._private("orders/{id}", "DELETE", {"id": id, **(params or {})})
        return self.parse_order(answer["order"])

    async def cancel_all_orders(self, symbol: str | None = None, params: Params = None) -> Any:
        """Cancel every open order (of `symbol`); the count is in `info.canceled`."""
        await self.load_markets()
        request: dict[str, Any] = dict(params or {})
        if symbol is not None:
            request["symbol"] = self.market_id(symbol)
        answer = await self._private("orders", "DELETE", request)
        return [self.safe_order({"info": answer})]

    async def fetch_order(self, id: str, symbol: str | None = None, params: Params = None) -> Any:
        """Return one order by id (or by `params={"clientOrderId": ...}`), with its trades."""
        await self.load_markets()
        extra = dict(params or {})
        client_order_id = extra.pop("clientOrderId", None)
        if client_order_id is not None:
            path, request = "orders/client/{client_order_id}", {"client_order_id": client_order_id}
        else:
            path, request = "orders/{id}", {"id": id}
        answer = await self._private(path, "GET", {**request, **extra})
        return (await self._with_fills([answer]))[0]

    async def fetch_open_orders(
        self,
        symbol: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: Params = None,
    ) -> Any:
        """Return the account's open orders (of `symbol`)."""
        return await self._orders("open", symbol, since, limit, params)

    async def fetch_closed_orders(
        self,
        symbol: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: Params = None,
    ) -> Any:
        """Return the account's filled, cancelled, expired and rejected orders (of `symbol`)."""
        return await self._orders("closed", symbol, since, limit, params)

    async def _orders(
        self, status: str, symbol: str | None, since: int | None, limit: int | None, params: Params
    ) -> Any:
        await self.load_markets()
        market = self.market(symbol) if symbol is not None else None
        request: dict[str, Any] = {"status": status, **(params or {})}
        if market is not None:
            request["symbol"] = market["id"]
        answer = await self._private("orders", "GET", request)
        orders = await self._with_fills(self.safe_list(answer, "orders", []))
        return self.filter_by_symbol_since_limit(
            self.sort_by(orders, "timestamp"), self.safe_string(market, "symbol"), since, limit
        )

    async def _with_fills(self, rows: list[dict[str, Any]]) -> list[Any]:
        """Parse orders with their fills (one `GET /fills`), so average and cost are exact."""
        if not rows:
            return []
        answer = await self._private("fills", "GET", {"limit": FILLS_PAGE_MAX})
        by_order: dict[str, list[Any]] = {}
        for fill in self.safe_list(answer, "fills", []):
            by_order.setdefault(self.safe_string(fill, "order_id"), []).append(fill)
        out = []
        for row in rows:
            fills = by_order.get(self.safe_string(row, "order_id"), [])
            lots = sum(Decimal(self.safe_string(f, "qty", "0")) for f in fills)
            complete = lots == Decimal(self.safe_string(row, "cum_qty", "0"))
            out.append(self.parse_order({**row, "_fills": fills if complete else []}))
        return out

    def parse_order(self, order: dict[str, Any], market: Any = None) -> Any:
        """Build a ccxt order from a gateway order (and `_fills`, its fills, when known)."""
        fills = order.pop("_fills", [])
        market = self.safe_market(self.safe_string(order, "symbol"), market)
        timestamp = _ms(order.get("ts_ns"))
        tif = self.safe_string_upper(order, "tif")
        order_id = self.safe_string(order, "order_id")
        trades = self.parse_trades(fills, market) if fills else None
        return self.safe_order(
            {
                "info": order,
                "id": None if order_id == "0" else order_id,
                "clientOrderId": self.safe_string(order, "client_order_id") or None,
                "timestamp": timestamp,
                "datetime": self.iso8601(timestamp),
                "lastTradeTimestamp": None,
                "lastUpdateTimestamp": None,
                "symbol": market["symbol"],
                "type": self.safe_string(order, "type"),
                "timeInForce": tif,
                "postOnly": self.safe_bool(order, "post_only"),
                "reduceOnly": None,
                "side": self.safe_string(order, "side"),
                "price": self.safe_string(order, "price"),
                "triggerPrice": None,
                "stopPrice": None,
                "amount": self.safe_string(order, "qty"),
                "filled": self.safe_string(order, "cum_qty"),
                "remaining": self.safe_string(order, "leaves_qty"),
                "cost": None,
                "average": None,
                "status": _ORDER_STATUS.get(self.safe_string(order, "status", ""), None),
                "fee": None,
                "trades": trades,
            },
            market,
        )

    async def fetch_my_trades(
        self,
        symbol: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: Params = None,
    ) -> Any:
        """Return the account's fills (of `symbol`), oldest first."""
        await self.load_markets()
        market = self.market(symbol) if symbol is not None else None
        request: dict[str, Any] = {"limit": limit or 100, **(params or {})}
        if market is not None:
            request["symbol"] = market["id"]
        answer = await self._private("fills", "GET", request)
        return self.parse_trades(self.safe_list(answer, "fills", []), market, since, limit)

    def parse_trade(self, trade: dict[str, Any], market: Any = None) -> Any:
        """Build a ccxt trade from a public trade or a fill; cost = price x lots x hours."""
        market = self.safe_market(self.safe_string(trade, "symbol"), market)
        timestamp = _ms(trade.get("ts_ns"))
        price = self.safe_string(trade, "price")
        amount = self.safe_string(trade, "qty")
        cost = None
        if price is not None and amount is not None:
            size = self.number_to_string(market["contractSize"]) if market["contractSize"] else "1"
            cost = Precise.string_mul(Precise.string_mul(price, amount), size)
        fee_cost = self.safe_string(trade, "fee")
        is_fill = "order_id" in trade
        return self.safe_trade(
            {
                "info": trade,
                "id": self.safe_string(trade, "trade_id"),
                "order": self.safe_string(trade, "order_id"),
                "timestamp": timestamp,
                "datetime": self.iso8601(timestamp),
                "symbol": market["symbol"],
                "type": None,
                "side": self.safe_string(trade, "side"),
                # a public trade's side is the aggressor's: the taker
                "takerOrMaker": self.safe_string(trade, "liquidity") if is_fill else "taker",
                "price": price,
                "amount": amount,
                "cost": cost,
                "fee": None if fee_cost is None else {"cost": fee_cost, "currency": QUOTE},
            },
            market,
        )

    # ------------------------------------------------------------------ WebSocket (ccxt pro)

    async def watch_order_book(
        self, symbol: str, limit: int | None = None, params: Params = None
    ) -> Any:
        """Return the book of one instrument at its next change (first: the snapshot), to
        `limit` levels a side (default BOOK_LEVELS_DEFAULT). An instrument has one book
        subscription, of the first call's depth: the smallest of the SDK's BOOK_DEPTHS holding
        its `limit`.
        """
        await self.load_markets()
        market = self.market(symbol)
        market_id, levels = market["id"], limit or BOOK_LEVELS_DEFAULT

        def subscribe(client: Client) -> Watch[Any]:
            return client.watch_order_book(market_id, levels)

        while True:
            book = (await self._next("book", market_id, subscribe))[-1]
            if book.synced:  # and not resyncing since it was published
                break
        answer = {"bids": book.bids(levels), "asks": book.asks(levels)}
        out = self.parse_order_book(answer, market["symbol"], _ms(book.ts_ns))
        out["nonce"] = book.seq
        return out

    async def watch_trades(
        self, symbol: str, since: int | None = None, limit: int | None = None, params: Params = None
    ) -> Any:
        """Return the public trades of one instrument since the previous call, oldest first
        (the first call waits for the first trade after subscribing)."""
        await self.load_markets()
        market = self.market(symbol)
        market_id = market["id"]
        while True:
            batch = await self._next("trades", market_id, lambda c: c.watch_trades(market_id))
            trades = self.parse_trades([_builtins(t) for t in batch], market, since, limit)
            if trades:
                return trades

    async def watch_ticker(self, symbol: str, params: Params = None) -> Any:
        """Return the ticker of one instrument at its next push (top of book moved or traded),
        with the rolling 24 h figures."""
        await self.load_markets()
        market = self.market(symbol)
        market_id = market["id"]
        tickers = await self._next("ticker", market_id, lambda c: c.watch_ticker(market_id))
        return self.parse_ticker(_builtins(tickers[-1]), market)

    async def watch_orders(
        self,
        symbol: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: Params = None,
    ) -> Any:
        """Return the account's orders (of `symbol`) that changed since the previous call, each
        in its latest state; the first call returns the open orders the subscription starts
        with, or else waits for the first change."""
        market = await self._watched_market(symbol)
        market_id = "" if market is None else market["id"]
        while True:
            batch = await self._next("orders", market_id, lambda c: c.watch_orders())
            latest: dict[int, Order] = {}  # order id -> latest state, by last change
            for i, x in enumerate(batch):
                if market_id and x.order.symbol != market_id:
                    continue
                # a refused placement has no order id (0): each one stays its own entry
                key = x.order.order_id or -i - 1
                latest.pop(key, None)
                latest[key] = x.order
            orders = [self.parse_order(_builtins(o), market) for o in latest.values()]
            orders = self.filter_by_symbol_since_limit(orders, symbol, since, limit, True)
            if orders:
                return orders

    async def watch_my_trades(
        self,
        symbol: str | None = None,
        since: int | None = None,
        limit: int | None = None,
        params: Params = None,
    ) -> Any:
        """Return the account's fills (of `symbol`) since the previous call, oldest first (the
        first call waits for the first fill after subscribing)."""
        market = await self._watched_market(symbol)
        market_id = "" if market is None else market["id"]
        while True:
            batch = await self._next("my_trades", market_id, lambda c: c.watch_orders())
            fills = [
                _fill(x)
                for x in batch
                if x.exec_type == "trade" and (not market_id or x.order.symbol == market_id)
            ]
            trades = self.parse_trades(fills, market, since, limit)
            if trades:
                return trades

    async def close(self, clean_instance_data: bool = False) -> None:
        """End every watch (waiting calls raise ExchangeClosedByUser), close the WebSocket
        client and ccxt's HTTP session."""
        self.closed_by_user = True  # before the first await: no watch may open a client now
        sdk, self._sdk = self._sdk, None
        watches, self._watches = list(self._watches.values()), {}
        if sdk is not None:
            await sdk.close()  # ends the SDK's watchers first: waiting calls see FeedClosed
        for watch in watches:
            await watch.close()
        await super().close(clean_instance_data)

    async def _watched_market(self, symbol: str | None) -> Any:
        """Check the key of a private watch; return the market of `symbol` (None for all)."""
        self.check_required_credentials()
        await self.load_markets()
        return None if symbol is None else self.market(symbol)

    async def _next(
        self, kind: str, market_id: str, watch: Callable[[Client], Watch[Any]]
    ) -> list[Any]:
        """The next batch of the `kind` stream of `market_id` ("" for the account's), opened on
        the first call; an SDK error ends the stream (the next call opens it again) and is
        raised as the ccxt error its code maps to."""
        key = (kind, market_id)
        stream = self._watches.get(key)
        if stream is None:
            if self.closed_by_user:  # as ccxt's own lazy open: a closed instance stays closed
                raise ExchangeClosedByUser(f"{self.id} instance was closed by the user")
            if self._sdk is None:
                self._sdk = Client(
                    self.urls["api"]["rest"],
                    self.apiKey or None,
                    self.secret or None,
                    timeout_s=self.timeout / 1000,
                )
            stream = self._watches[key] = _Stream(watch(self._sdk).batches())
        try:
            return await stream.next()
        except (GatewayError, FeedClosed, SlowConsumer) as error:
            if self._watches.get(key) is stream:
                del self._watches[key]
            raise self._watch_error(error) from error

    def _watch_error(self, error: Exception) -> Exception:
        feedback = f"{self.id} watch: {error}"
        if isinstance(error, FeedClosed) or self.closed_by_user:
            return ExchangeClosedByUser(feedback)
        if isinstance(error, SdkNetworkError):
            return NetworkError(feedback)
        if isinstance(error, GatewayError):
            return EXACT_ERRORS.get(error.code, ExchangeError)(feedback)
        return ExchangeError(
            feedback
        )  # SlowConsumer: more than the SDK keeps arrived between calls
