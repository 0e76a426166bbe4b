"""The engine's memory layout: every piece of state is a 2-D int64 array, addressed by named columns.

All state arrays travel through the kernels as one named tuple (`matching.state.State`, fields
in the ST_* order below), so a kernel's signature stays short and it binds the arrays it uses. Column and op numbers are module constants, which
Numba freezes into the compiled code.
"""

from __future__ import annotations

from typing import NamedTuple, TypeVar

from schemas.ids import ACCOUNT_EXTERNAL, ACCOUNT_FEES

# --- state tuple members -------------------------------------------------------------------
ST_META, ST_CFG, ST_ACCTS, ST_INSTRS, ST_ORDERS, ST_LEVELS, ST_LEVEL_HT = 0, 1, 2, 3, 4, 5, 6
ST_POS, ST_POS_HT, ST_CAP, ST_CAP_HT, ST_OBL, ST_GTD = 7, 8, 9, 10, 11, 12
ST_WDS, ST_REFS = 13, 14  # pending withdrawals; payment references of deposits credited
ST_SCRATCH = 15  # working rows for gate closure (sorting positions); never stored
ST_COUNT = 16
ST_NAMES = (
    "meta", "cfg", "accounts", "instruments", "orders", "levels", "level_ht",
    "positions", "position_ht", "capacity", "capacity_ht", "obligations", "gtd_heap",
    "withdrawals", "deposit_refs", "scratch",
)  # fmt: skip
# Arrays rebuilt on restore rather than stored: indexes (their layout depends on insertion
# history) and scratch space. They are not part of the state hash either.
NOT_STORED = (ST_LEVEL_HT, ST_POS_HT, ST_CAP_HT, ST_SCRATCH)

# --- meta: counters and allocator heads (one row) ---------------------------------------------
M_NOW = 0  # engine time, ns: the last clock tick
M_ORDER_SEQ = 1
M_TRADE_SEQ = 2
M_INSTR_SEQ = 3
M_OBL_SEQ = 4
M_EVENT_SEQ = 5
M_ORDER_HWM, M_ORDER_FREE = 6, 7
M_LEVEL_HWM, M_LEVEL_FREE = 8, 9
M_POS_HWM, M_POS_FREE = 10, 11
M_CAP_HWM, M_CAP_FREE = 12, 13
M_OBL_HWM, M_OBL_FREE = 14, 15
M_GTD_SIZE = 16
M_ORDERS_LIVE, M_LEVELS_LIVE, M_POS_LIVE, M_CAP_LIVE, M_OBL_LIVE = 17, 18, 19, 20, 21
M_TRANSFER_SEQ = 22  # deposits and withdrawals: the ref_id of their CashChanged
M_WD_SEQ, M_WD_HWM, M_WD_FREE, M_WD_LIVE = 23, 24, 25, 26  # the pending withdrawals' pool
M_REFS_LIVE = 27  # deposit references kept
M_WIDTH = 32

# --- cfg: limits and fees, set once (one row) ----------------------------------------------------
CFG_SHARD = 0
CFG_ORDERS_OPEN_MAX = 1
CFG_MAKER_BPS = 2
CFG_TAKER_BPS = 3
CFG_PROTECTION_BPS = 4
CFG_PENALTY_MICROS = 5  # per GPU-hour
CFG_DEADLINE_NS = 6  # provisioning confirmation deadline after delivery start
CFG_DEPOSIT_MAX = 7
CFG_BALANCE_MAX = 8
CFG_CAPACITY_GPUS_MAX = 9
CFG_CAPACITY_HOURS_MAX = 10
CFG_TICK_MICROS = 11
CFG_REGIONS = 12  # regions in the catalog (capacity key = gpu * regions + region)
CFG_LOTS_MAX = 13  # the catalog's lots per order
CFG_WITHDRAWAL_MAX = 14  # one withdrawal request, micros
CFG_WITHDRAWAL_DAY_MAX = 15  # one account's withdrawal requests per engine day, micros
CFG_CAPACITY_HORIZON_HOURS = 16  # capacity is taken for hours before now + this (the calendar's)
CFG_CAPACITY_ROWS_ACCOUNT_MAX = 17  # capacity rows one provider holds at once
CFG_BREAKER_MOVE_BPS_MAX = 18  # a trade this far from the reference price halts (0: no breaker)
CFG_BREAKER_WINDOW_NS = 19  # the reference price is resampled once per window of engine time
CFG_BREAKER_HALT_NS = 20  # how long a circuit breaker's halt lasts
CFG_WIDTH = 21

