"""The engine facade: commands in, events out, for one shard.

`Engine.apply` validates and encodes a batch of command messages into rows, runs the Numba state
machine over them in one call, and decodes the event rows into event messages. The engine is a
pure function of its input: it reads no clock (time arrives as ClockTick commands), no random
source and no environment, so replaying the same commands yields byte-identical events.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Sequence

import msgspec
import numpy as np

from matching import layout as lay
from matching.calendar import due_listings
from matching.kernels import _apply
from matching.state import (
    EngineConfig,
    State,
    new_state,
    owns,
    restore_state,
    snapshot_bytes,
    state_hash,
)
from schemas import commands as cmd
from schemas import events as evt
from schemas.catalog import Catalog
from schemas.codes import OrderType, Reject, SelfTradePrevention, Side, TimeInForce
from schemas.symbols import InstrumentKey, SymbolError, format_symbol, parse_symbol
from schemas.units import NS_PER_HOUR

__all__ = ["Engine", "EngineConfig"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_TIF = {TimeInForce.GTC: 0, TimeInForce.GTD: 1, TimeInForce.IOC: 2, TimeInForce.FOK: 3}
_TIF_BACK = {v: k for k, v in _TIF.items()}
_STP = {
    SelfTradePrevention.NONE: 0,
    SelfTradePrevention.CANCEL_TAKER: 1,
    SelfTradePrevention.CANCEL_MAKER: 2,
    SelfTradePrevention.CANCEL_BOTH: 3,
    SelfTradePrevention.DECREMENT: 4,
}
_STP_BACK = {v: k for k, v in _STP.items()}
_SIDE = {Side.BUY: lay.BUY, Side.SELL: lay.SELL}
_SIDE_BACK = {lay.BUY: Side.BUY, lay.SELL: Side.SELL}
_ORDER_COMMANDS = (cmd.PlaceOrder, cmd.AmendOrder, cmd.CancelOrder, cmd.CancelAll)
# Account columns in the ledger's bucket order: available, held, escrow, collateral, pending (1..5).
_BUCKET_COLUMNS = [lay.A_AVAIL, lay.A_HELD, lay.A_ESCROW, lay.A_COLLAT, lay.A_PENDING]
DEPOSIT_REFERENCE_CHARS_MAX = 128


def reference_hash(reference: str) -> int:
    """The kernel's key for a deposit's payment reference: 63 bits of BLAKE2b, never 0 (empty).

    Two references share a key with odds of about n**2 / 2**64: negligible at the table's size.
    """
    digest = hashlib.blake2b(reference.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & (2**63 - 1)) or 1


def order_flags(
    tif: TimeInForce, order_type: OrderType, post_only: bool, stp: SelfTradePrevention
) -> int:
    """Pack an order's time in force, type, post-only and self-trade mode into kernel flags."""
    flags = _TIF[tif] | (_STP[stp] << lay.F_STP_SHIFT)
    if order_type == OrderType.MARKET:  # equal, not identical: a plain 'market' counts too
        flags |= lay.F_MARKET
    if post_only:
        flags |= lay.F_POST_ONLY
    return flags


class _Batch:
    """Rows built while encoding one batch: one per command, plus one per listing."""

    def __init__(self, commands: int) -> None:
        rows = commands + 16  # room for a tick's listings before growing
        self.rows = np.zeros((rows, lay.CMD_WIDTH), dtype=np.int64)
        self.count = 0
        self.command = np.zeros(rows, dtype=np.int64)  # row -> index of its command
        self.now = [0] * commands  # engine time as of each command (for ts_event)

    def next_row(self, command_index: int) -> np.ndarray:
        if self.count == len(self.rows):
            self.rows = np.concatenate([self.rows, np.zeros_like(self.rows)])
            self.command = np.concatenate([self.command, np.zeros_like(self.command)])
        self.command[self.count] = command_index
        self.count += 1
        return self.rows[self.count - 1]


