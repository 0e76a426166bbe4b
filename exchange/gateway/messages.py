"""The WebSocket's answers and pushes as msgspec Structs: the shapes `/ws` writes, named once.

The requests are decoded into Structs where they are handled (exchange/gateway/ws.py `METHODS`,
exchange/gateway/orders.py); the answers and pushes are encoded from dicts on the hot path
(exchange/gateway/accounts.py, market_feed.py, deliveries.py, provisioning.py), so their shapes
are written down here, field for field as exchange/API.md lists them. The AsyncAPI document
(exchange/gateway/asyncapi.py) takes its JSON Schemas from these Structs, and its test holds every
frame of a live gateway to them: a field added, dropped or retyped in an encoder fails it.

Every Struct forbids unknown fields, so the document says exactly what is sent today. Numbers
follow exchange/wire.py: prices, quantities and money are decimal strings, `*_ns` integer strings,
ids JSON integers.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.codes import OrderType, SelfTradePrevention, Side, TimeInForce
from schemas.provisioning import Access, Stage

__all__ = ["ErrorAnswer", "ErrorBody", "RESULTS", "PUSHES", "HEARTBEAT", "Order", "Fill"]

# The wire's strings (exchange/wire.py "Numbers on the wire").
Price = Annotated[str, msgspec.Meta(pattern=r"^[0-9]+(\.[0-9]+)?$", description="decimal USD")]
Qty = Annotated[str, msgspec.Meta(pattern=r"^[0-9]+$", description="whole lots")]
SignedQty = Annotated[str, msgspec.Meta(pattern=r"^-?[0-9]+$", description="lots, short < 0")]
Money = Annotated[str, msgspec.Meta(pattern=r"^-?[0-9]+(\.[0-9]+)?$", description="USD")]
Ns = Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,19}$", description="UNIX nanoseconds")]
Level = tuple[Price, Qty]  # [price, qty]; qty "0" in an update removes the level
RequestId = int | str


class _Wire(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


# ---------------------------------------------------------------------- objects (API.md)


class Order(_Wire, frozen=True, kw_only=True):
    """An order as the gateway shows it; a refused placement adds `reject_code` and `reason`."""

    order_id: int
    client_order_id: str
    symbol: str
    side: Side | None
    type: OrderType | None
    tif: TimeInForce | None
    price: Price | None
    qty: Qty
    cum_qty: Qty
    leaves_qty: Qty
    status: Literal["new", "partially_filled", "filled", "canceled", "expired", "rejected"]
    post_only: bool | None
    stp: SelfTradePrevention | None
    expire_ns: Ns
    ts_ns: Ns
    reject_code: str | None = None
    reason: str | None = None


class Fill(_Wire, frozen=True, kw_only=True):
    """One of the account's trades."""

    trade_id: int
    order_id: int
    symbol: str
    side: Side
    price: Price
    qty: Qty
    fee: Money
    liquidity: Literal["maker", "taker"]
    ts_ns: Ns


class PublicTrade(_Wire, frozen=True, kw_only=True):
    """One trade of a `trades` push; `side` is the aggressor's."""

    trade_id: int
    price: Price
    qty: Qty
    side: Side
    ts_ns: Ns


class Delivery(_Wire, frozen=True, kw_only=True):
    """A delivery as its holder and provider see it (`access` once confirmed)."""

    obligation_id: int
    symbol: str
    provider: int
    holder: int
    gpus: int
    start_ns: Ns
    end_ns: Ns
    state: Literal["assigned", "confirmed", "disputed", "settled"]
    outcome: Literal["delivered", "failed", "interrupted"] | None
    hours_released: int
    refund: Money
    penalty: Money
    access: Access | None
    ts_ns: Ns


class SshKeyView(_Wire, frozen=True, kw_only=True):
    """A registered SSH public key."""

    fingerprint: str
    type: str
    bits: int
    public_key: str
    comment: str
    created_ns: Ns


