"""Order entry: validate a request, make it a command, send it, answer with what the engine did.

Shared by REST and the WebSocket, so both refuse the same input with the same codes. Each method
takes its request as the typed Struct below (`PlaceParams`, ...): REST has Litestar decode the
body into it, the WebSocket decodes its params with `parse_params`.

- the gateway refuses malformed requests (BAD_REQUEST naming the field), unknown symbols
  (UNKNOWN_SYMBOL), prices off tick (PRICE_OFF_TICK), quantities that are not whole lots
  (QTY_INVALID) and other accounts' orders (UNKNOWN_ORDER, telling nothing of their existence)
  before anything reaches Kafka;
- the engine refuses the rest (cash, band, size, limits); its refusal comes back with status
  422, its `schemas.codes.Reject` number as `engine_code` and, named at the wire
  (`wire.reject_name`), as the code.

`client_order_id` makes placement idempotent across gateway instances: it is reserved in
PostgreSQL before the command is sent, and a retry finds the order the first attempt made. A
reservation whose command certainly never reached Kafka (`hub.NotSent`) is released at once, so
the retry places the order; after any later failure it stays (the command may have been written).

Every number of a request is parsed strictly and bounded (exchange/wire.py "Numbers on the
wire"): strings through `qty_from_str`, `Prices.from_str`, `int_from_str`; JSON integers as
`WireInt`.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Protocol, TypeVar

import msgspec

from exchange.gateway.accounts import Accounts
from exchange.gateway.deliveries import Deliveries
from exchange.gateway.hub import Hub, NotSent, command_timeout_s
from exchange.gateway.market_feed import MarketFeed
from exchange.gateway.openapi import documented, price_field
from exchange.gateway.provisioning import Provisioning
from exchange.wire import (
    COUNT_MAX,
    ID_MAX,
    NS_PATTERN,
    QTY_PATTERN,
    ErrorCode,
    Prices,
    WireError,
    WireInt,
    int_from_str,
    money_to_str,
    qty_from_str,
    qty_to_str,
)
from schemas import commands as c
from schemas import events as e
from schemas.catalog import Catalog
from schemas.codes import OrderType, SelfTradePrevention, Side, TimeInForce
from schemas.provisioning import (
    Access,
    ProvisionConfirmed,
    ProvisionFailed,
    ProvisionRequested,
    access_error,
    failure_error,
    window_hours,
)
from schemas.symbols import SymbolError, parse_symbol

__all__ = [
    "OrderDesk",
    "ClientOrders",
    "PlaceParams",
    "OrderRef",
    "AmendParams",
    "CancelAllParams",
    "RouteParams",
    "CapacityParams",
    "ConfirmParams",
    "FailParams",
    "DisputeParams",
    "dispute_reason_chars_max",
    "client_order_id_max",
    "route_children_max",
    "CLIENT_ORDER_ID_PATTERN",
    "PLACE_RULES",
    "parse_params",
    "parse_access",
]

client_order_id_max = 36
dispute_reason_chars_max = 500
route_children_max = 50  # child orders one routed order may place (each takes an order token)
# Always fullmatch: a "$" anchor alone would take a trailing newline ("id\n").
CLIENT_ORDER_ID_PATTERN = rf"^[A-Za-z0-9_.:-]{{1,{client_order_id_max}}}$"
# A routed order's children are "<prefix>-<index>": the prefix leaves room for the index.
_ROUTE_PREFIX_CHARS_MAX = client_order_id_max - len(f"-{route_children_max - 1}")
ROUTE_PREFIX_PATTERN = rf"^[A-Za-z0-9_.:-]{{1,{_ROUTE_PREFIX_CHARS_MAX}}}$"
_CLIENT_ORDER_ID = re.compile(CLIENT_ORDER_ID_PATTERN)
_ROUTE_PREFIX = re.compile(ROUTE_PREFIX_PATTERN)
# Empty: the gateway names the order.
_OPTIONAL_ID = f"^({CLIENT_ORDER_ID_PATTERN[1:-1]})?$"
_OPTIONAL_PREFIX = f"^({ROUTE_PREFIX_PATTERN[1:-1]})?$"
_Qty = Annotated[str, documented("whole lots > 0", pattern=QTY_PATTERN)]
_Ns = Annotated[str, documented("integer UNIX nanoseconds", pattern=NS_PATTERN)]
_Price = Annotated[str, price_field("a price at the tick's precision")]
# PlaceParams as a whole: a limit order (the default type) names its price.
PLACE_RULES: dict[str, Any] = {
    "anyOf": [
        {"required": ["price"], "properties": {"price": {"type": "string"}}},
        {"required": ["type"], "properties": {"type": {"const": "market"}}},
    ]
}
_duplicate_poll_s = 0.02
# Of the decoder's message a refusal quotes: it names a field it did not expect as sent, and a
# request may send one of 16 KB (found by tests/exchange/test_fuzz_wire.py).
refusal_quote_chars_max = 200
T = TypeVar("T", bound=msgspec.Struct)


class ClientOrders(Protocol):
    """Where client order ids are reserved (the key store in PostgreSQL)."""

    async def reserve_client_order(
        self, account: int, client_order_id: str, ts_ns: int
    ) -> bool: ...

    async def release_client_order(
        self, account: int, client_order_id: str, ts_ns: int
    ) -> None: ...


# ---------------------------------------------------------------------- request parameters


class _Params(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class PlaceParams(_Params, kw_only=True):
    symbol: str
    side: Side
    qty: _Qty
    type: OrderType = OrderType.LIMIT
    price: _Price | None = None
    tif: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    stp: SelfTradePrevention = SelfTradePrevention.CANCEL_TAKER
    expire_ns: _Ns = "0"
    client_order_id: Annotated[
        str, documented("empty: the gateway names it", pattern=_OPTIONAL_ID)
    ] = ""


class OrderRef(_Params, kw_only=True):
    order_id: Annotated[int, msgspec.Meta(ge=-ID_MAX, le=ID_MAX)] = 0
    client_order_id: str = ""


class AmendParams(OrderRef, kw_only=True):
    price: _Price
    qty: _Qty


class CancelAllParams(_Params, kw_only=True):
    symbol: str | None = None


class RouteParams(_Params, kw_only=True):
    gpu: str
    gpu_hours: Annotated[int, msgspec.Meta(le=COUNT_MAX), documented(minimum=1)]
    start_ns: _Ns
    end_ns: _Ns
    max_price: _Price
    regions: list[str] = []
    products: list[str] = []
    client_order_id: Annotated[
        str, documented("the children's id prefix; empty: the gateway's", pattern=_OPTIONAL_PREFIX)
    ] = ""


class CapacityParams(_Params, kw_only=True):
    gpu: str
    region: str
    start_ns: _Ns
    end_ns: _Ns
    gpus: Annotated[int, msgspec.Meta(ge=0, le=COUNT_MAX)]


class ConfirmParams(_Params, kw_only=True):
    obligation_id: WireInt
    access: Any  # {"host", "port", "user", "instructions"}: checked by `parse_access`


class FailParams(_Params, kw_only=True):
    obligation_id: WireInt
    hours_delivered: WireInt = 0
    reason: str = ""


class DisputeParams(_Params, kw_only=True):
    obligation_id: WireInt
    reason: str = ""


def parse_params(params: Any, kind: type[T]) -> T:
    """Convert request params to a typed Struct; refuse with BAD_REQUEST naming the field."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise WireError(
            ErrorCode.BAD_REQUEST, f"params: expected an object, found {_quote(repr(params))}"
        )
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as error:
        raise WireError(ErrorCode.BAD_REQUEST, f"params: {_quote(str(error))}") from None


