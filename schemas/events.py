"""Events: what the engine decided, past tense, immutable.

Every event carries the shard, its shard sequence number (`seq`, contiguous from 1), the offset of
the command that caused it (`input_offset`) and the engine time (`ts_event`, the last clock tick).
Money is integer micro-dollars, prices integer ticks, quantities integer lots.
"""

from __future__ import annotations

import msgspec

from schemas.codes import OrderType, SelfTradePrevention, Side, TimeInForce

__all__ = [
    "Event",
    "OrderAccepted",
    "OrderRejected",
    "CommandRejected",
    "OrderCancelled",
    "OrderExpired",
    "OrderAmended",
    "TradeExecuted",
    "CashChanged",
    "PositionChanged",
    "CapacityUpdated",
    "InstrumentListed",
    "InstrumentClosed",
    "DeliveryAssigned",
    "DeliveryStarted",
    "DeliverySettled",
    "DeliveryDisputed",
    "DisputeResolved",
    "DepositCredited",
    "WithdrawalRequested",
    "WithdrawalSettled",
    "InstrumentHalted",
    "InstrumentResumed",
    "InstrumentOrdersCancelled",
    "AccountSuspended",
    "AccountReinstated",
    "EVENT_TYPES",
]


class _Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    shard: int = 0
    seq: int = 0
    input_offset: int = -1
    ts_event: int = 0


class OrderAccepted(_Event, tag="OrderAccepted", frozen=True):
    order_id: int
    account: int
    symbol: str
    side: Side
    order_type: OrderType
    tif: TimeInForce
    price_ticks: int
    lots: int
    post_only: bool = False
    stp: SelfTradePrevention = SelfTradePrevention.CANCEL_TAKER
    expire_ns: int = 0
    client_order_id: str = ""


class OrderRejected(_Event, tag="OrderRejected", frozen=True):
    """An order command (place, amend, cancel, cancel-all) refused; nothing changed."""

    account: int
    code: int
    reason: str
    symbol: str = ""
    order_id: int = 0
    client_order_id: str = ""


class CommandRejected(_Event, tag="CommandRejected", frozen=True):
    """A non-order command (deposit, capacity, delivery, malformed input) refused."""

    command: str
    code: int
    reason: str
    account: int = 0


class OrderCancelled(_Event, tag="OrderCancelled", frozen=True):
    """Lots were cancelled; `lots_remaining` > 0 means the order still rests (self-trade decrement)."""

    order_id: int
    account: int
    symbol: str
    lots_cancelled: int
    lots_remaining: int
    reason: int


class OrderExpired(_Event, tag="OrderExpired", frozen=True):
    order_id: int
    account: int
    symbol: str
    lots: int
    reason: int


class OrderAmended(_Event, tag="OrderAmended", frozen=True):
    order_id: int
    account: int
    symbol: str
    price_ticks: int
    lots: int
    priority_kept: bool


class TradeExecuted(_Event, tag="TradeExecuted", frozen=True):
    trade_id: int
    symbol: str
    price_ticks: int
    lots: int
    aggressor_side: Side
    maker_order_id: int
    taker_order_id: int
    maker_account: int
    taker_account: int
    maker_fee_micros: int
    taker_fee_micros: int


class CashChanged(_Event, tag="CashChanged", frozen=True):
    """One account's balances moved. The deltas of all CashChanged of one command sum to zero."""

    account: int
    available_delta: int
    held_delta: int
    escrow_delta: int
    collateral_delta: int
    reason: int
    ref_id: int
    pending_delta: int = 0  # withdrawals asked for and not yet approved or rejected


class PositionChanged(_Event, tag="PositionChanged", frozen=True):
    account: int
    symbol: str
    delta_lots: int
    position_lots: int
    reason: int
    ref_id: int


class CapacityUpdated(_Event, tag="CapacityUpdated", frozen=True):
    account: int
    gpu: str
    region: str
    start_ns: int
    end_ns: int
    gpus: int


class InstrumentListed(_Event, tag="InstrumentListed", frozen=True):
    instrument_id: int
    symbol: str
    gpu: str
    region: str
    product: str
    start_ns: int
    hours: int
    gate_close_ns: int
    price_band_min_ticks: int
    price_band_max_ticks: int
    lots_max: int


class InstrumentClosed(_Event, tag="InstrumentClosed", frozen=True):
    instrument_id: int
    symbol: str
    open_interest_lots: int