# --- accounts -------------------------------------------------------------------------------
A_AVAIL, A_HELD, A_ESCROW, A_COLLAT, A_OPEN, A_HEAD, A_TAIL = 0, 1, 2, 3, 4, 5, 6
A_PENDING = 7  # withdrawals requested, not yet approved or rejected
A_WD_DAY, A_WD_DAY_SUM = 8, 9  # the engine day of the last request, and that day's requests
A_CAP_ROWS = 10  # capacity rows the account holds (bounded by CFG_CAPACITY_ROWS_ACCOUNT_MAX)
A_SUSPENDED = 11  # 1: an operator suspended the account (new orders refused)
A_WIDTH = 12

# --- instruments ------------------------------------------------------------------------------
I_ID, I_STATE, I_GPU, I_REGION, I_PRODUCT, I_START, I_HOURS, I_GATE = 0, 1, 2, 3, 4, 5, 6, 7
I_BAND_LO, I_BAND_HI, I_LOTS_MAX = 8, 9, 10
I_BEST = 11  # + side: best level of the bid (11) and ask (12) book
I_WORST = 13  # + side
I_CAPKEY, I_HOUR0, I_NOTIONAL_UNIT, I_COLLAT_UNIT = 15, 16, 17, 18
I_LAST_PRICE, I_VOLUME = 19, 20
I_ORDERS, I_POSITIONS = 21, 22  # resting orders and open positions (bound a tick's events)
I_HALT = 23  # 0 trading, else the HaltReason of the halt in force
I_HALT_UNTIL = 24  # a circuit breaker's halt ends at the first tick at or after this (ns)
I_REF_PRICE = 25  # the circuit breaker's reference price (0: none yet)
I_REF_WINDOW = 26  # the breaker window (engine time // CFG_BREAKER_WINDOW_NS) it was sampled in
I_WIDTH = 28
INSTR_FREE, INSTR_OPEN, INSTR_CLOSED = 0, 1, 2
# What a command's instrument column holds when it names no open instrument.
INSTR_ALL, INSTR_UNKNOWN, INSTR_NOT_TRADING = -1, -2, -3

# --- orders -----------------------------------------------------------------------------------
O_ID, O_ACCOUNT, O_INSTR, O_SIDE, O_PRICE, O_LOTS, O_FILLED, O_FLAGS = 0, 1, 2, 3, 4, 5, 6, 7
O_EXPIRE, O_PREV, O_NEXT, O_LEVEL, O_UNIT, O_COVERED, O_APREV, O_ANEXT = (
    8,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
)
O_WIDTH = 16
# An order id carries its slot in the low bits, so lookup is one array read and one compare.
ORDER_SLOT_BITS = 24
ORDER_SLOT_MASK = (1 << ORDER_SLOT_BITS) - 1

# order flags: tif (2 bits) | market (1) | post_only (1) | stp (3)
TIF_GTC, TIF_GTD, TIF_IOC, TIF_FOK = 0, 1, 2, 3
F_MARKET = 4
F_POST_ONLY = 8
F_STP_SHIFT = 4
STP_NONE, STP_CANCEL_TAKER, STP_CANCEL_MAKER, STP_CANCEL_BOTH, STP_DECREMENT = 0, 1, 2, 3, 4
BUY, SELL = 0, 1

# --- price levels -----------------------------------------------------------------------------
L_PRICE, L_HEAD, L_TAIL, L_LOTS, L_COUNT, L_PREV, L_NEXT, L_BOOK = 0, 1, 2, 3, 4, 5, 6, 7
L_WIDTH = 8

# --- positions --------------------------------------------------------------------------------
P_ACCOUNT, P_INSTR, P_LOTS, P_RESERVED, P_ESCROW, P_FEES, P_COLLAT, P_NEXT = 0, 1, 2, 3, 4, 5, 6, 7
P_WIDTH = 8

# --- provider capacity per (account, gpu x region, hour) ----------------------------------------
# A row's key packs (account, capkey, hour) into disjoint bits: account (30 bits, see
# EngineConfig.check), capkey (6) and the whole hour since the epoch (22: every int64 of
# nanoseconds is below hour 2**22), so two rows never share a key. A free row's key is EMPTY.
C_KEY, C_CAP, C_USED, C_NEXT = 0, 1, 2, 3
C_WIDTH = 4
CAP_HOUR_BITS, CAP_CAPKEY_BITS = 22, 6
CAP_HOUR_MASK, CAP_CAPKEY_MASK = (1 << CAP_HOUR_BITS) - 1, (1 << CAP_CAPKEY_BITS) - 1
CAP_ACCOUNT_SHIFT = CAP_HOUR_BITS + CAP_CAPKEY_BITS