def _quote(text: str) -> str:
    """`text`, cut to refusal_quote_chars_max characters."""
    if len(text) <= refusal_quote_chars_max:
        return text
    return text[:refusal_quote_chars_max] + f"... ({len(text)} characters)"


def parse_access(value: Any) -> Access:
    """Convert `provision.confirm`'s access to `Access`; refuse with BAD_ACCESS naming the field."""
    if not isinstance(value, dict):
        raise WireError(
            ErrorCode.BAD_ACCESS,
            'access: expected an object {"host", "port", "user", "instructions"}, '
            f"found {type(value).__name__}",
        )
    unknown = sorted(set(value) - set(Access.__struct_fields__))
    if unknown:
        raise WireError(ErrorCode.BAD_ACCESS, f"access: unknown fields {_quote(str(unknown[:5]))}")
    try:
        access = msgspec.convert(value, Access, strict=True)
    except msgspec.ValidationError as error:
        raise WireError(ErrorCode.BAD_ACCESS, f"access: {_quote(str(error))}") from None
    why = access_error(access)
    if why is not None:
        raise WireError(ErrorCode.BAD_ACCESS, why)
    return access


def _catalog_subset(names: list[str], catalog: Sequence[str], field: str) -> frozenset[str]:
    """The names a route keeps (all of the catalog's when none given); refuse any other list.

    At most the catalog's count, each known and given once: a route's work is bounded by the
    catalog, not by the request.
    """
    if len(names) > len(catalog):
        raise WireError(
            ErrorCode.BAD_REQUEST,
            f"{field}: expected at most {len(catalog)} (the catalog's), found {len(names)}",
        )
    known = frozenset(catalog)
    for name in names:
        if name not in known:
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"{field}: expected some of {sorted(known)}, found {name!r:.40}",
            )
    chosen = frozenset(names)
    if len(chosen) != len(names):
        raise WireError(ErrorCode.BAD_REQUEST, f"{field}: expected each at most once")
    return chosen or known


