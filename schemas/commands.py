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
    "DisputeDelivery",
    "ResolveDispute",
    "RequestWithdrawal",
    "SettleWithdrawal",
    "HaltInstrument",
    "ResumeInstrument",
    "CancelInstrumentOrders",
    "SuspendAccount",
    "ReinstateAccount",
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
    """An operator credits an external payment. A non-empty `ref` (the payment's reference) is
    credited once: the engine refuses a second deposit with the same one (DUPLICATE_REFERENCE)."""

    account: int
    amount_micros: int
    ref: str = ""


class Withdraw(_Command, tag="Withdraw", frozen=True):
    """An operator pays out of an account's available cash at once (no request, no approval)."""

    account: int
    amount_micros: int
    ref: str = ""


class RequestWithdrawal(_Command, tag="RequestWithdrawal", frozen=True):
    """A user asks to be paid out: the amount moves from available to pending at once."""

    account: int
    amount_micros: int
    destination: str = ""


class SettleWithdrawal(_Command, tag="SettleWithdrawal", frozen=True):
    """An operator approves a pending withdrawal (the money leaves) or rejects it (it returns)."""

    withdrawal_id: int
    approved: bool
    account: int = 0  # the operator acts as the external account


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


class DisputeDelivery(_Command, tag="DisputeDelivery", frozen=True):
    """The holder cannot reach the machine: stop releasing the obligation's hours until an
    operator resolves it. Accepted in the first hour of the delivery window."""

    account: int
    obligation_id: int
    reason: str = ""


class ResolveDispute(_Command, tag="ResolveDispute", frozen=True):
    """An operator ends a dispute: `release` pays the provider the hours (delivery goes on);
    otherwise the holder is refunded the remaining hours with the penalty."""

    obligation_id: int
    release: bool
    account: int = 0  # the operator acts as the external account


class HaltInstrument(_Command, tag="HaltInstrument", frozen=True):
    """An operator stops trading in an instrument until it is resumed: resting orders stay,
    new orders and amends are refused (INSTRUMENT_HALTED), cancels still work."""

    symbol: str
    account: int = 0  # the operator acts as the external account
    reason: str = ""


class ResumeInstrument(_Command, tag="ResumeInstrument", frozen=True):
    """An operator ends a halt (its own or a circuit breaker's) at once."""

    symbol: str
    account: int = 0


class CancelInstrumentOrders(_Command, tag="CancelInstrumentOrders", frozen=True):
    """An operator cancels every resting order in an instrument, of every account."""

    symbol: str
    account: int = 0


class SuspendAccount(_Command, tag="SuspendAccount", frozen=True):
    """An operator suspends an account: its open orders are cancelled and its new orders and
    amends refused (ACCOUNT_SUSPENDED) until it is reinstated. Its money stays where it is."""

    target_account: int
    account: int = 0
    reason: str = ""


class ReinstateAccount(_Command, tag="ReinstateAccount", frozen=True):
    target_account: int
    account: int = 0


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
    | DisputeDelivery
    | ResolveDispute
    | RequestWithdrawal
    | SettleWithdrawal
    | HaltInstrument
    | ResumeInstrument
    | CancelInstrumentOrders
    | SuspendAccount
    | ReinstateAccount
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
    DisputeDelivery,
    ResolveDispute,
    RequestWithdrawal,
    SettleWithdrawal,
    HaltInstrument,
    ResumeInstrument,
    CancelInstrumentOrders,
    SuspendAccount,
    ReinstateAccount,
)