class DeliveryAssigned(_Event, tag="DeliveryAssigned", frozen=True):
    obligation_id: int
    symbol: str
    provider: int
    holder: int
    gpus: int
    start_ns: int
    end_ns: int
    escrow_micros: int


class DeliveryStarted(_Event, tag="DeliveryStarted", frozen=True):
    obligation_id: int
    provider: int
    holder: int


class DeliverySettled(_Event, tag="DeliverySettled", frozen=True):
    obligation_id: int
    provider: int
    holder: int
    outcome: int
    hours_delivered: int
    hours_failed: int
    released_micros: int
    refund_micros: int
    penalty_micros: int


class DeliveryDisputed(_Event, tag="DeliveryDisputed", frozen=True):
    """The holder reported the machine unreachable; no hour is released until it is resolved."""

    obligation_id: int
    provider: int
    holder: int


class DisputeResolved(_Event, tag="DisputeResolved", frozen=True):
    """An operator ended a dispute: `released` goes on delivering, else the holder is refunded
    (a DeliverySettled with the refund and penalty follows in the same command)."""

    obligation_id: int
    provider: int
    holder: int
    released: bool


class DepositCredited(_Event, tag="DepositCredited", frozen=True):
    """An external payment credited; `deposit_id` is the ref_id of its CashChanged."""

    deposit_id: int
    account: int
    amount_micros: int
    reference: str


class WithdrawalRequested(_Event, tag="WithdrawalRequested", frozen=True):
    """A user's withdrawal is pending: the amount moved from available to pending."""

    withdrawal_id: int
    account: int
    amount_micros: int
    destination: str


class WithdrawalSettled(_Event, tag="WithdrawalSettled", frozen=True):
    """A pending withdrawal approved (the money left) or rejected (it returned to available)."""

    withdrawal_id: int
    account: int
    amount_micros: int
    approved: bool


class InstrumentHalted(_Event, tag="InstrumentHalted", frozen=True):
    """Trading stopped: `reason` is a HaltReason. A circuit breaker's halt ends at the first
    clock tick at or after `until_ns` (0: until an operator resumes it); it names the trade
    price that tripped it and the reference price it moved too far from."""

    instrument_id: int
    symbol: str
    reason: int
    until_ns: int = 0
    reference_price_ticks: int = 0
    trade_price_ticks: int = 0


class InstrumentResumed(_Event, tag="InstrumentResumed", frozen=True):
    """Trading resumed; `reason` is the HaltReason of the halt that ended."""

    instrument_id: int
    symbol: str
    reason: int


class InstrumentOrdersCancelled(_Event, tag="InstrumentOrdersCancelled", frozen=True):
    """An operator cancelled every resting order of an instrument (the OrderCancelled before
    it in the same command, reason OPERATOR); `orders` is how many."""

    instrument_id: int
    symbol: str
    orders: int


class AccountSuspended(_Event, tag="AccountSuspended", frozen=True):
    """New orders of the account are refused; its open orders were cancelled just before."""

    account: int


class AccountReinstated(_Event, tag="AccountReinstated", frozen=True):
    account: int


Event = (
    OrderAccepted
    | OrderRejected
    | CommandRejected
    | OrderCancelled
    | OrderExpired
    | OrderAmended
    | TradeExecuted
    | CashChanged
    | PositionChanged
    | CapacityUpdated
    | InstrumentListed
    | InstrumentClosed
    | DeliveryAssigned
    | DeliveryStarted
    | DeliverySettled
    | DeliveryDisputed
    | DisputeResolved
    | DepositCredited
    | WithdrawalRequested
    | WithdrawalSettled
    | InstrumentHalted
    | InstrumentResumed
    | InstrumentOrdersCancelled
    | AccountSuspended
    | AccountReinstated
)

EVENT_TYPES = (
    OrderAccepted,
    OrderRejected,
    CommandRejected,
    OrderCancelled,
    OrderExpired,
    OrderAmended,
    TradeExecuted,
    CashChanged,
    PositionChanged,
    CapacityUpdated,
    InstrumentListed,
    InstrumentClosed,
    DeliveryAssigned,
    DeliveryStarted,
    DeliverySettled,
    DeliveryDisputed,
    DisputeResolved,
    DepositCredited,
    WithdrawalRequested,
    WithdrawalSettled,
    InstrumentHalted,
    InstrumentResumed,
    InstrumentOrdersCancelled,
    AccountSuspended,
    AccountReinstated,
)