# --- delivery obligations ---------------------------------------------------------------------
B_ID, B_STATE, B_PROVIDER, B_HOLDER, B_GPUS, B_START, B_HOURS, B_HOURS_LEFT = 0, 1, 2, 3, 4, 5, 6, 7
B_ESCROW_LEFT, B_FEES_LEFT, B_COLLAT_LEFT, B_INSTR_ID, B_GPU, B_REGION, B_PRODUCT, B_NEXT = (
    8, 9, 10, 11, 12, 13, 14, 15,
)  # fmt: skip
B_RELEASED = 16  # escrow released to the provider so far
B_WIDTH = 20
# DISPUTED: the holder reported the machine unreachable; no hour is released until resolved.
OBL_FREE, OBL_ASSIGNED, OBL_CONFIRMED, OBL_DISPUTED = 0, 1, 2, 3

# --- pending withdrawals ----------------------------------------------------------------------
# A withdrawal id carries its slot in the low ORDER_SLOT_BITS, as order and obligation ids do.
W_ID, W_ACCOUNT, W_AMOUNT, W_NEXT = 0, 1, 2, 3
W_WIDTH = 4

# --- deposit references: an open-addressing set of 63-bit hashes (0: empty), one column ------
REF_WIDTH = 1

# --- commands (one row each) ------------------------------------------------------------------
C0_OP, C0_ACCOUNT, C0_INSTR, C0_SIDE, C0_PRICE, C0_LOTS, C0_FLAGS, C0_EXPIRE = (
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
)
C0_ORDER, C0_AUX, C0_AUX2, C0_AUX3 = 8, 9, 10, 11
CMD_WIDTH = 12
OP_PLACE, OP_CANCEL, OP_AMEND, OP_CANCEL_ALL, OP_DEPOSIT, OP_WITHDRAW = 1, 2, 3, 4, 5, 6
OP_CAPACITY, OP_CLOCK, OP_CONFIRM, OP_FAIL, OP_REJECT, OP_LIST = 7, 8, 9, 10, 11, 12
OP_DISPUTE, OP_RESOLVE, OP_WD_REQUEST, OP_WD_SETTLE = 13, 14, 15, 16
OP_HALT, OP_RESUME, OP_CANCEL_INSTR, OP_SUSPEND, OP_REINSTATE = 17, 18, 19, 20, 21

# What each command keeps in the generic columns above: every name is one of those indexes, so the
# rows are unchanged; kernels and the facade's encoder use these names. C0_OP holds every op.
C_PLACE_ACCOUNT, C_PLACE_INSTR, C_PLACE_SIDE = C0_ACCOUNT, C0_INSTR, C0_SIDE
C_PLACE_PRICE, C_PLACE_LOTS = C0_PRICE, C0_LOTS
C_PLACE_FLAGS, C_PLACE_EXPIRE = C0_FLAGS, C0_EXPIRE  # order_flags; expire_ns (GTD only)
C_CANCEL_ACCOUNT, C_CANCEL_ORDER = C0_ACCOUNT, C0_ORDER
C_AMEND_ACCOUNT, C_AMEND_ORDER = C0_ACCOUNT, C0_ORDER
C_AMEND_PRICE, C_AMEND_LOTS = C0_PRICE, C0_LOTS
C_CANCEL_ALL_ACCOUNT, C_CANCEL_ALL_INSTR = C0_ACCOUNT, C0_INSTR  # or INSTR_ALL
C_TRANSFER_ACCOUNT, C_TRANSFER_AMOUNT = C0_ACCOUNT, C0_AUX  # deposit or withdrawal, micros
C_DEPOSIT_REF = C0_AUX2  # the hash of a deposit's payment reference, or 0 for none
C_WD_ID, C_WD_APPROVED = C0_ORDER, C0_AUX  # settling a pending withdrawal
C_CAPACITY_ACCOUNT, C_CAPACITY_GPUS = C0_ACCOUNT, C0_LOTS
C_CAPACITY_KEY = C0_AUX  # gpu * regions + region
C_CAPACITY_START_HOUR, C_CAPACITY_END_HOUR = C0_AUX2, C0_AUX3  # hours since the epoch
C_CLOCK_TS_NS = C0_AUX
C_DELIVERY_ACCOUNT, C_DELIVERY_OBLIGATION = C0_ACCOUNT, C0_ORDER  # confirm, fail, dispute
C_RESOLVE_RELEASE = C0_AUX  # 1: release the disputed hours; 0: refund them
C_FAIL_HOURS_DELIVERED = C0_LOTS
C_CONTROL_ACCOUNT, C_CONTROL_INSTR = C0_ACCOUNT, C0_INSTR  # market controls: the operator
C_CONTROL_TARGET = C0_AUX  # the account suspended or reinstated
C_REJECT_ACCOUNT, C_REJECT_CODE, C_REJECT_ORDER = C0_ACCOUNT, C0_AUX, C0_ORDER  # facade refusals
C_LIST_SLOT, C_LIST_INSTRUMENT_ID = C0_INSTR, C0_ORDER
C_LIST_GPU, C_LIST_REGION, C_LIST_PRODUCT = C0_ACCOUNT, C0_SIDE, C0_FLAGS  # catalog indexes
C_LIST_START_NS, C_LIST_HOURS, C_LIST_GATE_NS = C0_EXPIRE, C0_AUX, C0_AUX2
C_LIST_BAND_LO, C_LIST_BAND_HI, C_LIST_LOTS_MAX = C0_PRICE, C0_AUX3, C0_LOTS

