"""Typed results of the SDK: frozen msgspec Structs converted from the gateway's JSON.

Prices, quantities and money are `decimal.Decimal` (the wire sends decimal strings; a Decimal
keeps the tick's precision: `Decimal("2.400")`). Timestamps are integer UNIX nanoseconds
(`*_ns`), ids are integers. Field names are the wire's (API.md), so a field means the same thing
in the SDK, in REST answers and in WebSocket pushes. Fields the gateway may leave out have
defaults, and fields the SDK does not know are ignored, so newer gateways still decode.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, TypeVar

import msgspec

__all__ = [
    "Market",
    "Level",
    "OrderBook",
    "Trade",
    "Candle",
    "Ticker",
    "Balance",
    "Position",
    "Order",
    "Fill",
    "OrderResult",
    "RouteChild",
    "RouteResult",
    "Execution",
    "ProvisionRequest",
    "Access",
    "Delivery",
    "DeliveryUpdate",
    "SshKey",
    "Transfer",
    "Fees",
    "LedgerEntry",
    "LedgerPage",
    "ModelError",
    "to_model",
]

Level = tuple[Decimal, Decimal]  # (price, qty)
M = TypeVar("M")


class Market(msgspec.Struct, frozen=True, kw_only=True):
    """A listed instrument (`GET /instruments`), with the catalog's tick."""

    symbol: str
    gpu: str = ""
    region: str = ""
    product: str = ""
    start_ns: int = 0
    hours: int = 0
    gate_close_ns: int = 0
    status: str = ""
    lots_max: int = 0
    price_band_min: Decimal | None = None
    price_band_max: Decimal | None = None
    tick: Decimal | None = None


class OrderBook(msgspec.Struct, frozen=True, kw_only=True):
    """An order book snapshot (`GET /book/{symbol}`): levels best first."""

    symbol: str
    seq: int = 0
    bids: list[Level] = []
    asks: list[Level] = []
    checksum: int = 0
    ts_ns: int = 0


class Trade(msgspec.Struct, frozen=True, kw_only=True):
    """A public trade; `side` is the aggressor's."""

    trade_id: int
    symbol: str = ""
    price: Decimal
    qty: Decimal
    side: str = ""
    ts_ns: int = 0
    seq: int = 0  # position in gx.marketdata (WebSocket pushes only)


class Candle(msgspec.Struct, frozen=True, kw_only=True):
    """One OHLCV bar starting at `start_ns`."""

    start_ns: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trades: int = 0
    symbol: str = ""
    interval: str = ""

    def ohlcv(self) -> list[int | Decimal]:
        """Return the ccxt row `[ts_ms, open, high, low, close, volume]`."""
        ts_ms = self.start_ns // 1_000_000
        return [ts_ms, self.open, self.high, self.low, self.close, self.volume]


class Ticker(msgspec.Struct, frozen=True, kw_only=True):
    """Best bid and ask, the last trade and the rolling 24 h figures of an instrument (None
    where there is none), from `GET /ticker` or a `ticker` push."""

    symbol: str
    bid: Decimal | None = None
    bid_qty: Decimal | None = None
    ask: Decimal | None = None
    ask_qty: Decimal | None = None
    last: Decimal | None = None
    last_qty: Decimal | None = None
    ts_ns: int = 0
    seq: int = 0
    # the rolling 24 h figures when the answer or push was made
    open: Decimal | None = None
    high: Decimal | None = None
    low: Decimal | None = None
    volume: Decimal | None = None
    quote_volume: Decimal | None = None
    vwap: Decimal | None = None
    trades: int = 0
    status: str = "trading"  # "halted": new orders are refused until it trades again
    halt_reason: str | None = None  # "operator" or "circuit_breaker"
    halt_until_ns: int | None = None  # a breaker's halt ends at the first clock tick from then


class Balance(msgspec.Struct, frozen=True, kw_only=True):
    """An account's cash in USD by bucket."""

    account: int | str | None = None
    available: Decimal
    held: Decimal = Decimal(0)
    escrow: Decimal = Decimal(0)
    collateral: Decimal = Decimal(0)
    pending: Decimal = Decimal(0)  # withdrawals asked for, not yet approved or rejected
    ts_ns: int = 0
    account_seq: int = 0


class Position(msgspec.Struct, frozen=True, kw_only=True):
    """Signed lots held in an instrument: long > 0 (GPU-hours to receive), short < 0."""

    symbol: str
    qty: Decimal
    delta: Decimal | None = None  # the change of the push that produced it (WebSocket only)


class Order(msgspec.Struct, frozen=True, kw_only=True):
    """An order as the gateway reports it; `cum_qty + leaves_qty = qty` while it lives.

    A rejected placement (`status` "rejected", `order_id` 0) carries `reject_code` and `reason`,
    and None for what the engine's refusal does not tell: side, type, tif, price, post_only, stp.
    """

    order_id: int
    client_order_id: str = ""
    symbol: str = ""
    side: str | None = None
    type: str | None = None
    tif: str | None = None
    price: Decimal | None = None
    qty: Decimal = Decimal(0)
    cum_qty: Decimal = Decimal(0)
    leaves_qty: Decimal = Decimal(0)
    status: str = ""
    post_only: bool | None = None
    stp: str | None = None
    expire_ns: int = 0
    ts_ns: int = 0
    reject_code: str | None = None
    reason: str | None = None


