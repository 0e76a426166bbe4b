"""Commands: what traders, providers, the clock and provisioning ask the engine to do.

Immutable, tagged by `type`, new fields always with defaults so old logs still decode.
Every command carries the shard it is for (the Kafka key) and `ts_init`, when the gateway made it;
the engine never reads `ts_init`: time enters only through ClockTick.
"""

from __future__ import annotations

import msgspec

from schemas.codes import OrderType, SelfTradePrevention, Side, TimeInForce

__all__ = [
    "Command",
    "PlaceOrder",
    "CancelOrder",
    "AmendOrder",
    "CancelAll",
    "Deposit",
    "Withdraw",
    "CapacityUpdate",
    "ClockTick",
    "DeliveryConfirmed",
    "DeliveryFailed",
    "COMMAND_TYPES",
]


class _Command(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    shard: int = 0
    ts_init: int = 0


class PlaceOrder(_Command, tag="PlaceOrder", frozen=True):
    account: int
    symbol: str
    side: Side
    lots: int
    price_ticks: int = 0
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    stp: SelfTradePrevention = SelfTradePrevention.CANCEL_TAKER
    expire_ns: int = 0
    client_order_id: str = ""


class CancelOrder(_Command, tag="CancelOrder", frozen=True):
    account: int
    order_id: int


class AmendOrder(_Command, tag="AmendOrder", frozen=True):
    """Change price and/or remaining lots. A pure lot decrease keeps time priority."""

    account: int
    order_id: int
    price_ticks: int
    lots: int


class CancelAll(_Command, tag="CancelAll", frozen=True):
    account: int
    symbol: str | None = None


class Deposit(_Command, tag="Deposit", frozen=True):
    account: int
    amount_micros: int
    ref: str = ""


class Withdraw(_Command, tag="Withdraw", frozen=True):
    account: int
    amount_micros: int
    ref: str = ""


class CapacityUpdate(_Command, tag="CapacityUpdate", frozen=True):
    """Set a provider's GPUs of one model and region for every hour in [start_ns, end_ns)."""

    account: int
    gpu: str
    region: str
    start_ns: int
    end_ns: int
    gpus: int


class ClockTick(_Command, tag="ClockTick", frozen=True):
    ts_ns: int


class DeliveryConfirmed(_Command, tag="DeliveryConfirmed", frozen=True):
    account: int
    obligation_id: int


class DeliveryFailed(_Command, tag="DeliveryFailed", frozen=True):
    """Delivery failed or was interrupted after `hours_delivered` hours."""

    account: int
    obligation_id: int
    hours_delivered: int = 0
    reason: str = ""


Command = (
    PlaceOrder
    | CancelOrder
    | AmendOrder
    | CancelAll
    | Deposit
    | Withdraw
    | CapacityUpdate
    | ClockTick
    | DeliveryConfirmed
    | DeliveryFailed
)

COMMAND_TYPES = (
    PlaceOrder,
    CancelOrder,
    AmendOrder,
    CancelAll,
    Deposit,
    Withdraw,
    CapacityUpdate,
    ClockTick,
    DeliveryConfirmed,
    DeliveryFailed,
)