# --- events (one row each): type, index of the causing command, then the kind's columns --------
# Events name instruments by instrument id (never by slot: slots are reused). Each kind's columns
# are named once, below: the kernels' emitters write them and the engine's decoder reads them by
# these names. Columns past a kind's last are written as 0.
E_TYPE, E_CMD = 0, 1
E_FIRST = 2  # the first column of an event's own fields
EV_WIDTH = 14
EV_ACCEPTED, EV_REJECTED, EV_CANCELLED, EV_EXPIRED, EV_AMENDED = 1, 2, 3, 4, 5
EV_TRADE, EV_CASH, EV_POSITION, EV_CAPACITY, EV_CLOSED = 6, 7, 8, 9, 10
EV_ASSIGNED, EV_STARTED, EV_SETTLED, EV_LISTED = 11, 12, 13, 14
EV_DISPUTED, EV_RESOLVED, EV_DEPOSITED, EV_WD_REQUESTED, EV_WD_SETTLED = 15, 16, 17, 18, 19
EV_HALTED, EV_RESUMED, EV_INSTR_CANCELLED, EV_SUSPENDED, EV_REINSTATED = 20, 21, 22, 23, 24


class AcceptedColumns(NamedTuple):
    order_id: int
    account: int
    instrument_id: int
    side: int
    price_ticks: int
    lots: int
    flags: int  # order_flags: tif, market, post-only, self-trade mode
    expire_ns: int


class RejectedColumns(NamedTuple):
    account: int
    code: int
    order_id: int
    instrument_id: int  # 0 when the command named no open instrument


class ReducedColumns(NamedTuple):
    """An order cancelled or expired: the two kinds share one row."""

    order_id: int
    account: int
    instrument_id: int
    lots: int  # cancelled or expired
    lots_remaining: int
    reason: int


class AmendedColumns(NamedTuple):
    order_id: int
    account: int
    instrument_id: int
    price_ticks: int
    lots: int
    priority_kept: int


class TradeColumns(NamedTuple):
    trade_id: int
    instrument_id: int
    price_ticks: int
    lots: int
    aggressor_side: int
    maker_order_id: int
    taker_order_id: int
    maker_account: int
    taker_account: int
    maker_fee_micros: int
    taker_fee_micros: int


class CashColumns(NamedTuple):
    account: int
    available_delta: int
    held_delta: int
    escrow_delta: int
    collateral_delta: int
    reason: int
    ref_id: int
    pending_delta: int


class PositionColumns(NamedTuple):
    account: int
    instrument_id: int
    delta_lots: int
    position_lots: int
    reason: int
    ref_id: int  # the trade id, or 0


class CapacityColumns(NamedTuple):
    account: int
    capkey: int  # gpu * regions + region
    start_hour: int
    end_hour: int
    gpus: int


class ClosedColumns(NamedTuple):
    instrument_id: int
    slot: int
    open_interest_lots: int


class AssignedColumns(NamedTuple):
    obligation_id: int
    provider: int
    holder: int
    gpus: int
    start_ns: int
    hours: int
    escrow_micros: int
    instrument_id: int


class StartedColumns(NamedTuple):
    obligation_id: int
    provider: int
    holder: int