def _reject(events: list[e.Event]) -> None:
    """Raise the engine's refusal, if the command was refused."""
    for event in events:
        if isinstance(event, e.OrderRejected | e.CommandRejected):
            raise WireError.rejected(event.code, event.reason)


# ---------------------------------------------------------------------- the desk


class OrderDesk:
    """Order entry and provider actions for one gateway."""

    def __init__(
        self,
        hub: Hub,
        accounts: Accounts,
        feed: MarketFeed,
        provisioning: Provisioning,
        client_orders: ClientOrders,
        catalog: Catalog,
        prices: Prices,
        *,
        deliveries: Deliveries,
    ) -> None:
        self.hub = hub  # sends the commands and waits for their events
        self.accounts = accounts
        self.feed = feed
        self.provisioning = provisioning
        self.deliveries = deliveries
        self.client_orders = client_orders
        self.catalog = catalog
        self.prices = prices
        self.shard = 0  # one shard today; every command still carries it

    # ------------------------------------------------------------------ orders

    def _symbol(self, symbol: str) -> str:
        try:
            parse_symbol(symbol)
        except SymbolError as error:
            raise WireError(ErrorCode.UNKNOWN_SYMBOL, str(error)) from None
        if not self.accounts.is_listed(symbol):
            raise WireError(ErrorCode.UNKNOWN_SYMBOL, f"symbol {symbol!r} is not listed")
        return symbol

    async def place(self, account: int, p: PlaceParams) -> dict[str, Any]:
        """Place an order; answer `{"order", "fills"}` (a retry answers the first order)."""
        symbol = self._symbol(p.symbol)
        lots = qty_from_str(p.qty)
        if p.type is OrderType.LIMIT:
            if p.price is None:
                raise WireError(ErrorCode.BAD_REQUEST, "price: a limit order needs a price")
            price_ticks = self.prices.from_str(p.price)
        else:
            price_ticks = 0 if p.price is None else self.prices.from_str(p.price)
        expire_ns = int_from_str(p.expire_ns, "expire_ns")
        cid = p.client_order_id or "gx-" + secrets.token_hex(8)
        if not _CLIENT_ORDER_ID.fullmatch(cid):
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"client_order_id: expected 1-{client_order_id_max} characters of "
                f"[A-Za-z0-9_.:-], found {cid!r:.60}",
            )
        reserved_ns = time.time_ns()
        if not await self.client_orders.reserve_client_order(account, cid, reserved_ns):
            return await self._existing(account, cid)
        command = c.PlaceOrder(
            shard=self.shard,
            ts_init=time.time_ns(),
            account=account,
            symbol=symbol,
            side=p.side,
            lots=lots,
            price_ticks=price_ticks,
            order_type=p.type,
            tif=p.tif,
            post_only=p.post_only,
            stp=p.stp,
            expire_ns=expire_ns,
            client_order_id=cid,
        )
        try:
            events = await self.hub.submit(command)
        except NotSent:
            # Nothing reached Kafka: free the id, or every retry would answer TIMEOUT for as
            # long as the reservation is kept (keys.CLIENT_ORDER_RETENTION_NS).
            await self.client_orders.release_client_order(account, cid, reserved_ns)
            raise
        return self._placed(account, cid, events)

    def _placed(self, account: int, cid: str, events: list[e.Event]) -> dict[str, Any]:
        accepted = next((ev for ev in events if isinstance(ev, e.OrderAccepted)), None)
        if accepted is None:
            rejected = self.accounts.order_by_client_id(account, cid)
            _reject(events)
            raise WireError(
                ErrorCode.UNAVAILABLE, "the engine answered without a decision", order=rejected
            )
        order = self.accounts.order(account, accepted.order_id)
        fills = [
            self._fill(ev, accepted.order_id, account)
            for ev in events
            if isinstance(ev, e.TradeExecuted) and ev.taker_order_id == accepted.order_id
        ]
        return {"order": order, "fills": fills}

    async def _existing(self, account: int, cid: str) -> dict[str, Any]:
        """Answer a retry: the order its first attempt made (waiting for it to arrive)."""
        deadline = time.monotonic() + command_timeout_s
        while True:
            refusal = self.accounts.refusal(account, cid)
            if refusal is not None:
                code, reason = refusal
                raise WireError.rejected(code, reason or "the order was rejected", duplicate=True)
            order = self.accounts.order_by_client_id(account, cid)
            if order is not None:
                return {"order": order, "fills": [], "duplicate": True}
            if time.monotonic() >= deadline:
                raise WireError(
                    ErrorCode.TIMEOUT,
                    f"client_order_id {cid!r} was used before and its order has not arrived; "
                    "ask order.status",
                )
            await asyncio.sleep(_duplicate_poll_s)

    def _fill(self, trade: e.TradeExecuted, order_id: int, account: int) -> dict[str, Any]:
        taker = trade.taker_order_id == order_id
        side = (
            trade.aggressor_side if taker else ("sell" if trade.aggressor_side == "buy" else "buy")
        )
        fee = trade.taker_fee_micros if taker else trade.maker_fee_micros
        return {
            "trade_id": trade.trade_id,
            "order_id": order_id,
            "symbol": trade.symbol,
            "side": str(side),
            "price": self.prices.to_str(trade.price_ticks),
            "qty": qty_to_str(trade.lots),
            "fee": money_to_str(fee),
            "liquidity": "taker" if taker else "maker",
            "ts_ns": str(trade.ts_event),
        }

    def _own_order(self, account: int, ref: OrderRef) -> int:
        """The order id a request names, if it is the account's own; else UNKNOWN_ORDER."""
        order_id = ref.order_id
        if not order_id and ref.client_order_id:
            order = self.accounts.order_by_client_id(account, ref.client_order_id)
            order_id = int(order["order_id"]) if order else 0
        if not order_id and not ref.client_order_id:
            raise WireError(ErrorCode.BAD_REQUEST, "params: give order_id or client_order_id")
        if not order_id or self.accounts.owner(order_id) != account:
            raise WireError(
                ErrorCode.UNKNOWN_ORDER,
                f"no order {ref.order_id or ref.client_order_id!r} of this account",
            )
        return order_id

    async def amend(self, account: int, p: AmendParams) -> dict[str, Any]:
        """Amend an order's price and remaining quantity."""
        order_id = self._own_order(account, p)
        command = c.AmendOrder(
            shard=self.shard,
            ts_init=time.time_ns(),
            account=account,
            order_id=order_id,
            price_ticks=self.prices.from_str(p.price),
            lots=qty_from_str(p.qty),
        )
        events = await self.hub.submit(command)
        _reject(events)
        return {"order": self.accounts.order(account, order_id)}

    async def cancel(self, account: int, p: OrderRef) -> dict[str, Any]:
        """Cancel one order."""
        order_id = self._own_order(account, p)
        command = c.CancelOrder(
            shard=self.shard, ts_init=time.time_ns(), account=account, order_id=order_id
        )
        events = await self.hub.submit(command)
        _reject(events)
        return {"order": self.accounts.order(account, order_id)}

    async def cancel_all(self, account: int, p: CancelAllParams) -> dict[str, Any]:
        """Cancel every open order of the account (of one symbol if given)."""
        if p.symbol is not None:
            self._symbol(p.symbol)
        if not self.accounts.open_orders(account, p.symbol):
            return {"canceled": 0}
        command = c.CancelAll(
            shard=self.shard, ts_init=time.time_ns(), account=account, symbol=p.symbol
        )
        events = await self.hub.submit(command)
        _reject(events)
        canceled = sum(1 for ev in events if isinstance(ev, e.OrderCancelled))
        return {"canceled": canceled}

    def status(self, account: int, p: OrderRef) -> dict[str, Any]:
        """The order a client order id or order id names (the lost-response lookup)."""
        if p.client_order_id:
            order = self.accounts.order_by_client_id(account, p.client_order_id)
        elif p.order_id and self.accounts.owner(p.order_id) == account:
            order = self.accounts.order(account, p.order_id)
        else:
            order = None
        if order is None:
            raise WireError(
                ErrorCode.UNKNOWN_ORDER,
                f"no order {p.client_order_id or p.order_id!r} of this account",
            )
        return {"order": order}

    # ------------------------------------------------------------------ routing

    async def route(
        self,
        account: int,
        p: RouteParams,
        *,
        charge: Callable[[int], None] | None = None,
        children_max: int = route_children_max,
    ) -> dict[str, Any]:
        """Buy GPU-hours of a model in a window, cheapest asks first, as IOC child orders.

        The request has paid one order token; `charge(n)` takes the `n` more its other children
        need before any is placed (raising RATE_LIMITED places none). At most `children_max`
        children.
        """
        if p.gpu_hours <= 0:
            raise WireError(ErrorCode.QTY_INVALID, f"gpu_hours: expected > 0, found {p.gpu_hours}")
        start_ns, end_ns = int_from_str(p.start_ns, "start_ns"), int_from_str(p.end_ns, "end_ns")
        max_ticks = self.prices.from_str(p.max_price, "max_price")
        if p.client_order_id and not _ROUTE_PREFIX.fullmatch(p.client_order_id):
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"client_order_id: expected 1-{_ROUTE_PREFIX_CHARS_MAX} characters of "
                f"[A-Za-z0-9_.:-] (the children add -<index>), found {p.client_order_id[:40]!r}",
            )
        regions = _catalog_subset(p.regions, self.catalog.regions, "regions")
        codes = [product.code for product in self.catalog.products]
        products = _catalog_subset(p.products, codes, "products")
        plan = self._route_plan(
            p.gpu, p.gpu_hours, (start_ns, end_ns), (regions, products), max_ticks, children_max
        )
        if charge is not None and len(plan) > 1:
            charge(len(plan) - 1)
        prefix = p.client_order_id or "rt-" + secrets.token_hex(6)
        children: list[dict[str, Any]] = []
        filled = 0
        for index, (symbol, lots, price_ticks, hours) in enumerate(plan):
            child = {
                "symbol": symbol,
                "side": "buy",
                "type": "limit",
                "price": self.prices.to_str(price_ticks),
                "qty": qty_to_str(lots),
                "tif": "ioc",
                "client_order_id": f"{prefix}-{index}",
            }
            try:
                result = await self.place(account, msgspec.convert(child, PlaceParams))
            except WireError as error:
                children.append(
                    {"order": None, "fills": [], "error": error.body(), "request": child}
                )
                continue
            children.append(result)
            order = result["order"] or {}
            filled += int(order.get("cum_qty", "0")) * hours
        return {
            "children": children,
            "gpu_hours_filled": filled,
            "gpu_hours_left": max(0, p.gpu_hours - filled),
        }

    def _route_plan(
        self,
        gpu: str,
        gpu_hours: int,
        window_ns: tuple[int, int],
        places: tuple[frozenset[str], frozenset[str]],
        max_ticks: int,
        children_max: int,
    ) -> list[tuple[str, int, int, int]]:
        """(symbol, lots, limit ticks, hours per lot) per child, cheapest GPU-hour first.

        `places` are the (regions, products) to buy in.
        """
        (start_ns, end_ns), (regions, products) = window_ns, places
        offers: list[tuple[int, int, str, int, int]] = []  # ticks, start, symbol, lots, hours
        for instrument in self.accounts.instruments():
            symbol = instrument["symbol"]
            key = parse_symbol(symbol)
            if key.gpu != gpu or key.region not in regions or key.product not in products:
                continue
            if key.start_ns < start_ns or key.end_ns > end_ns:
                continue
            for ticks, lots in self.feed.ask_levels(symbol):
                if ticks > max_ticks:
                    break
                offers.append((ticks, key.start_ns, symbol, lots, key.hours))
        offers.sort()
        left = gpu_hours
        chosen: dict[str, list[int]] = {}  # symbol -> [lots, worst ticks, hours]
        for ticks, _, symbol, lots, hours in offers:
            take = min(lots, left // hours)
            if take <= 0:
                continue
            entry = chosen.setdefault(symbol, [0, ticks, hours])
            entry[0] += take
            entry[1] = max(entry[1], ticks)
            left -= take * hours
            if left <= 0 or len(chosen) >= children_max:
                break
        return [(symbol, v[0], v[1], v[2]) for symbol, v in chosen.items()]

    # ------------------------------------------------------------------ providers

    async def capacity(self, account: int, p: CapacityParams) -> dict[str, Any]:
        """Set a provider's GPUs of a model and region over a window."""
        command = c.CapacityUpdate(
            shard=self.shard,
            ts_init=time.time_ns(),
            account=account,
            gpu=p.gpu,
            region=p.region,
            start_ns=int_from_str(p.start_ns, "start_ns"),
            end_ns=int_from_str(p.end_ns, "end_ns"),
            gpus=p.gpus,
        )
        events = await self.hub.submit(command)
        _reject(events)
        return {"status": "accepted"}

    def _outstanding(self, account: int, obligation_id: int) -> ProvisionRequested:
        request = self.provisioning.request(account, obligation_id)
        if request is None:
            raise WireError(
                ErrorCode.NOT_FOUND,
                f"obligation {obligation_id}: no outstanding provisioning request to this provider",
            )
        return request

    async def confirm(self, account: int, p: ConfirmParams) -> dict[str, Any]:
        """Confirm a delivery with access details (checked before anything is sent)."""
        access = parse_access(p.access)
        self._outstanding(account, p.obligation_id)
        await self.hub.send_provision(
            ProvisionConfirmed(obligation_id=p.obligation_id, provider=account, access=access)
        )
        return {"obligation_id": p.obligation_id}

    async def fail(self, account: int, p: FailParams) -> dict[str, Any]:
        """Report a delivery failed (or interrupted after `hours_delivered` hours, at most the
        delivery's; `reason` short and printable: `schemas.provisioning.failure_error`)."""
        request = self._outstanding(account, p.obligation_id)
        message = ProvisionFailed(
            obligation_id=p.obligation_id,
            provider=account,
            hours_delivered=p.hours_delivered,
            reason=p.reason,
        )
        why = failure_error(message, window_hours(request.start_ns, request.end_ns))
        if why is not None:
            raise WireError(ErrorCode.BAD_REQUEST, why)
        await self.hub.send_provision(message)
        return {"obligation_id": p.obligation_id}

    # ------------------------------------------------------------------ holders

    async def dispute(self, account: int, p: DisputeParams) -> dict[str, Any]:
        """Dispute a delivery the account holds (the machines are unreachable): no hour is
        released until an operator resolves it. Answer `{"delivery"}` once the engine took it.

        Refused here, before anything is sent, when the account does not hold the delivery
        (UNKNOWN_DELIVERY, telling nothing of another's); the engine refuses the rest (window,
        state) with its code.
        """
        if not self.deliveries.is_holder(account, p.obligation_id):
            raise WireError(
                ErrorCode.UNKNOWN_DELIVERY,
                f"obligation_id: no delivery {p.obligation_id} held by this account",
            )
        if len(p.reason) > dispute_reason_chars_max:
            raise WireError(
                ErrorCode.BAD_REQUEST,
                f"reason: expected at most {dispute_reason_chars_max} characters, "
                f"found {len(p.reason)}",
            )
        command = c.DisputeDelivery(
            shard=self.shard,
            ts_init=time.time_ns(),
            account=account,
            obligation_id=p.obligation_id,
            reason=p.reason,
        )
        events = await self.hub.submit(command)
        _reject(events)
        if not any(isinstance(ev, e.DeliveryDisputed) for ev in events):
            raise WireError(ErrorCode.UNAVAILABLE, "the engine answered without a decision")
        return {"delivery": self.deliveries.delivery(account, p.obligation_id)}