class Engine:
    """One shard's matching engine: a single-writer state machine over preallocated arrays."""

    def __init__(
        self, catalog: Catalog, config: EngineConfig | None = None, *, _state: State | None = None
    ) -> None:
        self.catalog = catalog
        self.config = config or EngineConfig()
        self.state: State = _state if _state is not None else new_state(self.config, catalog)
        self._events = np.zeros((4096, lay.EV_WIDTH), dtype=np.int64)
        self._symbols: dict[str, int] = {}  # open instruments: symbol -> slot
        # open slot -> (its key, its symbol, its gate closure time)
        self._open: dict[int, tuple[InstrumentKey, str, int]] = {}
        self._gates: list[tuple[int, int]] = []  # heap of (gate closure time, slot)
        self._listings: dict[int, evt.InstrumentListed] = {}  # instrument id -> its listing
        self._listing_hour = -1
        self._reindex_symbols()

    # ------------------------------------------------------------------ public API

    @property
    def now_ns(self) -> int:
        """Engine time: the latest clock tick applied."""
        return int(self.state[lay.ST_META][0, lay.M_NOW])

    @property
    def event_seq(self) -> int:
        """Sequence number of the last event produced."""
        return int(self.state[lay.ST_META][0, lay.M_EVENT_SEQ])

    def apply(self, commands: Sequence[cmd.Command], offsets: Sequence[int] | None = None) -> list:
        """Apply a batch of commands in order and return the events they caused.

        `offsets` are the commands' input-log positions, copied into each event's `input_offset`.
        """
        batch = self._encode(commands)
        count = self._run(batch.rows[: batch.count])
        return self._decode(commands, offsets, batch, count)

    def apply_rows(self, rows: np.ndarray) -> np.ndarray:
        """Apply pre-encoded command rows (benchmarks); return the event rows (a copy)."""
        count = self._run(rows)
        meta = self.state[lay.ST_META][0]
        meta[lay.M_EVENT_SEQ] += count
        return self._events[:count].copy()

    def _run(self, rows: np.ndarray) -> int:
        """Run the kernel over all rows, growing the event buffer whenever it asks for room."""
        count, first = 0, 0
        while True:
            count, first = _apply(rows, first, self.state, self._events, count)
            if first == len(rows):
                return count
            bigger = np.zeros((2 * len(self._events), lay.EV_WIDTH), dtype=np.int64)
            bigger[:count] = self._events[:count]
            self._events = bigger

    def symbol_slot(self, symbol: str) -> int:
        """Kernel slot of an open instrument (benchmarks and tests), or raise KeyError."""
        return self._symbols[symbol]

    def open_symbols(self) -> list[str]:
        """Symbols open for trading, in slot order."""
        by_slot = {slot: symbol for symbol, slot in self._symbols.items()}
        return [by_slot[slot] for slot in sorted(by_slot)]

    def balances(self) -> dict[tuple[int, int], int]:
        """Return the non-zero balances by (account, bucket), in micros.

        Buckets 1..5 are available, held, escrow, collateral and pending withdrawals, the ledger's
        bucket numbers.
        """
        amounts = self.state[lay.ST_ACCTS][:, _BUCKET_COLUMNS]
        accounts, buckets = np.nonzero(amounts)
        return {
            (int(a), int(b) + 1): int(amounts[a, b]) for a, b in zip(accounts, buckets, strict=True)
        }

    def positions(self) -> dict[tuple[int, str], int]:
        """Return the non-zero positions in lots by (account, symbol)."""
        st = self.state
        pos = st[lay.ST_POS][: int(st[lay.ST_META][0, lay.M_POS_HWM])]
        instrs = st[lay.ST_INSTRS]
        return {
            (int(p[lay.P_ACCOUNT]), self._symbol(int(instrs[p[lay.P_INSTR], lay.I_ID]))): int(
                p[lay.P_LOTS]
            )
            for p in pos
            if p[lay.P_ACCOUNT] != -1 and p[lay.P_LOTS] != 0
        }

    def snapshot(self) -> bytes:
        """Serialise the whole engine state."""
        return snapshot_bytes(self.state, self.config, self.catalog)

    @classmethod
    def restore(cls, data: bytes, catalog: Catalog) -> Engine:
        """Rebuild an engine from `snapshot()` output."""
        st, config = restore_state(data, catalog)
        return cls(catalog, config, _state=st)

    def state_hash(self) -> str:
        """Hash of the whole state (equal states, equal futures)."""
        return state_hash(self.state)

    # ------------------------------------------------------------------ symbols and listing

    def _key_of_slot(self, slot: int) -> InstrumentKey:
        row = self.state[lay.ST_INSTRS][slot]
        return InstrumentKey(
            gpu=self.catalog.gpus[int(row[lay.I_GPU])].model,
            region=self.catalog.regions[int(row[lay.I_REGION])],
            product=self.catalog.products[int(row[lay.I_PRODUCT])].code,
            start_ns=int(row[lay.I_START]),
        )

    def _reindex_symbols(self) -> None:
        instrs = self.state[lay.ST_INSTRS]
        self._symbols.clear()
        self._open.clear()
        self._gates.clear()
        self._listings.clear()
        for slot in np.flatnonzero(instrs[:, lay.I_STATE] != lay.INSTR_FREE):
            key = self._key_of_slot(int(slot))
            listing = self._listing(key, int(instrs[slot, lay.I_ID]))
            self._listings[listing.instrument_id] = listing
            if instrs[slot, lay.I_STATE] == lay.INSTR_OPEN:
                self._symbols[listing.symbol] = int(slot)
                self._open[int(slot)] = (key, listing.symbol, listing.gate_close_ns)
                heapq.heappush(self._gates, (listing.gate_close_ns, int(slot)))
        # Listing always takes the lowest free slot, so slots depend on the arrays alone.
        self._free_slots = [
            int(s) for s in np.flatnonzero(instrs[:, lay.I_STATE] != lay.INSTR_OPEN)
        ]
        heapq.heapify(self._free_slots)
        self._instrument_seq = int(self.state[lay.ST_META][0, lay.M_INSTR_SEQ])

    def _tick(self, batch: _Batch, index: int, now: int) -> None:
        """Mirror the tick's gate closures, then add a listing row for each due instrument.

        The kernel closes every open instrument whose gate has come before it lists anything at
        the same tick, so a slot freed by a closure can be listed again at once, in any batching.
        """
        while self._gates and self._gates[0][0] <= now:
            _, slot = heapq.heappop(self._gates)
            _, symbol, _ = self._open.pop(slot)
            del self._symbols[symbol]
            heapq.heappush(self._free_slots, slot)
        hour = now // NS_PER_HOUR
        if hour == self._listing_hour:
            return  # the due set changes only when an hour boundary passes
        self._listing_hour = hour
        listed = {key for key, _, _ in self._open.values()}
        config = self.config
        due = due_listings(self.catalog, now, listed, config.gpus, config.regions, config.pairs)
        for key in due:
            if not self._free_slots:
                break  # instruments_max reached: the rest are listed once slots free up
            self._list(batch.next_row(index), key)

    def _listing(self, key: InstrumentKey, instrument_id: int) -> evt.InstrumentListed:
        cat = self.catalog
        return evt.InstrumentListed(
            instrument_id=instrument_id,
            symbol=format_symbol(key),
            gpu=key.gpu,
            region=key.region,
            product=key.product,
            start_ns=key.start_ns,
            hours=key.hours,
            gate_close_ns=key.start_ns - cat.gate_closure_lead_ns,
            price_band_min_ticks=cat.price_band_min_ticks,
            price_band_max_ticks=cat.price_band_max_ticks,
            lots_max=cat.lots_max,
        )

    def _list(self, row: np.ndarray, key: InstrumentKey) -> None:
        cat = self.catalog
        slot = heapq.heappop(self._free_slots)
        self._instrument_seq += 1
        instrument_id = self._instrument_seq
        listing = self._listing(key, instrument_id)
        self._listings[instrument_id] = listing
        self._symbols[listing.symbol] = slot
        self._open[slot] = (key, listing.symbol, listing.gate_close_ns)
        heapq.heappush(self._gates, (listing.gate_close_ns, slot))
        row[lay.C0_OP] = lay.OP_LIST
        row[lay.C_LIST_SLOT] = slot
        row[lay.C_LIST_INSTRUMENT_ID] = instrument_id
        row[lay.C_LIST_GPU] = cat.gpu_index(key.gpu)
        row[lay.C_LIST_REGION] = cat.region_index(key.region)
        row[lay.C_LIST_PRODUCT] = cat.product_index(key.product)
        row[lay.C_LIST_START_NS] = key.start_ns
        row[lay.C_LIST_HOURS] = key.hours
        row[lay.C_LIST_GATE_NS] = listing.gate_close_ns
        row[lay.C_LIST_BAND_LO] = cat.price_band_min_ticks
        row[lay.C_LIST_BAND_HI] = cat.price_band_max_ticks
        row[lay.C_LIST_LOTS_MAX] = cat.lots_max

    # ------------------------------------------------------------------ encoding

    def _encode(self, commands: Sequence[cmd.Command]) -> _Batch:
        batch = _Batch(len(commands))
        now = self.now_ns
        for i, command in enumerate(commands):
            row = batch.next_row(i)
            if isinstance(command, cmd.ClockTick) and isinstance(command.ts_ns, int):
                now = max(now, command.ts_ns)
            try:
                if getattr(command, "shard", self.config.shard) != self.config.shard:
                    raise _Refused(Reject.WRONG_SHARD)
                self._encode_one(command, row, now)
            except Exception as error:  # noqa: BLE001
                # Anything the encoder did not foresee is refused as MALFORMED, like what it
                # did: raising would stop the runner, and the same command would stop it again
                # on every replay. The refusal is a function of the command alone.
                code = error.code if isinstance(error, _Refused) else int(Reject.MALFORMED)
                row[:] = 0
                row[lay.C0_OP] = lay.OP_REJECT
                row[lay.C_REJECT_ACCOUNT] = _clamp(getattr(command, "account", 0))
                row[lay.C_REJECT_CODE] = code
            else:
                if isinstance(command, cmd.ClockTick):
                    self._tick(batch, i, now)
            batch.now[i] = now
        return batch

    def _slot(self, symbol: str, now: int) -> int:
        """Kernel slot of a symbol, or a marker the kernel refuses in its own check order.

        Judged at the command's own engine time, so the outcome never depends on batching.
        """
        slot = self._symbols.get(symbol)
        if slot is not None:
            return slot
        try:
            key = parse_symbol(symbol)
        except SymbolError:
            return lay.INSTR_UNKNOWN
        if not owns(self.config, key.gpu, key.region):
            raise _Refused(Reject.WRONG_SHARD)  # another shard's instrument (schemas/shards.py)
        if key.start_ns - self.catalog.gate_closure_lead_ns <= now:
            return lay.INSTR_NOT_TRADING
        return lay.INSTR_UNKNOWN

    def _encode_one(self, c: cmd.Command, row: np.ndarray, now: int) -> None:
        if isinstance(c, cmd.PlaceOrder):
            row[lay.C0_OP] = lay.OP_PLACE
            row[lay.C_PLACE_ACCOUNT] = _int(c.account)
            row[lay.C_PLACE_INSTR] = self._slot(c.symbol, now)
            row[lay.C_PLACE_SIDE] = _SIDE[c.side]
            row[lay.C_PLACE_PRICE] = _int(c.price_ticks)
            row[lay.C_PLACE_LOTS] = _int(c.lots)
            row[lay.C_PLACE_FLAGS] = order_flags(c.tif, c.order_type, c.post_only, c.stp)
            row[lay.C_PLACE_EXPIRE] = _int(c.expire_ns)
        elif isinstance(c, cmd.CancelOrder):
            row[lay.C0_OP] = lay.OP_CANCEL
            row[lay.C_CANCEL_ACCOUNT] = _int(c.account)
            row[lay.C_CANCEL_ORDER] = _int(c.order_id)
        elif isinstance(c, cmd.AmendOrder):
            row[lay.C0_OP] = lay.OP_AMEND
            row[lay.C_AMEND_ACCOUNT] = _int(c.account)
            row[lay.C_AMEND_ORDER] = _int(c.order_id)
            row[lay.C_AMEND_PRICE] = _int(c.price_ticks)
            row[lay.C_AMEND_LOTS] = _int(c.lots)
        elif isinstance(c, cmd.CancelAll):
            row[lay.C0_OP] = lay.OP_CANCEL_ALL
            row[lay.C_CANCEL_ALL_ACCOUNT] = _int(c.account)
            instr = lay.INSTR_ALL if c.symbol is None else self._slot(c.symbol, now)
            row[lay.C_CANCEL_ALL_INSTR] = instr
        elif isinstance(c, cmd.Deposit | cmd.Withdraw | cmd.RequestWithdrawal):
            row[lay.C0_OP] = _TRANSFER_OPS[type(c)]
            row[lay.C_TRANSFER_ACCOUNT] = _int(c.account)
            row[lay.C_TRANSFER_AMOUNT] = _int(c.amount_micros)
            if isinstance(c, cmd.Deposit) and c.ref:
                if not isinstance(c.ref, str) or len(c.ref) > DEPOSIT_REFERENCE_CHARS_MAX:
                    raise _Refused(Reject.MALFORMED)
                row[lay.C_DEPOSIT_REF] = reference_hash(c.ref)
        elif isinstance(c, cmd.SettleWithdrawal):
            row[lay.C0_OP] = lay.OP_WD_SETTLE
            row[lay.C_TRANSFER_ACCOUNT] = _int(c.account)
            row[lay.C_WD_ID] = _int(c.withdrawal_id)
            row[lay.C_WD_APPROVED] = 1 if c.approved is True else 0
        elif isinstance(c, cmd.HaltInstrument | cmd.ResumeInstrument | cmd.CancelInstrumentOrders):
            row[lay.C0_OP] = _CONTROL_OPS_BY_SYMBOL[type(c)]
            row[lay.C_CONTROL_ACCOUNT] = _int(c.account)
            row[lay.C_CONTROL_INSTR] = self._slot(c.symbol, now)
        elif isinstance(c, cmd.SuspendAccount | cmd.ReinstateAccount):
            row[lay.C0_OP] = (
                lay.OP_SUSPEND if isinstance(c, cmd.SuspendAccount) else lay.OP_REINSTATE
            )
            row[lay.C_CONTROL_ACCOUNT] = _int(c.account)
            row[lay.C_CONTROL_TARGET] = _int(c.target_account)
        elif isinstance(c, cmd.CapacityUpdate):
            self._encode_capacity(c, row)
        elif isinstance(c, cmd.ClockTick):
            row[lay.C0_OP] = lay.OP_CLOCK
            row[lay.C_CLOCK_TS_NS] = _int(c.ts_ns)
        elif isinstance(c, cmd.DisputeDelivery | cmd.ResolveDispute):
            row[lay.C0_OP] = (
                lay.OP_DISPUTE if isinstance(c, cmd.DisputeDelivery) else lay.OP_RESOLVE
            )
            row[lay.C_DELIVERY_ACCOUNT] = _int(c.account)
            row[lay.C_DELIVERY_OBLIGATION] = _int(c.obligation_id)
            if isinstance(c, cmd.ResolveDispute):
                row[lay.C_RESOLVE_RELEASE] = 1 if c.release is True else 0
        elif isinstance(c, cmd.DeliveryConfirmed | cmd.DeliveryFailed):
            row[lay.C_DELIVERY_ACCOUNT] = _int(c.account)
            row[lay.C_DELIVERY_OBLIGATION] = _int(c.obligation_id)
            if isinstance(c, cmd.DeliveryConfirmed):
                row[lay.C0_OP] = lay.OP_CONFIRM
            else:
                row[lay.C0_OP] = lay.OP_FAIL
                row[lay.C_FAIL_HOURS_DELIVERED] = _int(c.hours_delivered)
        else:
            raise _Refused(Reject.MALFORMED)

    def _encode_capacity(self, c: cmd.CapacityUpdate, row: np.ndarray) -> None:
        try:
            capkey = self.catalog.gpu_index(c.gpu) * len(self.catalog.regions)
            capkey += self.catalog.region_index(c.region)
        except (KeyError, ValueError):
            raise _Refused(Reject.CAPACITY_RANGE_INVALID) from None
        if not owns(self.config, c.gpu, c.region):
            raise _Refused(Reject.WRONG_SHARD)  # another shard's capacity
        if c.start_ns % NS_PER_HOUR or c.end_ns % NS_PER_HOUR:
            raise _Refused(Reject.CAPACITY_RANGE_INVALID)
        row[lay.C0_OP] = lay.OP_CAPACITY
        row[lay.C_CAPACITY_ACCOUNT] = _int(c.account)
        row[lay.C_CAPACITY_GPUS] = _int(c.gpus)
        row[lay.C_CAPACITY_KEY] = capkey
        row[lay.C_CAPACITY_START_HOUR] = _int(c.start_ns) // NS_PER_HOUR
        row[lay.C_CAPACITY_END_HOUR] = _int(c.end_ns) // NS_PER_HOUR

    # ------------------------------------------------------------------ decoding

    def _decode(
        self,
        commands: Sequence[cmd.Command],
        offsets: Sequence[int] | None,
        batch: _Batch,
        count: int,
    ) -> list:
        meta = self.state[lay.ST_META][0]
        seq = int(meta[lay.M_EVENT_SEQ])
        shard = self.config.shard
        out: list = []
        for r in self._events[:count].tolist():
            ci = int(batch.command[r[lay.E_CMD]])
            seq += 1
            base = {
                "shard": shard,
                "seq": seq,
                "input_offset": -1 if offsets is None else int(offsets[ci]),
                "ts_event": batch.now[ci],
            }
            out.append(self._event(r, commands[ci], base))
        meta[lay.M_EVENT_SEQ] = seq
        return out

    def _symbol(self, instrument_id: int) -> str:
        listing = self._listings.get(instrument_id)
        return listing.symbol if listing is not None else ""

    def _event(self, r: list[int], c: cmd.Command, base: dict[str, int]) -> msgspec.Struct:
        """Decode one event row, reading its columns by the names layout gives its kind."""
        t = r[lay.E_TYPE]
        if t == lay.EV_CASH:
            e = lay.E_CASH
            return evt.CashChanged(
                **base,
                account=r[e.account],
                available_delta=r[e.available_delta],
                held_delta=r[e.held_delta],
                escrow_delta=r[e.escrow_delta],
                collateral_delta=r[e.collateral_delta],
                reason=r[e.reason],
                ref_id=r[e.ref_id],
                pending_delta=r[e.pending_delta],
            )
        if t == lay.EV_POSITION:
            p = lay.E_POSITION
            return evt.PositionChanged(
                **base,
                account=r[p.account],
                symbol=self._symbol(r[p.instrument_id]),
                delta_lots=r[p.delta_lots],
                position_lots=r[p.position_lots],
                reason=r[p.reason],
                ref_id=r[p.ref_id],
            )
        if t == lay.EV_TRADE:
            x = lay.E_TRADE
            return evt.TradeExecuted(
                **base,
                trade_id=r[x.trade_id],
                symbol=self._symbol(r[x.instrument_id]),
                price_ticks=r[x.price_ticks],
                lots=r[x.lots],
                aggressor_side=_SIDE_BACK[r[x.aggressor_side]],
                maker_order_id=r[x.maker_order_id],
                taker_order_id=r[x.taker_order_id],
                maker_account=r[x.maker_account],
                taker_account=r[x.taker_account],
                maker_fee_micros=r[x.maker_fee_micros],
                taker_fee_micros=r[x.taker_fee_micros],
            )
        if t == lay.EV_ACCEPTED:
            a = lay.E_ACCEPTED
            flags = r[a.flags]
            return evt.OrderAccepted(
                **base,
                order_id=r[a.order_id],
                account=r[a.account],
                symbol=self._symbol(r[a.instrument_id]),
                side=_SIDE_BACK[r[a.side]],
                order_type=OrderType.MARKET if flags & lay.F_MARKET else OrderType.LIMIT,
                tif=_TIF_BACK[flags & 3],
                price_ticks=r[a.price_ticks],
                lots=r[a.lots],
                post_only=bool(flags & lay.F_POST_ONLY),
                stp=_STP_BACK[(flags >> lay.F_STP_SHIFT) & 7],
                expire_ns=r[a.expire_ns],
                client_order_id=getattr(c, "client_order_id", ""),
            )
        if t == lay.EV_CANCELLED:
            k = lay.E_CANCELLED
            return evt.OrderCancelled(
                **base,
                order_id=r[k.order_id],
                account=r[k.account],
                symbol=self._symbol(r[k.instrument_id]),
                lots_cancelled=r[k.lots],
                lots_remaining=r[k.lots_remaining],
                reason=r[k.reason],
            )
        if t == lay.EV_EXPIRED:
            k = lay.E_EXPIRED
            return evt.OrderExpired(
                **base,
                order_id=r[k.order_id],
                account=r[k.account],
                symbol=self._symbol(r[k.instrument_id]),
                lots=r[k.lots],
                reason=r[k.reason],
            )
        if t == lay.EV_AMENDED:
            m = lay.E_AMENDED
            return evt.OrderAmended(
                **base,
                order_id=r[m.order_id],
                account=r[m.account],
                symbol=self._symbol(r[m.instrument_id]),
                price_ticks=r[m.price_ticks],
                lots=r[m.lots],
                priority_kept=bool(r[m.priority_kept]),
            )
        if t == lay.EV_REJECTED:
            return self._rejected(r, c, base)
        return self._delivery_event(t, r, c, base)

    def _delivery_event(
        self, t: int, r: list[int], c: cmd.Command, base: dict[str, int]
    ) -> msgspec.Struct:
        """Decode the rows of capacity, listing and delivery: the kinds off the order path."""
        if t == lay.EV_CAPACITY:
            cap = lay.E_CAPACITY
            gpu, region = divmod(r[cap.capkey], len(self.catalog.regions))
            return evt.CapacityUpdated(
                **base,
                account=r[cap.account],
                gpu=self.catalog.gpus[gpu].model,
                region=self.catalog.regions[region],
                start_ns=r[cap.start_hour] * NS_PER_HOUR,
                end_ns=r[cap.end_hour] * NS_PER_HOUR,
                gpus=r[cap.gpus],
            )
        if t == lay.EV_LISTED:
            return msgspec.structs.replace(self._listings[r[lay.E_LISTED.instrument_id]], **base)
        if t == lay.EV_CLOSED:
            iid = r[lay.E_CLOSED.instrument_id]
            return evt.InstrumentClosed(
                **base,
                instrument_id=iid,
                symbol=self._symbol(iid),
                open_interest_lots=r[lay.E_CLOSED.open_interest_lots],
            )
        if t == lay.EV_ASSIGNED:
            g = lay.E_ASSIGNED
            return evt.DeliveryAssigned(
                **base,
                obligation_id=r[g.obligation_id],
                symbol=self._symbol(r[g.instrument_id]),
                provider=r[g.provider],
                holder=r[g.holder],
                gpus=r[g.gpus],
                start_ns=r[g.start_ns],
                end_ns=r[g.start_ns] + r[g.hours] * NS_PER_HOUR,
                escrow_micros=r[g.escrow_micros],
            )
        if t == lay.EV_STARTED:
            d = lay.E_STARTED
            return evt.DeliveryStarted(
                **base, obligation_id=r[d.obligation_id], provider=r[d.provider], holder=r[d.holder]
            )
        if t == lay.EV_SETTLED:
            s = lay.E_SETTLED
            return evt.DeliverySettled(
                **base,
                obligation_id=r[s.obligation_id],
                provider=r[s.provider],
                holder=r[s.holder],
                outcome=r[s.outcome],
                hours_delivered=r[s.hours_delivered],
                hours_failed=r[s.hours_failed],
                released_micros=r[s.released_micros],
                refund_micros=r[s.refund_micros],
                penalty_micros=r[s.penalty_micros],
            )
        return self._money_event(t, r, c, base)

    def _money_event(
        self, t: int, r: list[int], c: cmd.Command, base: dict[str, int]
    ) -> msgspec.Struct:
        """Decode the rows of disputes, deposits and withdrawals."""
        if t == lay.EV_DISPUTED:
            d = lay.E_DISPUTED
            return evt.DeliveryDisputed(
                **base, obligation_id=r[d.obligation_id], provider=r[d.provider], holder=r[d.holder]
            )
        if t == lay.EV_RESOLVED:
            v = lay.E_RESOLVED
            return evt.DisputeResolved(
                **base,
                obligation_id=r[v.obligation_id],
                provider=r[v.provider],
                holder=r[v.holder],
                released=bool(r[v.released]),
            )
        if t == lay.EV_DEPOSITED:
            p = lay.E_DEPOSITED
            return evt.DepositCredited(
                **base,
                deposit_id=r[p.deposit_id],
                account=r[p.account],
                amount_micros=r[p.amount_micros],
                reference=getattr(c, "ref", ""),
            )
        if t == lay.EV_WD_REQUESTED:
            w = lay.E_WD_REQUESTED
            return evt.WithdrawalRequested(
                **base,
                withdrawal_id=r[w.withdrawal_id],
                account=r[w.account],
                amount_micros=r[w.amount_micros],
                destination=getattr(c, "destination", ""),
            )
        if t == lay.EV_WD_SETTLED:
            w = lay.E_WD_SETTLED
            return evt.WithdrawalSettled(
                **base,
                withdrawal_id=r[w.withdrawal_id],
                account=r[w.account],
                amount_micros=r[w.amount_micros],
                approved=bool(r[w.approved]),
            )
        return self._control_event(t, r, base)

    def _control_event(self, t: int, r: list[int], base: dict[str, int]) -> msgspec.Struct:
        """Decode the rows of market controls: halts, resumptions, suspensions."""
        if t == lay.EV_HALTED:
            h = lay.E_HALTED
            return evt.InstrumentHalted(
                **base,
                instrument_id=r[h.instrument_id],
                symbol=self._symbol(r[h.instrument_id]),
                reason=r[h.reason],
                until_ns=r[h.until_ns],
                reference_price_ticks=r[h.reference_price_ticks],
                trade_price_ticks=r[h.trade_price_ticks],
            )
        if t == lay.EV_RESUMED:
            u = lay.E_RESUMED
            return evt.InstrumentResumed(
                **base,
                instrument_id=r[u.instrument_id],
                symbol=self._symbol(r[u.instrument_id]),
                reason=r[u.reason],
            )
        if t == lay.EV_INSTR_CANCELLED:
            k = lay.E_INSTR_CANCELLED
            return evt.InstrumentOrdersCancelled(
                **base,
                instrument_id=r[k.instrument_id],
                symbol=self._symbol(r[k.instrument_id]),
                orders=r[k.orders],
            )
        if t == lay.EV_SUSPENDED:
            return evt.AccountSuspended(**base, account=r[lay.E_SUSPENDED.account])
        if t == lay.EV_REINSTATED:
            return evt.AccountReinstated(**base, account=r[lay.E_REINSTATED.account])
        raise AssertionError(f"event row type {t} has no decoder")

    def _rejected(self, r: list[int], c: cmd.Command, base: dict[str, int]) -> msgspec.Struct:
        j = lay.E_REJECTED
        code = r[j.code]
        reason = Reject(code).name
        if isinstance(c, _ORDER_COMMANDS):
            symbol = getattr(c, "symbol", None) or self._symbol(r[j.instrument_id])
            return evt.OrderRejected(
                **base,
                account=r[j.account],
                code=code,
                reason=reason,
                symbol=symbol,
                order_id=r[j.order_id],
                client_order_id=getattr(c, "client_order_id", ""),
            )
        return evt.CommandRejected(
            **base, command=type(c).__name__, code=code, reason=reason, account=r[j.account]
        )


_TRANSFER_OPS = {
    cmd.Deposit: lay.OP_DEPOSIT,
    cmd.Withdraw: lay.OP_WITHDRAW,
    cmd.RequestWithdrawal: lay.OP_WD_REQUEST,
}


# Operator commands that name an instrument, by their kernel op.
_CONTROL_OPS_BY_SYMBOL = {
    cmd.HaltInstrument: lay.OP_HALT,
    cmd.ResumeInstrument: lay.OP_RESUME,
    cmd.CancelInstrumentOrders: lay.OP_CANCEL_INSTR,
}


class _Refused(Exception):
    def __init__(self, code: Reject) -> None:
        self.code = int(code)


def _int(value: int) -> int:
    """A command integer that fits the kernel's int64 rows, or a MALFORMED refusal."""
    if not isinstance(value, int) or not _INT64_MIN < value < _INT64_MAX:
        raise _Refused(Reject.MALFORMED)
    return value


def _clamp(value: object) -> int:
    return value if isinstance(value, int) and _INT64_MIN < value < _INT64_MAX else 0