class HolderKey(_Wire, frozen=True, kw_only=True):
    """A holder's SSH key in a provisioning request: install it on the machines."""

    fingerprint: str
    type: str
    public_key: str


# ---------------------------------------------------------------------- errors


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """Why a request was refused; open to new fields (an engine refusal adds its own)."""

    code: str
    msg: str
    retryable: bool
    retry_after_ms: int = 0  # with RATE_LIMITED
    engine_code: int | None = None  # an engine refusal: its schemas.codes.Reject number
    reason: str | None = None  # an engine refusal: the engine's reason
    sent: bool | None = None  # false: nothing reached Kafka (UNAVAILABLE)
    order: Order | None = None  # a placement the engine answered without a decision


class ErrorAnswer(_Wire, frozen=True, kw_only=True):
    """A refused request; `id` is null when the request had none usable."""

    id: RequestId | None
    status: int
    error: ErrorBody


# ---------------------------------------------------------------------- results, by method


class PingResult(_Wire, frozen=True, kw_only=True):
    ts_ns: Ns


class LogonResult(_Wire, frozen=True, kw_only=True):
    account: int
    scopes: list[str]


class SubscribeResult(_Wire, frozen=True, kw_only=True):
    channel: str
    symbols: list[str]
    resumed: bool


class UnsubscribeResult(_Wire, frozen=True, kw_only=True):
    channel: str
    symbols: list[str]


class PlaceResult(_Wire, frozen=True, kw_only=True):
    order: Order | None
    fills: list[Fill]
    duplicate: bool = False  # a retry of a client_order_id: the first attempt's order


class OrderResult(_Wire, frozen=True, kw_only=True):
    order: Order | None


class CancelAllResult(_Wire, frozen=True, kw_only=True):
    canceled: int


class RouteChildRequest(_Wire, frozen=True, kw_only=True):
    """The child order a route tried to place (shown with its refusal)."""

    symbol: str
    side: Side
    type: OrderType
    price: Price
    qty: Qty
    tif: TimeInForce
    client_order_id: str


class RouteChild(_Wire, frozen=True, kw_only=True):
    order: Order | None
    fills: list[Fill]
    duplicate: bool = False
    error: ErrorBody | None = None  # the child was refused: `request` is what was asked
    request: RouteChildRequest | None = None


class RouteResult(_Wire, frozen=True, kw_only=True):
    children: list[RouteChild]
    gpu_hours_filled: int
    gpu_hours_left: int


class DeadManResult(_Wire, frozen=True, kw_only=True):
    armed: bool
    deadline_ms: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+$")] | None


class CapacityResult(_Wire, frozen=True, kw_only=True):
    status: Literal["accepted"]


class ObligationResult(_Wire, frozen=True, kw_only=True):
    obligation_id: int


class DeliveriesResult(_Wire, frozen=True, kw_only=True):
    deliveries: list[Delivery]


class DeliveryResult(_Wire, frozen=True, kw_only=True):
    delivery: Delivery | None


class SshKeysResult(_Wire, frozen=True, kw_only=True):
    ssh_keys: list[SshKeyView]


class SshKeyRemoved(_Wire, frozen=True, kw_only=True):
    fingerprint: str
    removed: bool


# method -> the Struct of its answer's `result` (a test requires one for each ws.METHODS entry)
RESULTS: dict[str, type[msgspec.Struct]] = {
    "ping": PingResult,
    "session.logon": LogonResult,
    "subscribe": SubscribeResult,
    "unsubscribe": UnsubscribeResult,
    "order.place": PlaceResult,
    "order.amend": OrderResult,
    "order.cancel": OrderResult,
    "order.cancel_all": CancelAllResult,
    "order.status": OrderResult,
    "order.route": RouteResult,
    "cancel_all_after": DeadManResult,
    "capacity.update": CapacityResult,
    "provision.confirm": ObligationResult,
    "provision.fail": ObligationResult,
    "ssh_key.list": SshKeysResult,
    "ssh_key.add": SshKeyView,
    "ssh_key.remove": SshKeyRemoved,
    "delivery.list": DeliveriesResult,
    "delivery.dispute": DeliveryResult,
}