class Fill(msgspec.Struct, frozen=True, kw_only=True):
    """One execution of one of the account's orders."""

    trade_id: int
    order_id: int
    symbol: str = ""
    side: str = ""
    price: Decimal
    qty: Decimal
    fee: Decimal = Decimal(0)
    liquidity: str = ""
    ts_ns: int = 0


class OrderResult(msgspec.Struct, frozen=True, kw_only=True):
    """What placing an order did: the order and its immediate fills.

    `duplicate` is true when the gateway recognised the `client_order_id` of an earlier attempt
    and answered with that attempt's order (its fills are then not repeated).
    """

    order: Order
    fills: list[Fill] = []
    duplicate: bool = False


class RouteChild(msgspec.Struct, frozen=True, kw_only=True):
    """One child order of a routed order; `order` is None and `error` set if it was refused."""

    order: Order | None = None
    fills: list[Fill] = []
    error: dict[str, Any] | None = None


class RouteResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a routed buy did: its child orders and the GPU-hours bought and still missing."""

    children: list[RouteChild] = []
    gpu_hours_filled: int = 0
    gpu_hours_left: int = 0


class Execution(msgspec.Struct, frozen=True, kw_only=True):
    """A private execution report (`executions` channel).

    `exec_type` is the wire's (`new`, `trade`, `amended`, `canceled`, `expired`, `rejected`) or
    `snapshot` for each open order of the snapshot sent on subscribe. Trade fields are set only
    when `exec_type` is `trade`.
    """

    exec_type: str
    order: Order
    last_price: Decimal | None = None
    last_qty: Decimal | None = None
    trade_id: int | None = None
    fee: Decimal | None = None
    liquidity: str | None = None
    reject_code: str | None = None
    reason: str | None = None
    account_seq: int = 0
    ts_ns: int = 0


class Fees(msgspec.Struct, frozen=True, kw_only=True):
    """The trading fees as fractions of notional, and the delivery penalty (`GET /fees`)."""

    maker: Decimal
    taker: Decimal
    maker_bps: int = 0
    taker_bps: int = 0
    penalty_per_gpu_hour: Decimal | None = None
    currency: str = "USD"


class LedgerEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One posting of the account's ledger (`GET /ledger`, `GET /statements`)."""

    id: str
    seq: int
    ts_ns: int
    bucket: str
    amount: Decimal
    reason: str
    ref_id: int = 0
    balance: Decimal | None = None  # the bucket's running balance (statements only)


class LedgerPage(msgspec.Struct, frozen=True, kw_only=True):
    """A page of ledger entries, newest first, and the cursor of the next page (None: the end)."""

    entries: tuple[LedgerEntry, ...] = ()
    next_cursor: str | None = None


class SshKey(msgspec.Struct, frozen=True, kw_only=True):
    """A registered SSH public key (`GET /ssh_keys`), named by its OpenSSH fingerprint."""

    fingerprint: str
    type: str = ""
    bits: int = 0
    public_key: str = ""
    comment: str = ""
    created_ns: int = 0


class Transfer(msgspec.Struct, frozen=True, kw_only=True):
    """A deposit or a withdrawal (`GET /deposits`, `GET /withdrawals`, `POST /withdrawals`).

    `status`: pending (a withdrawal awaiting an operator), completed or rejected (its amount
    returned to available). A deposit has a `reference`, a withdrawal a `destination`.
    """

    id: int
    amount: Decimal
    status: str
    reference: str = ""
    destination: str = ""
    ts_ns: int = 0
    updated_ns: int = 0


class ProvisionRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A provisioning request to a provider: deliver `gpus` GPUs of `symbol` to `holder`."""

    obligation_id: int
    symbol: str = ""
    holder: int | str | None = None
    gpus: int = 0
    start_ns: int = 0
    end_ns: int = 0
    deadline_ns: int = 0
    stage: str = ""
    ssh_keys: tuple[SshKey, ...] = ()  # the holder's keys: install them on the machines


class Access(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach delivered machines: `ssh -p port user@host`, then `instructions`."""

    host: str
    port: int
    user: str
    instructions: str = ""


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery obligation as its holder and its provider see it (`GET /deliveries`).

    `state` is `assigned`, `confirmed`, `disputed` or `settled` (then `outcome` is `delivered`,
    `failed` or `interrupted`); `access` is set once the delivery is confirmed.
    """

    obligation_id: int
    symbol: str = ""
    provider: int = 0
    holder: int = 0
    gpus: int = 0
    start_ns: int = 0
    end_ns: int = 0
    state: str = ""
    outcome: str | None = None
    hours_released: int = 0
    refund: Decimal = Decimal(0)
    penalty: Decimal = Decimal(0)
    access: Access | None = None
    ts_ns: int = 0


class DeliveryUpdate(msgspec.Struct, frozen=True, kw_only=True):
    """One `deliveries` push: `type` is `snapshot` (one per current delivery on subscribe),
    `assigned`, `confirmed`, `hour_released`, `disputed`, `resolved` or `settled`."""

    type: str
    delivery: Delivery
    account_seq: int = 0
    released: bool | None = None  # `resolved`: whether the operator paid the provider


class ModelError(ValueError):
    """A gateway answer that does not have the shape API.md specifies."""


def to_model(data: Any, kind: type[M]) -> M:
    """Convert decoded JSON to a model; numeric strings become Decimal or int as the type says."""
    try:
        return msgspec.convert(data, kind, strict=False)
    except msgspec.ValidationError as error:
        name = getattr(kind, "__name__", str(kind))
        raise ModelError(f"{name}: the gateway's answer does not match API.md: {error}") from None
