"""REST `/api/v1`: market data in public, account and order entry signed (exchange/API.md).

Handlers are thin: market data comes from the gateway's MarketFeed, account state from its
Accounts projection (the same state the WebSocket serves), ledger entries from the ledger's
reads in PostgreSQL (streams/ledger/reads.py), and order entry goes through the same OrderDesk
as the WebSocket, so both refuse alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

import msgspec
from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import FromPath, FromQuery, JSONBody, PathParameter, QueryParameter

from exchange.gateway.context import Gateway
from exchange.gateway.deliveries import DELIVERY_ROLES, DELIVERY_STATES
from exchange.gateway.keys import KEY_ID_PATTERN, SCOPES, ApiKey
from exchange.gateway.market_feed import BOOK_DEPTH_MAX
from exchange.gateway.openapi import SIGNED, documented, errors
from exchange.gateway.orders import (
    AmendParams,
    CancelAllParams,
    CapacityParams,
    DisputeParams,
    OrderRef,
    PlaceParams,
    RouteParams,
    dispute_reason_chars_max,
)
from exchange.gateway.ssh_keys import FINGERPRINT_PATTERN, SSH_KEY_CHARS_MAX
from exchange.gateway.statements import (
    CURSOR_PATTERN,
    LEDGER_PAGE_MAX,
    STATEMENT_FORMATS,
    TIME_SCHEMA,
    ledger_page,
    statement,
)
from exchange.gateway.ticker import ticker_view
from exchange.gateway.transfers import WithdrawParams, list_transfers, request_withdrawal
from exchange.wire import ID_PATTERN, ErrorCode, WireError, int_from_str, money_to_str
from schemas.catalog import Catalog

__all__ = ["PublicController", "AccountController", "OrderController", "ProviderController"]

limit_max = 1000
BPS_PER_UNIT = 10_000

# What each kind of route can answer besides 2xx (exchange/gateway/openapi.py): every route is
# rate limited per IP; a signed one reads its body (413), checks the signature and the nonce's
# form (400, 401), the scope (403), and may find too many key lookups waiting (503).
_PUBLIC = (429,)
_SIGNED = (400, 401, 403, 413, 429, 503)
# Commands the engine decides: the thing named may not exist (404), the engine refuses (422),
# Kafka is unreachable (503) or the engine does not answer in time (504).
_COMMAND = (*_SIGNED, 404, 422, 503, 504)

Limit = Annotated[int, QueryParameter(ge=1, le=limit_max)]
Depth = Annotated[int, QueryParameter(ge=1, le=BOOK_DEPTH_MAX)]
# Strings, parsed by wire.int_from_str: Litestar's int converter takes "+5", "1_0" and "１２".
Id = Annotated[str, PathParameter(pattern=ID_PATTERN)]
Time = Annotated[str | None, QueryParameter(schema_extra=TIME_SCHEMA)]
Scope = Literal["read", "trade", "provide", "withdraw", "admin"]
assert get_args(Scope) == SCOPES, "Scope lists keys.SCOPES"
assert LEDGER_PAGE_MAX == limit_max
_State = Literal["assigned", "confirmed", "disputed", "settled"]
_Role = Literal["holder", "provider"]
assert get_args(_State) == DELIVERY_STATES and get_args(_Role) == DELIVERY_ROLES
_Format = Literal["json", "csv"]
assert get_args(_Format) == STATEMENT_FORMATS


class KeyParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /keys`: the new key's scopes, at most the caller's."""

    scopes: Annotated[list[Scope], msgspec.Meta(min_length=1, max_length=2 * len(SCOPES))]


class SshKeyParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /ssh_keys`: one OpenSSH public key line (BAD_SSH_KEY when it does not load)."""

    public_key: Annotated[str, documented("type base64 [comment]", maxLength=SSH_KEY_CHARS_MAX)]


class DisputeBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`POST /deliveries/{obligation_id}/dispute`, optional: why."""

    reason: Annotated[str, msgspec.Meta(max_length=dispute_reason_chars_max)] = ""


@dataclass
class _JsonOrCsv(Operation):
    """The statement's operation: its 200 is JSON or, with `format=csv`, CSV."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            csv = OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))
            ok.content = {**(ok.content or {}), "text/csv": csv}


def _gateway(request: Request[Any, Any, Any]) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _order_entry(request: Request[Any, Any, Any]) -> tuple[Gateway, ApiKey]:
    """Authenticate an order-entry request (scope `trade`) and apply the per-account order limit."""
    gw = _gateway(request)
    key = await gw.authenticate(request, "trade")
    gw.check_orders(key.account)
    return gw, key


def _limit(limit: int) -> int:
    if not 1 <= limit <= limit_max:
        raise WireError(ErrorCode.BAD_REQUEST, f"limit: expected 1-{limit_max}, found {limit}")
    return limit


def _fees(catalog: Catalog) -> dict[str, Any]:
    """The `GET /fees` object: fee rates as fractions of notional, from the catalog's bps."""
    return {
        "maker": str(Decimal(catalog.maker_fee_bps) / BPS_PER_UNIT),
        "taker": str(Decimal(catalog.taker_fee_bps) / BPS_PER_UNIT),
        "maker_bps": catalog.maker_fee_bps,
        "taker_bps": catalog.taker_fee_bps,
        "penalty_per_gpu_hour": money_to_str(catalog.penalty_per_gpu_hour_micros),
        "currency": "USD",
    }


class PublicController(Controller):
    """Market data: no signature needed."""

    path = "/api/v1"
    tags = ["market data"]

    @get("/instruments", responses=errors(*_PUBLIC))
    async def instruments(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """List the catalog and the instruments trading now."""
        gw = _gateway(request)
        gw.check_ip(request)
        return {"instruments": gw.accounts.instruments(), "catalog": gw.catalog_view()}

    @get("/book/{symbol:str}", responses=errors(*_PUBLIC, 400, 404))
    async def book(
        self, request: Request[Any, Any, Any], symbol: FromPath[str], depth: Depth = 10
    ) -> dict[str, Any]:
        """Return the order book of an instrument to a depth, with its seq and checksum."""
        gw = _gateway(request)
        gw.check_ip(request)
        book = gw.feed.book(symbol, depth)
        if book is None:
            raise WireError(ErrorCode.UNKNOWN_SYMBOL, f"no book for {symbol!r}")
        return book

    @get("/trades/{symbol:str}", responses=errors(*_PUBLIC, 400, 404))
    async def trades(
        self, request: Request[Any, Any, Any], symbol: FromPath[str], limit: Limit = 100
    ) -> dict[str, Any]:
        """Return an instrument's latest trades, newest first."""
        gw = _gateway(request)
        gw.check_ip(request)
        return {"symbol": symbol, "trades": gw.feed.trades(symbol, _limit(limit))}

    @get("/candles/{symbol:str}", responses=errors(*_PUBLIC, 400, 404))
    async def candles(
        self,
        request: Request[Any, Any, Any],
        symbol: FromPath[str],
        interval: FromQuery[Literal["1m", "1h", "1d"]] = "1m",
        limit: Limit = 100,
    ) -> dict[str, Any]:
        """Return an instrument's candles of an interval (1m, 1h, 1d), oldest first."""
        gw = _gateway(request)
        gw.check_ip(request)
        rows = gw.feed.candles(symbol, interval, _limit(limit))
        return {"symbol": symbol, "interval": interval, "candles": rows}

    @get("/ticker/{symbol:str}", responses=errors(*_PUBLIC, 404))
    async def ticker(
        self, request: Request[Any, Any, Any], symbol: FromPath[str]
    ) -> dict[str, Any]:
        """Return an instrument's best bid and ask, last trade and rolling 24 h figures."""
        gw = _gateway(request)
        gw.check_ip(request)
        ticker = gw.feed.ticker(symbol)
        if ticker is None:
            if not gw.known_symbol("ticker", symbol):
                raise WireError(ErrorCode.UNKNOWN_SYMBOL, f"unknown instrument {symbol!r}")
            ticker = ticker_view(symbol, (0, 0, 0, 0), (0, 0), 0, [], gw.prices)
        return ticker

    @get("/tickers", responses=errors(*_PUBLIC))
    async def tickers(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Return the ticker of every instrument with a book or a trade."""
        gw = _gateway(request)
        gw.check_ip(request)
        found = (gw.feed.ticker(symbol) for symbol in gw.feed.symbols())
        return {"tickers": [t for t in found if t is not None]}

    @get("/fees", responses=errors(*_PUBLIC))
    async def fees(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Return the trading fees (fractions of notional) and the delivery penalty."""
        gw = _gateway(request)
        gw.check_ip(request)
        return _fees(gw.catalog)

    @get("/index/{gpu:str}", responses=errors(*_PUBLIC, 404))
    async def index(self, request: Request[Any, Any, Any], gpu: FromPath[str]) -> dict[str, Any]:
        """Return the GPU price index of a model (24 h volume-weighted price per GPU-hour)."""
        gw = _gateway(request)
        gw.check_ip(request)
        if not gw.known_symbol("index", gpu):
            raise WireError(ErrorCode.UNKNOWN_SYMBOL, f"unknown GPU model {gpu!r}")
        index = gw.feed.index(gpu)
        return index or {
            "gpu": gpu,
            "price": None,
            "volume_gpu_hours": 0,
            "trades": 0,
            "ts_ns": "0",
        }

    @get("/curve/{gpu:str}/{region:str}/{product:str}", responses=errors(*_PUBLIC, 404))
    async def curve(
        self,
        request: Request[Any, Any, Any],
        gpu: FromPath[str],
        region: FromPath[str],
        product: FromPath[str],
    ) -> dict[str, Any]:
        """Return the forward curve of a GPU model, region and product by delivery start."""
        gw = _gateway(request)
        gw.check_ip(request)
        name = f"{gpu}.{region}.{product}"
        if not gw.known_symbol("curve", name):
            raise WireError(ErrorCode.UNKNOWN_SYMBOL, f"unknown curve {name!r}")
        return {"curve": name, "points": gw.feed.curve(name)}


class AccountController(Controller):
    """What an account holds and did: signed, scope `read`."""

    path = "/api/v1"
    tags = ["account"]
    security = SIGNED

    @get("/balances", responses=errors(*_SIGNED))
    async def balances(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Return the account's cash by bucket."""
        key = await _gateway(request).authenticate(request, "read")
        balances: dict[str, Any] = _gateway(request).accounts.balances(key.account)
        return balances

    @get("/positions", responses=errors(*_SIGNED))
    async def positions(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Return the account's positions (short < 0)."""
        key = await _gateway(request).authenticate(request, "read")
        return {"positions": _gateway(request).accounts.positions(key.account)}

    @get("/fills", responses=errors(*_SIGNED))
    async def fills(
        self,
        request: Request[Any, Any, Any],
        symbol: FromQuery[str | None] = None,
        limit: Limit = 100,
    ) -> dict[str, Any]:
        """Return the account's fills, newest first."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "read")
        return {"fills": gw.accounts.fills(key.account, symbol, _limit(limit))}

    @get("/ledger", responses=errors(*_SIGNED))
    async def ledger(
        self,
        request: Request[Any, Any, Any],
        limit: Limit = 100,
        cursor: Annotated[
            str | None, QueryParameter(pattern=f"^({CURSOR_PATTERN[1:-1]})?$")
        ] = None,
        from_: Annotated[str | None, QueryParameter(name="from", schema_extra=TIME_SCHEMA)] = None,
        to: Time = None,
    ) -> dict[str, Any]:
        """Return a page of the account's ledger entries, newest first, and the next cursor."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "read")
        return await ledger_page(gw.pool, key.account, limit, cursor, from_, to)

    @get("/statements", responses=errors(*_SIGNED), operation_class=_JsonOrCsv)
    async def statements(
        self,
        request: Request[Any, Any, Any],
        from_: Annotated[str | None, QueryParameter(name="from", schema_extra=TIME_SCHEMA)] = None,
        to: Time = None,
        format: FromQuery[_Format] = "json",
    ) -> Response[Any]:
        """Return the account's statement of a period: opening balances, entries with running
        balances (JSON, or CSV for an accountant)."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "read")
        body, media_type = await statement(gw.pool, key.account, from_, to, format)
        return Response(content=body, media_type=media_type)

    @get("/deliveries", responses=errors(*_SIGNED))
    async def deliveries(
        self,
        request: Request[Any, Any, Any],
        # `state` is a name Litestar keeps for the app state: the query is read under another
        state_: Annotated[_State | None, QueryParameter(name="state")] = None,
        role: FromQuery[_Role | None] = None,
    ) -> dict[str, Any]:
        """Return the account's deliveries as holder and as provider (one `role` if given, one
        `state` if given: assigned, confirmed, disputed, settled), with the access of confirmed
        ones: active ones by obligation id, then settled ones, newest first."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "read")
        return gw.list_deliveries(key.account, state_, role)

    @post("/deliveries/{obligation_id:str}/dispute", status_code=200, responses=errors(*_COMMAND))
    async def dispute_delivery(
        self,
        request: Request[Any, Any, Any],
        obligation_id: Id,
        data: JSONBody[DisputeBody | None] = None,
    ) -> dict[str, Any]:
        """Dispute a delivery the account holds (its machines are unreachable; in the first hour
        of the window): no hour is released until an operator resolves it. Body optional:
        `{"reason"}`."""
        gw, key = await _order_entry(request)
        reason = data.reason if data else ""
        params = DisputeParams(
            obligation_id=int_from_str(obligation_id, "obligation_id"), reason=reason
        )
        return await gw.desk.dispute(key.account, params)

    @get("/deposits", responses=errors(*_SIGNED))
    async def deposits(self, request: Request[Any, Any, Any], limit: Limit = 100) -> dict[str, Any]:
        """Return the account's deposits (credited by an operator), newest first."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "read")
        return {"deposits": await list_transfers(gw.pool, key.account, "deposit", _limit(limit))}

    @get("/withdrawals", responses=errors(*_SIGNED))
    async def withdrawals(
        self, request: Request[Any, Any, Any], limit: Limit = 100
    ) -> dict[str, Any]:
        """Return the account's withdrawals (pending, completed, rejected), newest first."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "read")
        rows = await list_transfers(gw.pool, key.account, "withdrawal", _limit(limit))
        return {"withdrawals": rows}

    @post("/withdrawals", status_code=200, responses=errors(*_COMMAND))
    async def withdraw(
        self, request: Request[Any, Any, Any], data: JSONBody[WithdrawParams]
    ) -> dict[str, Any]:
        """Ask to be paid out (scope `withdraw`): `{"amount", "destination"}`. The amount moves
        from available to pending at once; an operator approves or rejects it."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "withdraw")
        gw.check_orders(key.account)
        return await request_withdrawal(gw.hub, gw.desk.shard, key.account, data)

    @get("/keys", responses=errors(*_SIGNED))
    async def keys(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """List the account's API keys (never their secrets)."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "read")
        return {"keys": await gw.list_keys(key.account)}

    @post("/keys", status_code=200, responses=errors(*_SIGNED, 409))
    async def create_key(
        self, request: Request[Any, Any, Any], data: JSONBody[KeyParams]
    ) -> dict[str, Any]:
        """Create an API key with at most the caller's scopes (scope `admin`); the secret is shown
        once. Revoking the caller revokes the new key too."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "admin")
        return await gw.create_key(key, list(data.scopes))

    @delete("/keys/{key_id:str}", status_code=200, responses=errors(*_SIGNED, 404))
    async def revoke_key(
        self,
        request: Request[Any, Any, Any],
        key_id: Annotated[str, PathParameter(pattern=KEY_ID_PATTERN)],
    ) -> dict[str, Any]:
        """Revoke one of the account's API keys and every key minted under it (scope `admin`)."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "admin")
        return await gw.revoke_key(key.account, key_id)

    @get("/ssh_keys", responses=errors(*_SIGNED))
    async def ssh_keys(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """List the account's SSH public keys (providers install them on delivered machines)."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "read")
        return await gw.list_ssh_keys(key.account)

    @post("/ssh_keys", status_code=200, responses=errors(*_SIGNED, 409, 422))
    async def add_ssh_key(
        self, request: Request[Any, Any, Any], data: JSONBody[SshKeyParams]
    ) -> dict[str, Any]:
        """Register an OpenSSH public key (ed25519, ECDSA, RSA >= 3072 bits)."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "trade")
        return await gw.add_ssh_key(key.account, data.public_key)

    @delete("/ssh_keys", status_code=200, responses=errors(*_SIGNED, 404))
    async def remove_ssh_key(
        self,
        request: Request[Any, Any, Any],
        fingerprint: Annotated[str, QueryParameter(pattern=FINGERPRINT_PATTERN)],
    ) -> dict[str, Any]:
        """Remove one of the account's SSH keys by its fingerprint ("SHA256:...", a query: its
        base64 may hold "/")."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "trade")
        return await gw.remove_ssh_key(key.account, fingerprint)


class OrderController(Controller):
    """Order entry and order state: signed."""

    path = "/api/v1"
    tags = ["orders"]
    security = SIGNED

    @get("/orders", responses=errors(*_SIGNED))
    async def orders(
        self,
        request: Request[Any, Any, Any],
        status: FromQuery[Literal["open", "closed"]] = "open",
        symbol: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        """List the account's open or closed orders."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "read")
        if status == "open":
            return {"orders": gw.accounts.open_orders(key.account, symbol)}
        if status == "closed":
            return {"orders": gw.accounts.closed_orders(key.account, symbol)}
        raise WireError(ErrorCode.BAD_REQUEST, f"status: expected open or closed, found {status!r}")

    @get("/orders/{order_id:str}", responses=errors(*_SIGNED, 404))
    async def order(self, request: Request[Any, Any, Any], order_id: Id) -> dict[str, Any]:
        """Return one of the account's orders."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "read")
        ref = OrderRef(order_id=int_from_str(order_id, "order_id"))
        return gw.desk.status(key.account, ref)["order"]  # type: ignore[no-any-return]

    @get("/orders/client/{client_order_id:str}", responses=errors(*_SIGNED, 404))
    async def order_by_client_id(
        self, request: Request[Any, Any, Any], client_order_id: FromPath[str]
    ) -> dict[str, Any]:
        """Return the order a client order id names (the lost-response lookup)."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "read")
        return gw.desk.status(key.account, OrderRef(client_order_id=client_order_id))["order"]  # type: ignore[no-any-return]

    @post("/orders", status_code=200, responses=errors(*_COMMAND))
    async def place(
        self, request: Request[Any, Any, Any], data: JSONBody[PlaceParams]
    ) -> dict[str, Any]:
        """Place an order; a retry with the same client_order_id returns the first order."""
        gw, key = await _order_entry(request)
        return await gw.place(key.account, data)

    @patch("/orders/{order_id:str}", responses=errors(*_COMMAND))
    async def amend(
        self, request: Request[Any, Any, Any], order_id: Id, data: JSONBody[AmendParams]
    ) -> dict[str, Any]:
        """Amend an order's price and remaining quantity."""
        gw, key = await _order_entry(request)
        ref = msgspec.structs.replace(data, order_id=int_from_str(order_id, "order_id"))
        return await gw.desk.amend(key.account, ref)

    @delete("/orders/{order_id:str}", status_code=200, responses=errors(*_COMMAND))
    async def cancel(self, request: Request[Any, Any, Any], order_id: Id) -> dict[str, Any]:
        """Cancel one order."""
        gw, key = await _order_entry(request)
        ref = OrderRef(order_id=int_from_str(order_id, "order_id"))
        return await gw.desk.cancel(key.account, ref)

    @delete("/orders", status_code=200, responses=errors(*_COMMAND))
    async def cancel_all(
        self, request: Request[Any, Any, Any], symbol: FromQuery[str | None] = None
    ) -> dict[str, Any]:
        """Cancel every open order of the account (of one symbol if given)."""
        gw, key = await _order_entry(request)
        return await gw.desk.cancel_all(key.account, CancelAllParams(symbol=symbol))

    @post("/route", status_code=200, responses=errors(*_COMMAND))
    async def route(
        self, request: Request[Any, Any, Any], data: JSONBody[RouteParams]
    ) -> dict[str, Any]:
        """Buy GPU-hours of a model across regions and products, cheapest first."""
        gw, key = await _order_entry(request)
        return await gw.route(key.account, key.key_id, data)


class ProviderController(Controller):
    """Providers: capacity. Deliveries are answered by the account controller."""

    path = "/api/v1"
    tags = ["providers"]
    security = SIGNED

    @post("/capacity", status_code=200, responses=errors(*_COMMAND))
    async def capacity(
        self, request: Request[Any, Any, Any], data: JSONBody[CapacityParams]
    ) -> dict[str, Any]:
        """Set the provider's GPUs of a model and region over a window (counted against the
        per-account order limit: it is an engine command, as an order is)."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "provide")
        gw.check_orders(key.account)
        return await gw.desk.capacity(key.account, data)

    @get("/capacity", responses=errors(*_SIGNED))
    async def capacity_list(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """List the provider's capacity as the engine accepted it."""
        gw = _gateway(request)
        key = await gw.authenticate(request, "provide")
        return {"capacity": gw.accounts.capacity(key.account)}