# ---------------------------------------------------------------------- pushes, by channel


class _Push(_Wire, frozen=True, kw_only=True):
    conn_seq: int  # +1 per push on this connection, from 1


class _Public(_Push, frozen=True, kw_only=True):
    symbol: str
    seq: int  # the source record's position in gx.marketdata
    prev_seq: int
    ts_ns: Ns


class BookSnapshotPush(_Push, frozen=True, kw_only=True):
    """The book to `depth` levels each side, best first, at `seq`."""

    channel: Literal["book"]
    type: Literal["snapshot"]
    symbol: str
    depth: int
    seq: int
    bids: list[Level]
    asks: list[Level]
    checksum: int
    ts_ns: Ns


class BookUpdate(_Public, frozen=True, kw_only=True):
    """The levels one engine step changed (absolute qty; "0" removes), `seq` = `prev_seq` + 1."""

    channel: Literal["book"]
    type: Literal["update"]
    depth: int
    bids: list[Level]
    asks: list[Level]
    checksum: int


class TradesUpdate(_Public, frozen=True, kw_only=True):
    """The symbol's trades of one engine step, oldest first."""

    channel: Literal["trades"]
    type: Literal["update"]
    trades: list[PublicTrade]


class TickerUpdate(_Public, frozen=True, kw_only=True):
    """Top of book, last trade and the rolling 24 h figures (null where none)."""

    channel: Literal["ticker"]
    type: Literal["update"]
    bid: Price | None
    bid_qty: Qty | None
    ask: Price | None
    ask_qty: Qty | None
    last: Price | None
    last_qty: Qty | None
    open: Price | None
    high: Price | None
    low: Price | None
    volume: Qty
    quote_volume: Money
    vwap: Money | None
    trades: int
    status: Annotated[
        Literal["trading", "halted"],
        msgspec.Meta(description="halted: new orders are refused (INSTRUMENT_HALTED)"),
    ]
    halt_reason: Annotated[
        Literal["operator", "circuit_breaker"] | None,
        msgspec.Meta(description="null while trading"),
    ]
    halt_until_ns: Annotated[
        Ns | None,
        msgspec.Meta(
            description="a breaker's halt ends at the first clock tick from then; null: "
            "until an operator resumes it"
        ),
    ]


class CandleUpdate(_Public, frozen=True, kw_only=True):
    """One OHLCV bar as it stands."""

    channel: Literal["candles"]
    type: Literal["update"]
    interval: Literal["1m", "1h", "1d"]
    start_ns: Ns
    open: Price
    high: Price
    low: Price
    close: Price
    volume: Qty
    trades: int


class IndexUpdate(_Public, frozen=True, kw_only=True):
    """A GPU model's 24 h volume-weighted price (`symbol` is the model)."""

    channel: Literal["index"]
    type: Literal["update"]
    price: Price | None
    volume_gpu_hours: Qty
    trades: int


class CurveUpdate(_Public, frozen=True, kw_only=True):
    """One delivery start of a forward curve (`symbol` is GPU.REGION.PRODUCT)."""

    channel: Literal["curve"]
    type: Literal["update"]
    instrument: str
    start_ns: Ns
    hours: int
    last: Price | None
    bid: Price | None
    ask: Price | None
    active: bool


class _Numbered(_Push, frozen=True, kw_only=True):
    account_seq: int  # the engine sequence of the event
    prev_account_seq: int  # that of the channel's previous push for the account


class ExecutionUpdate(_Numbered, frozen=True, kw_only=True):
    """One change of one of the account's orders (trade fields null unless a trade)."""

    channel: Literal["executions"]
    type: Literal["update"]
    exec_type: Literal["new", "trade", "amended", "canceled", "expired", "rejected"]
    order: Order
    last_price: Price | None
    last_qty: Qty | None
    trade_id: int | None
    fee: Money | None
    liquidity: Literal["maker", "taker"] | None
    reject_code: str | None
    reason: str | None
    ts_ns: Ns