class SettledColumns(NamedTuple):
    obligation_id: int
    provider: int
    holder: int
    outcome: int
    hours_delivered: int
    hours_failed: int
    released_micros: int
    refund_micros: int
    penalty_micros: int


class ListedColumns(NamedTuple):
    instrument_id: int
    slot: int


class DisputedColumns(NamedTuple):
    obligation_id: int
    provider: int
    holder: int


class ResolvedColumns(NamedTuple):
    obligation_id: int
    provider: int
    holder: int
    released: int


class DepositedColumns(NamedTuple):
    deposit_id: int  # the ref_id of its CashChanged
    account: int
    amount_micros: int


class WithdrawalColumns(NamedTuple):
    """A withdrawal requested or settled: the two kinds share one row."""

    withdrawal_id: int
    account: int
    amount_micros: int
    approved: int  # settled only


class HaltedColumns(NamedTuple):
    instrument_id: int
    reason: int  # HaltReason
    until_ns: int
    reference_price_ticks: int
    trade_price_ticks: int


class ResumedColumns(NamedTuple):
    instrument_id: int
    reason: int  # the HaltReason of the halt that ended


class InstrumentCancelledColumns(NamedTuple):
    instrument_id: int
    orders: int


class AccountStatusColumns(NamedTuple):
    """An account suspended or reinstated: the two kinds share one row."""

    account: int


_C = TypeVar("_C", bound=NamedTuple)


def _columns(kind: type[_C]) -> _C:
    """Number a kind's columns from E_FIRST in the order its fields are declared."""
    return kind(*range(E_FIRST, E_FIRST + len(kind._fields)))


# The column index of each field, e.g. E_TRADE.price_ticks; Numba freezes them as constants.
E_ACCEPTED = _columns(AcceptedColumns)
E_REJECTED = _columns(RejectedColumns)
E_CANCELLED = E_EXPIRED = _columns(ReducedColumns)
E_AMENDED = _columns(AmendedColumns)
E_TRADE = _columns(TradeColumns)
E_CASH = _columns(CashColumns)
E_POSITION = _columns(PositionColumns)
E_CAPACITY = _columns(CapacityColumns)
E_CLOSED = _columns(ClosedColumns)
E_ASSIGNED = _columns(AssignedColumns)
E_STARTED = _columns(StartedColumns)
E_SETTLED = _columns(SettledColumns)
E_LISTED = _columns(ListedColumns)
E_DISPUTED = _columns(DisputedColumns)
E_RESOLVED = _columns(ResolvedColumns)
E_DEPOSITED = _columns(DepositedColumns)
E_WD_REQUESTED = E_WD_SETTLED = _columns(WithdrawalColumns)
E_HALTED = _columns(HaltedColumns)
E_RESUMED = _columns(ResumedColumns)
E_INSTR_CANCELLED = _columns(InstrumentCancelledColumns)
E_SUSPENDED = E_REINSTATED = _columns(AccountStatusColumns)
EV_COLUMNS: dict[int, tuple[int, ...]] = {
    EV_ACCEPTED: E_ACCEPTED,
    EV_REJECTED: E_REJECTED,
    EV_CANCELLED: E_CANCELLED,
    EV_EXPIRED: E_EXPIRED,
    EV_AMENDED: E_AMENDED,
    EV_TRADE: E_TRADE,
    EV_CASH: E_CASH,
    EV_POSITION: E_POSITION,
    EV_CAPACITY: E_CAPACITY,
    EV_CLOSED: E_CLOSED,
    EV_ASSIGNED: E_ASSIGNED,
    EV_STARTED: E_STARTED,
    EV_SETTLED: E_SETTLED,
    EV_LISTED: E_LISTED,
    EV_DISPUTED: E_DISPUTED,
    EV_RESOLVED: E_RESOLVED,
    EV_DEPOSITED: E_DEPOSITED,
    EV_WD_REQUESTED: E_WD_REQUESTED,
    EV_WD_SETTLED: E_WD_SETTLED,
    EV_HALTED: E_HALTED,
    EV_RESUMED: E_RESUMED,
    EV_INSTR_CANCELLED: E_INSTR_CANCELLED,
    EV_SUSPENDED: E_SUSPENDED,
    EV_REINSTATED: E_REINSTATED,
}

# System accounts (schemas.ids): the external world and the fee income.
ACCT_EXTERNAL, ACCT_FEES = int(ACCOUNT_EXTERNAL), int(ACCOUNT_FEES)
