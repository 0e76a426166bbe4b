"""Stable codes and enumerations shared by every message. Numbers never change meaning.

Rejections are grouped by the stage that refuses, like exchange-core's result codes:
1xxx validation of the command itself, 2xxx risk, 3xxx matching, 4xxx delivery.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum

__all__ = [
    "Side",
    "OrderType",
    "TimeInForce",
    "SelfTradePrevention",
    "Reject",
    "CancelReason",
    "ExpireReason",
    "CashReason",
    "PositionReason",
    "DeliveryOutcome",
    "HaltReason",
]


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    GTC = "gtc"
    GTD = "gtd"
    IOC = "ioc"
    FOK = "fok"


class SelfTradePrevention(StrEnum):
    """What happens when an order would trade against its own account's resting order."""

    NONE = "none"
    CANCEL_TAKER = "cancel_taker"
    CANCEL_MAKER = "cancel_maker"
    CANCEL_BOTH = "cancel_both"
    DECREMENT = "decrement"


class Reject(IntEnum):
    """Why a command was refused. Refusals change no state."""

    # 1xxx: the command itself
    UNKNOWN_INSTRUMENT = 1001
    INSTRUMENT_NOT_TRADING = 1002
    PRICE_OUT_OF_BAND = 1003
    PRICE_INVALID = 1004
    LOTS_INVALID = 1005
    LOTS_ABOVE_MAX = 1006
    UNKNOWN_ACCOUNT = 1007
    ORDER_TYPE_INVALID = 1008
    AMOUNT_INVALID = 1009
    UNKNOWN_ORDER = 1010
    NOT_ORDER_OWNER = 1011
    CAPACITY_RANGE_INVALID = 1012
    EXPIRY_INVALID = 1013
    MALFORMED = 1014
    WRONG_SHARD = 1015  # names another shard, or an instrument or capacity another shard owns
    DUPLICATE_REFERENCE = 1016  # a deposit whose payment reference was credited before
    UNKNOWN_WITHDRAWAL = 1017
    NOT_OPERATOR = 1018  # a market control (halt, suspend, ...) from another than the operator (0)
    INSTRUMENT_HALTED = 1019  # an order or amend while the instrument is halted; or halted again
    INSTRUMENT_NOT_HALTED = 1020  # a resume of an instrument that is not halted
    # 2xxx: risk
    INSUFFICIENT_CASH = 2001
    INSUFFICIENT_COVER = 2002
    OPEN_ORDERS_LIMIT = 2003
    CAPACITY_BELOW_COMMITTED = 2004
    ENGINE_FULL = 2005
    BALANCE_LIMIT = 2006
    WITHDRAWAL_LIMIT = 2007  # above the per-request or the per-day withdrawal limit
    CAPACITY_LIMIT = 2008  # a provider's capacity rows (hours x GPU model x region) at its limit
    ACCOUNT_SUSPENDED = 2009  # an order or amend from a suspended account; or suspended again
    ACCOUNT_NOT_SUSPENDED = 2010  # a reinstatement of an account that is not suspended
    # 3xxx: matching
    POST_ONLY_WOULD_TAKE = 3001
    FOK_NOT_FILLABLE = 3002
    NO_LIQUIDITY = 3003
    AMEND_NO_CHANGE = 3004
    # 4xxx: delivery
    UNKNOWN_OBLIGATION = 4001
    OBLIGATION_STATE = 4002
    NOT_OBLIGATION_PROVIDER = 4003
    NOT_OBLIGATION_HOLDER = 4004
    DISPUTE_WINDOW = 4005  # a dispute outside the first hour of the delivery window


class CancelReason(IntEnum):
    USER = 1
    IOC_REMAINDER = 2
    SELF_TRADE = 3
    CANCEL_ALL = 4
    OPERATOR = 5  # an operator cancelled the instrument's orders or suspended the account


class ExpireReason(IntEnum):
    GTD = 1
    GATE_CLOSURE = 2


class CashReason(IntEnum):
    """Why money moved; with the reference id it identifies the ledger transaction."""

    DEPOSIT = 1
    WITHDRAWAL = 2
    ORDER_HOLD = 3
    ORDER_RELEASE = 4
    TRADE = 5
    FEE = 6
    SHORT_COVERED = 7
    DELIVERY_RELEASE = 8
    DELIVERY_REFUND = 9
    DELIVERY_PENALTY = 10
    WITHDRAWAL_REQUESTED = 11  # available -> pending
    WITHDRAWAL_REJECTED = 12  # pending -> available


class PositionReason(IntEnum):
    TRADE = 1
    DELIVERY_ASSIGNED = 2


class DeliveryOutcome(IntEnum):
    DELIVERED = 1
    FAILED = 2
    INTERRUPTED = 3


class HaltReason(IntEnum):
    """Why an instrument stopped trading (InstrumentHalted) and which halt ended (resumed)."""

    OPERATOR = 1  # until an operator resumes it
    CIRCUIT_BREAKER = 2  # a trade moved too far from the reference price: until a clock tick