class ExecutionsSnapshot(_Push, frozen=True, kw_only=True):
    """The account's open orders as of `account_seq`."""

    channel: Literal["executions"]
    type: Literal["snapshot"]
    account_seq: int
    orders: list[Order]


class BalancesPush(_Numbered, frozen=True, kw_only=True):
    """The account's money by bucket (a snapshot re-sends the last update)."""

    channel: Literal["balances"]
    type: Literal["snapshot", "update"]
    available: Money
    held: Money
    escrow: Money
    collateral: Money
    pending: Money
    ts_ns: Ns


class PositionUpdate(_Numbered, frozen=True, kw_only=True):
    """One instrument's position after a trade; `delta` is the change."""

    channel: Literal["positions"]
    type: Literal["update"]
    symbol: str
    qty: SignedQty
    delta: SignedQty
    ts_ns: Ns


class Position(_Wire, frozen=True, kw_only=True):
    symbol: str
    qty: SignedQty


class PositionsSnapshot(_Push, frozen=True, kw_only=True):
    """The account's open positions as of `account_seq`."""

    channel: Literal["positions"]
    type: Literal["snapshot"]
    account_seq: int
    positions: list[Position]


class DeliveryPush(_Numbered, frozen=True, kw_only=True):
    """A change of a delivery the account holds or provides."""

    channel: Literal["deliveries"]
    type: Literal["assigned", "confirmed", "hour_released", "disputed", "resolved", "settled"]
    delivery: Delivery
    released: bool | None = None  # `resolved`: the operator let the delivery go on
    ts_ns: Ns


class DeliveriesSnapshot(_Push, frozen=True, kw_only=True):
    """The account's active deliveries as of `account_seq`."""

    channel: Literal["deliveries"]
    type: Literal["snapshot"]
    account_seq: int
    deliveries: list[Delivery]


class ProvisionRequest(_Push, frozen=True, kw_only=True):
    """A delivery the logged-on provider is asked to provision (again on each subscribe)."""

    channel: Literal["provisioning"]
    type: Literal["request"]
    obligation_id: int
    symbol: str
    provider: int
    holder: int
    gpus: int
    start_ns: Ns
    end_ns: Ns
    deadline_ns: Ns
    stage: Stage
    ssh_keys: list[HolderKey]


class ResyncRequired(_Push, frozen=True, kw_only=True):
    """A subscription stopped: the client read too slowly; subscribe again."""

    channel: str
    type: Literal["resync_required"]
    symbol: str | None
    reason: str


class Heartbeat(_Push, frozen=True, kw_only=True):
    """Every second: the last seq of each of the connection's subscriptions."""

    channel: Literal["heartbeat"]
    ts_ns: Ns
    seqs: dict[str, int]


# subscription channel -> the pushes it carries (ResyncRequired: any channel may stop)
PUSHES: dict[str, tuple[type[msgspec.Struct], ...]] = {
    "book": (BookSnapshotPush, BookUpdate, ResyncRequired),
    "trades": (TradesUpdate, ResyncRequired),
    "ticker": (TickerUpdate, ResyncRequired),
    "candles": (CandleUpdate, ResyncRequired),
    "index": (IndexUpdate, ResyncRequired),
    "curve": (CurveUpdate, ResyncRequired),
    "executions": (ExecutionsSnapshot, ExecutionUpdate, ResyncRequired),
    "balances": (BalancesPush, ResyncRequired),
    "positions": (PositionsSnapshot, PositionUpdate, ResyncRequired),
    "deliveries": (DeliveriesSnapshot, DeliveryPush, ResyncRequired),
    "provisioning": (ProvisionRequest, ResyncRequired),
}
HEARTBEAT = Heartbeat  # the connection's own push, of no subscription
