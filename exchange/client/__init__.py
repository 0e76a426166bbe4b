"""The Python SDK: an async client with ccxt-style names, a local order book, a provider agent.

    from exchange.client import Client

    async with Client("http://127.0.0.1:8080", key, secret) as c:
        markets = await c.fetch_markets()
        async for book in c.watch_order_book(markets[0].symbol):
            print(book.best_bid(), book.best_ask())

Modules: `client` (the Client), `rest` and `ws` (transports), `feeds` (subscriptions), `book`
(LocalBook), `models` (typed results), `orders` (request bodies), `signing`, `errors`,
`provider` (ProviderAgent), `ccxt_exchange` (GpuExchange, the gateway as a ccxt exchange; needs
the `sdk` extra: `pip install '.[sdk]'`).
"""

from typing import Any

from exchange.client.book import BookOutOfSync, LocalBook
from exchange.client.client import Client
from exchange.client.errors import (
    AuthError,
    BadRequestError,
    GatewayError,
    NetworkError,
    NotFoundError,
    RateLimitError,
    RejectedError,
    UnavailableError,
)
from exchange.client.feeds import FeedClosed, SlowConsumer, Watch
from exchange.client.models import (
    Access,
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
    ModelError,
    Order,
    OrderBook,
    OrderResult,
    Position,
    ProvisionRequest,
    RouteChild,
    RouteResult,
    SshKey,
    Ticker,
    Trade,
    Transfer,
)
from exchange.client.provider import ProviderAgent, ProvisionResult

__all__ = [
    "Client",
    "LocalBook",
    "BookOutOfSync",
    "Watch",
    "FeedClosed",
    "SlowConsumer",
    "ProviderAgent",
    "ProvisionResult",
    "GatewayError",
    "BadRequestError",
    "AuthError",
    "NotFoundError",
    "RejectedError",
    "RateLimitError",
    "UnavailableError",
    "NetworkError",
    "ModelError",
    "Market",
    "OrderBook",
    "Trade",
    "Candle",
    "Ticker",
    "Balance",
    "Position",
    "Order",
    "Fees",
    "Fill",
    "LedgerEntry",
    "LedgerPage",
    "SshKey",
    "Transfer",
    "OrderResult",
    "RouteChild",
    "RouteResult",
    "Execution",
    "ProvisionRequest",
    "Access",
    "Delivery",
    "DeliveryUpdate",
    "GpuExchange",
]


def __getattr__(name: str) -> Any:
    # GpuExchange imports ccxt (the optional `sdk` extra): only when asked for.
    if name == "GpuExchange":
        from exchange.client.ccxt_exchange import GpuExchange

        return GpuExchange
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
