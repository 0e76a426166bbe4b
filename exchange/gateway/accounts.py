"""The gateway's private-feed projection: each account's orders, fills, balances and positions.

`Accounts.apply(event)` takes every engine event of `gx.events` in log order and returns the
private pushes it causes as `(account, channel, body)`: `channel` is `executions`, `balances` or
`positions`, and `body` is the push encoded once as JSON (exchange/API.md, "Push bodies"; no
`conn_seq`: a connection splices its own in with `wire.with_conn_seq`). The same state answers the
REST account queries, the subscribe snapshots, and the listing and capacity queries (deliveries
are exchange/gateway/deliveries.py's).

Sequencing: a push's `account_seq` is the engine sequence (`seq`) of its event and
`prev_account_seq` that of the previous push of the same (account, channel), 0 for the first.
A trade between two orders of one account (self-trade prevention `none`) gives that account two
executions pushes with the same `account_seq`, the maker's first; the taker's `prev_account_seq`
then equals its own `account_seq`. So a client detects a gap by `prev_account_seq` != the last
`account_seq` it saw, never by `account_seq` alone.

Orders (FIX semantics):
- `qty` is the order's current total: what was placed, then `cum_qty` + the new lots after an
  amend (an amend sets the remaining lots) or after a self-trade decrement (`OrderCancelled` with
  `lots_remaining` > 0: the order keeps resting with fewer lots and its status).
- `cum_qty + leaves_qty = qty` while the order works (`new`, `partially_filled`) and when
  `filled`. A cancelled or expired order has `leaves_qty` "0" and keeps `qty`, so there the sum
  falls short by the lots cancelled.
- A market order reports `type` "market" and its protection price as `price`.
- A rejected placement has `order_id` 0, `status` "rejected", `reject_code` and `reason`, and
  null for what the refusal event does not carry (side, type, tif, price, post_only, stp); it is
  kept among the closed orders, so `order_by_client_id` finds it, when it has a client order id
  (a refused cancel-all carries neither, and is only pushed). A refused amend or cancel of one of
  the account's own orders pushes the order as it stands, unchanged.
- `ts_ns` of an order is the engine time of its last change.
- Executions pushes of `canceled` and `expired` carry the `CancelReason` or `ExpireReason` name
  in `reason` (`reject_code` stays null).

Retention is bounded: per account the last `closed_orders_max` closed orders and the last
`fills_max` fills. Live orders, balances, positions and capacity are bounded by the engine.

Idempotent on the source position: an event whose `seq` is not above the last applied `seq` of
its shard is a redelivery and changes nothing. No I/O, no asyncio, no clock: time is the events'
`ts_event`, and the same events give the same pushes.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from exchange import wire
from schemas import events as e
from schemas.codes import (
    CancelReason,
    ExpireReason,
    OrderType,
    SelfTradePrevention,
    Side,
    TimeInForce,
)

__all__ = [
    "CHANNELS",
    "CLOSED_ORDERS_MAX",
    "FILLS_MAX",
    "PRIVATE_RESUME_MAX",
    "PRICE_STRINGS_MAX",
    "Push",
    "Accounts",
    "AccountsStats",
]

CLOSED_ORDERS_MAX = 1000  # closed orders (filled, canceled, expired, rejected) kept per account
FILLS_MAX = 1000  # fills kept per account for GET /fills
PRIVATE_RESUME_MAX = 200  # pushes kept per account and private channel for resume_from_seq
PRICE_STRINGS_MAX = 1 << 16  # cached price strings; the cache starts over when full

# `deliveries` pushes are made by exchange/gateway/deliveries.py and numbered here (`numbered`),
# so every private channel resumes alike.
CHANNELS = ("executions", "balances", "positions", "deliveries")
_EXECUTIONS, _BALANCES, _POSITIONS, _DELIVERIES = 0, 1, 2, 3

Push = tuple[int, str, bytes]  # (account, channel, encoded body)

_CANCEL_NAMES = {int(code): code.name for code in CancelReason}
_EXPIRE_NAMES = {int(code): code.name for code in ExpireReason}
# Enum members to plain strings by dict lookup: `member.value` costs several times more.
_SIDE = {side: side.value for side in Side}
_OTHER_SIDE = {Side.BUY: Side.SELL.value, Side.SELL: Side.BUY.value}
_TIF = {tif: tif.value for tif in TimeInForce}
_STP = {stp: stp.value for stp in SelfTradePrevention}
_LIVE = ("new", "partially_filled")


def _money(micros: int) -> str:
    """`wire.money_to_str` without Decimal, about twice as fast: it runs several times a trade."""
    if micros == 0:
        return "0.000000"
    if micros < 0:
        return "-" + _money(-micros)
    digits = str(micros).rjust(7, "0")
    return digits[:-6] + "." + digits[-6:]


class AccountsStats(msgspec.Struct, kw_only=True):
    """Counters of the projection."""

    events: int = 0  # events applied (redeliveries not counted)
    pushes: int = 0
    duplicates: int = 0  # redelivered events skipped
    gaps: int = 0  # times a shard's seq jumped (events lost before this projection)
    unknown_orders: int = 0  # order events for an order never accepted in the log seen


class _Order:
    __slots__ = (
        "order_id",
        "client_order_id",
        "symbol",
        "side",
        "type",
        "tif",
        "price_ticks",
        "qty",
        "cum",
        "leaves",
        "status",
        "post_only",
        "stp",
        "expire_ns",
        "ts_ns",
        "reject_code",
        "reason",
    )

    def __init__(self, order_id: int, client_order_id: str, symbol: str, ts_ns: str) -> None:
        self.order_id = order_id
        self.client_order_id = client_order_id
        self.symbol = symbol
        self.side: str | None = None
        self.type: str | None = None
        self.tif: str | None = None
        self.price_ticks = 0  # 0: unknown (a rejected placement)
        self.qty = self.cum = self.leaves = 0
        self.status = "new"
        self.post_only: bool | None = None
        self.stp: str | None = None
        self.expire_ns = "0"
        self.ts_ns = ts_ns
        self.reject_code: int | None = None  # the engine's number, named as it is encoded
        self.reason: str | None = None


class _Account:
    __slots__ = (
        "account",
        "open",
        "closed",
        "by_client",
        "available",
        "held",
        "escrow",
        "collateral",
        "pending",
        "money",
        "balances_ts",
        "positions",
        "fills",
        "last",
        "prev",
        "recent",
        "capacity",
    )

    def __init__(self, account: int, fills_max: int) -> None:
        self.account = account
        self.open: dict[int, _Order] = {}  # order id -> live order, in acceptance order
        # closed orders, oldest first; rejected placements have no id: keyed -1, -2, ...
        self.closed: OrderedDict[int, _Order] = OrderedDict()
        self.by_client: dict[str, _Order] = {}  # live and retained closed orders
        self.available = self.held = self.escrow = self.collateral = self.pending = 0
        self.money = _ZERO_MONEY  # the five balances as strings, redone only where they moved
        self.balances_ts = "0"
        self.positions: dict[str, int] = {}  # symbol -> signed lots, zero left out
        self.fills: deque[dict[str, Any]] = deque(maxlen=fills_max)  # newest first
        self.last = [0] * len(CHANNELS)  # per channel: account_seq of the last push
        self.prev = [0] * len(CHANNELS)  # per channel: prev_account_seq of the last push
        # per channel: the last pushes as (prev_account_seq, body), oldest first, for resume
        self.recent: tuple[deque[tuple[int, bytes]], ...] = tuple(
            deque(maxlen=PRIVATE_RESUME_MAX) for _ in CHANNELS
        )
        # (gpu, region) -> non-overlapping [start_ns, end_ns, gpus] ranges, by start
        self.capacity: dict[tuple[str, str], list[tuple[int, int, int]]] = {}

    def advance(self, channel: int, seq: int) -> int:
        """Record a push of `channel` at `seq`; return the previous push's seq."""
        prev = self.last[channel]
        self.prev[channel] = prev
        self.last[channel] = seq
        return prev

    def keep(self, channel: int, prev: int, body: bytes) -> bytes:
        """Keep a push for resume; return it."""
        # orjson's bytes keep their whole output buffer (about 4 KiB): copy a kept body to size.
        self.recent[channel].append((prev, bytes(memoryview(body))))
        return body

    def after(self, channel: int, from_seq: int) -> list[bytes] | None:
        """The pushes after the one at `from_seq`; None when they are no longer all kept.

        A push follows `from_seq` when its prev_account_seq is at least `from_seq`. The two pushes
        of a self-trade share one account_seq: a client that saw both gets the second again.
        """
        last, recent = self.last[channel], self.recent[channel]
        if from_seq > last:
            return None  # ahead of this gateway: start over from the snapshot
        if not recent:
            return [] if from_seq == last else None
        if recent[0][0] > from_seq:
            return None  # some of what followed `from_seq` is no longer kept
        return [body for prev, body in recent if prev >= from_seq]


_ZERO_MONEY = ("0.000000",) * 5
_NO_ACCOUNT = _Account(0, 0)  # answers queries about accounts never seen, never written


class Accounts:
    """Per-account projection of the engine's events: private pushes and account queries."""

    def __init__(
        self,
        prices: wire.Prices,
        closed_orders_max: int = CLOSED_ORDERS_MAX,
        *,
        fills_max: int = FILLS_MAX,
    ) -> None:
        if closed_orders_max < 0:
            raise ValueError(f"closed_orders_max: expected >= 0, found {closed_orders_max}")
        if fills_max < 0:
            raise ValueError(f"fills_max: expected >= 0, found {fills_max}")
        self.prices = prices
        self.closed_orders_max = closed_orders_max
        self.fills_max = fills_max
        self.stats = AccountsStats()
        self._accounts: dict[int, _Account] = {}
        self._owners: dict[int, int] = {}  # order id -> account, live and retained closed
        self._seqs: dict[int, int] = {}  # shard -> seq of its last applied event
        self._rejections = 0  # rejected placements kept so far (their closed-order keys)
        self._price_strs: dict[int, str] = {}
        self._instruments: dict[str, dict[str, Any]] = {}  # listed symbol -> GET /instruments
        self._handlers: dict[type, Callable[[Any], list[Push]]] = {
            e.OrderAccepted: self._accepted,
            e.TradeExecuted: self._trade,
            e.OrderAmended: self._amended,
            e.OrderCancelled: self._cancelled,
            e.OrderExpired: self._expired,
            e.OrderRejected: self._rejected,
            e.CashChanged: self._cash,
            e.PositionChanged: self._position,
            e.CapacityUpdated: self._capacity,
            e.InstrumentListed: self._listed,
            e.InstrumentClosed: self._closed,
        }

    # ------------------------------------------------------------------ applying events

    def apply(self, event: e.Event) -> list[Push]:
        """Take the next event of a shard; return its pushes as (account, channel, body)."""
        shard, seq = event.shard, event.seq
        last = self._seqs.get(shard, 0)
        if seq <= last:
            self.stats.duplicates += 1
            return []
        if seq != last + 1:
            self.stats.gaps += 1
        self._seqs[shard] = seq
        self.stats.events += 1
        handler = self._handlers.get(type(event))
        if handler is None:
            return []  # CommandRejected, and event types newer than this code: nothing private
        pushes = handler(event)
        self.stats.pushes += len(pushes)
        return pushes

    def event_seq(self, shard: int) -> int:
        """Seq of the last event applied from `shard` (0 before any)."""
        return self._seqs.get(shard, 0)

    # ------------------------------------------------------------------ order queries

    def order(self, account: int, order_id: int) -> dict[str, Any] | None:
        """The account's order by id, live or retained closed; None if unknown or another's."""
        a = self._accounts.get(account, _NO_ACCOUNT)
        o = a.open.get(order_id) or (a.closed.get(order_id) if order_id > 0 else None)
        return None if o is None else self._order_dict(o)

    def order_by_client_id(self, account: int, client_order_id: str) -> dict[str, Any] | None:
        """The account's latest order with this client order id (rejected placements too)."""
        o = self._accounts.get(account, _NO_ACCOUNT).by_client.get(client_order_id)
        return None if o is None else self._order_dict(o)

    def refusal(self, account: int, client_order_id: str) -> tuple[int, str] | None:
        """The engine's code and reason if the account's latest order with this id was refused."""
        o = self._accounts.get(account, _NO_ACCOUNT).by_client.get(client_order_id)
        if o is None or o.reject_code is None:
            return None
        return o.reject_code, o.reason or ""

    def client_order_live(self, account: int, client_order_id: str) -> bool:
        """Whether the account's latest order with this client order id is live (resting)."""
        o = self._accounts.get(account, _NO_ACCOUNT).by_client.get(client_order_id)
        return o is not None and o.status in _LIVE

    def open_orders(self, account: int, symbol: str | None = None) -> list[dict[str, Any]]:
        """The account's live orders, oldest first, of one symbol or all."""
        orders = self._accounts.get(account, _NO_ACCOUNT).open.values()
        return [self._order_dict(o) for o in orders if symbol is None or o.symbol == symbol]

    def closed_orders(self, account: int, symbol: str | None = None) -> list[dict[str, Any]]:
        """The account's retained closed orders, newest first, of one symbol or all."""
        orders = reversed(self._accounts.get(account, _NO_ACCOUNT).closed.values())
        return [self._order_dict(o) for o in orders if symbol is None or o.symbol == symbol]

    def owner(self, order_id: int) -> int | None:
        """The account of a live or retained closed order, or None."""
        return self._owners.get(order_id)

    def fills(self, account: int, symbol: str | None = None, limit: int = 100) -> list[dict]:
        """The account's last `limit` retained fills, newest first, of one symbol or all."""
        out: list[dict] = []
        if limit <= 0:
            return out
        for fill in self._accounts.get(account, _NO_ACCOUNT).fills:
            if symbol is None or fill["symbol"] == symbol:
                out.append(dict(fill))
                if len(out) == limit:
                    break
        return out

    # ------------------------------------------------------------------ money and positions

    def balances(self, account: int) -> dict[str, Any]:
        """`{"account", "available", "held", "escrow", "collateral", "pending"}` as money strings
        (pending: withdrawals asked for, not yet approved or rejected)."""
        available, held, escrow, collateral, pending = self._accounts.get(
            account, _NO_ACCOUNT
        ).money
        return {
            "account": account,
            "available": available,
            "held": held,
            "escrow": escrow,
            "collateral": collateral,
            "pending": pending,
        }

    def positions(self, account: int) -> list[dict[str, Any]]:
        """The account's open positions `{"symbol", "qty"}` (signed lots: short < 0)."""
        held = self._accounts.get(account, _NO_ACCOUNT).positions
        return [{"symbol": symbol, "qty": str(lots)} for symbol, lots in held.items()]

    # ------------------------------------------------------------------ subscribe snapshots

    def last_seq(self, account: int, channel: str) -> int:
        """`account_seq` of the account's last push on `channel` (0 before any)."""
        return self._accounts.get(account, _NO_ACCOUNT).last[_channel_index(channel)]

    def resume(self, account: int, channel: str, from_seq: int) -> list[bytes] | None:
        """The account's pushes on `channel` after `from_seq`; None when not all are kept.

        The projection is rebuilt from gx.events when a gateway starts, so what is kept does not
        depend on how long this gateway has run: the last PRIVATE_RESUME_MAX of each channel.
        """
        return self._accounts.get(account, _NO_ACCOUNT).after(_channel_index(channel), from_seq)

    def numbered(self, account: int, channel: str, seq: int, body: dict[str, Any]) -> Push:
        """Number another projection's push on the account's channel and keep it for resume.

        `body` gets `account_seq` = `seq` (the engine seq of the event that caused it) and
        `prev_account_seq`; a push with no event of its own passes the channel's `last_seq`
        and so shares the account_seq of the push before it (as the two of a self-trade do).
        """
        i = _channel_index(channel)
        a = self._account(account)
        prev = a.advance(i, seq)
        encoded = orjson.dumps(
            {"channel": channel, "account_seq": seq, "prev_account_seq": prev, **body}
        )
        return (account, channel, a.keep(i, prev, encoded))

    def executions_snapshot(self, account: int) -> bytes:
        """The `executions` snapshot body: the live orders as of the last executions push."""
        a = self._accounts.get(account, _NO_ACCOUNT)
        body = {
            "channel": "executions",
            "type": "snapshot",
            "account_seq": a.last[_EXECUTIONS],
            "orders": [self._order_dict(o) for o in a.open.values()],
        }
        return orjson.dumps(body)

    def balances_snapshot(self, account: int) -> bytes:
        """The `balances` snapshot body: the last balances update re-sent as the state."""
        a = self._accounts.get(account, _NO_ACCOUNT)
        body = {
            "channel": "balances",
            "type": "snapshot",
            "account_seq": a.last[_BALANCES],
            "prev_account_seq": a.prev[_BALANCES],
            "available": a.money[0],
            "held": a.money[1],
            "escrow": a.money[2],
            "collateral": a.money[3],
            "pending": a.money[4],
            "ts_ns": a.balances_ts,
        }
        return orjson.dumps(body)

    def positions_snapshot(self, account: int) -> bytes:
        """The `positions` snapshot body: the open positions as of the last positions push."""
        a = self._accounts.get(account, _NO_ACCOUNT)
        body = {
            "channel": "positions",
            "type": "snapshot",
            "account_seq": a.last[_POSITIONS],
            "positions": self.positions(account),
        }
        return orjson.dumps(body)

    # ------------------------------------------------------------------ listing and capacity

    def instruments(self) -> list[dict[str, Any]]:
        """The instruments listed and trading, in listing order, as GET /instruments entries."""
        return [dict(entry) for entry in self._instruments.values()]

    def is_listed(self, symbol: str) -> bool:
        """Whether `symbol` is listed and not yet closed."""
        return symbol in self._instruments

    def capacity(self, account: int) -> list[dict[str, Any]]:
        """A provider's streamed capacity as ranges `{"gpu", "region", "start_ns", "end_ns", "gpus"}`.

        Ranges that ended before the provider's last capacity update of that GPU model and region
        are left out; hours without capacity are not listed.
        """
        out = []
        for (gpu, region), ranges in sorted(
            self._accounts.get(account, _NO_ACCOUNT).capacity.items()
        ):
            for start, end, gpus in ranges:
                out.append(
                    {
                        "gpu": gpu,
                        "region": region,
                        "start_ns": str(start),
                        "end_ns": str(end),
                        "gpus": gpus,
                    }
                )
        return out

    # ------------------------------------------------------------------ helpers

    def _account(self, account: int) -> _Account:
        a = self._accounts.get(account)
        if a is None:
            a = self._accounts[account] = _Account(account, self.fills_max)
        return a

    def _price(self, ticks: int) -> str:
        text = self._price_strs.get(ticks)
        if text is None:
            if len(self._price_strs) >= PRICE_STRINGS_MAX:
                self._price_strs.clear()
            text = self._price_strs[ticks] = self.prices.to_str(ticks)
        return text

    def _order_dict(self, o: _Order) -> dict[str, Any]:
        body = {
            "order_id": o.order_id,
            "client_order_id": o.client_order_id,
            "symbol": o.symbol,
            "side": o.side,
            "type": o.type,
            "tif": o.tif,
            "price": self._price(o.price_ticks) if o.price_ticks else None,
            "qty": str(o.qty),
            "cum_qty": str(o.cum),
            "leaves_qty": str(o.leaves),
            "status": o.status,
            "post_only": o.post_only,
            "stp": o.stp,
            "expire_ns": o.expire_ns,
            "ts_ns": o.ts_ns,
        }
        if o.reject_code is not None:
            body["reject_code"] = wire.reject_name(o.reject_code)
            body["reason"] = o.reason
        return body

    def _execution(
        self,
        a: _Account,
        seq: int,
        exec_type: str,
        o: _Order,
        ts_ns: str,
        trade: tuple[str, str, int, str, str] | None = None,
        reject: tuple[int, str] | None = None,
        reason: str | None = None,
    ) -> Push:
        """Encode one executions update; `trade` is (price, qty, trade id, fee, liquidity)."""
        prev = a.advance(_EXECUTIONS, seq)
        last_price, last_qty, trade_id, fee, liquidity = trade or (None, None, None, None, None)
        reject_code = None
        if reject is not None:
            code, reason = reject
            reject_code = wire.reject_name(code)
        body = {
            "channel": "executions",
            "type": "update",
            "account_seq": seq,
            "prev_account_seq": prev,
            "exec_type": exec_type,
            "order": self._order_dict(o),
            "last_price": last_price,
            "last_qty": last_qty,
            "trade_id": trade_id,
            "fee": fee,
            "liquidity": liquidity,
            "reject_code": reject_code,
            "reason": reason,
            "ts_ns": ts_ns,
        }
        return (a.account, "executions", a.keep(_EXECUTIONS, prev, orjson.dumps(body)))

    def _close(self, a: _Account, key: int, o: _Order) -> None:
        """Move an order to the account's closed ring, dropping the oldest beyond the limit."""
        a.open.pop(key, None)
        a.closed[key] = o
        while len(a.closed) > self.closed_orders_max:
            old_key, old = a.closed.popitem(last=False)
            if old_key > 0:
                self._owners.pop(old_key, None)
            if old.client_order_id and a.by_client.get(old.client_order_id) is old:
                del a.by_client[old.client_order_id]

    def _live(self, a: _Account, order_id: int) -> _Order | None:
        o = a.open.get(order_id)
        if o is None:
            self.stats.unknown_orders += 1
        return o

    # ------------------------------------------------------------------ order events

    def _accepted(self, ev: e.OrderAccepted) -> list[Push]:
        a = self._account(ev.account)
        ts = str(ev.ts_event)
        o = _Order(ev.order_id, ev.client_order_id, ev.symbol, ts)
        o.side = _SIDE[ev.side]
        o.type = "market" if ev.order_type == OrderType.MARKET else "limit"
        o.tif = _TIF[ev.tif]
        o.price_ticks = ev.price_ticks
        o.qty = o.leaves = ev.lots
        o.post_only = ev.post_only
        o.stp = _STP[ev.stp]
        o.expire_ns = str(ev.expire_ns)
        a.open[ev.order_id] = o
        self._owners[ev.order_id] = ev.account
        if ev.client_order_id:
            a.by_client[ev.client_order_id] = o
        return [self._execution(a, ev.seq, "new", o, ts)]

    def _trade(self, ev: e.TradeExecuted) -> list[Push]:
        ts = str(ev.ts_event)
        price = self._price(ev.price_ticks)
        qty = str(ev.lots)
        taker_side = _SIDE[ev.aggressor_side]
        maker_side = _OTHER_SIDE[ev.aggressor_side]
        out = []
        for account, order_id, side, fee_micros, liquidity in (
            (ev.maker_account, ev.maker_order_id, maker_side, ev.maker_fee_micros, "maker"),
            (ev.taker_account, ev.taker_order_id, taker_side, ev.taker_fee_micros, "taker"),
        ):
            a = self._account(account)
            fee = _money(fee_micros)
            a.fills.appendleft(
                {
                    "trade_id": ev.trade_id,
                    "order_id": order_id,
                    "symbol": ev.symbol,
                    "side": side,
                    "price": price,
                    "qty": qty,
                    "fee": fee,
                    "liquidity": liquidity,
                    "ts_ns": ts,
                }
            )
            o = self._live(a, order_id)
            if o is None:
                continue
            o.cum += ev.lots
            o.leaves -= ev.lots
            o.ts_ns = ts
            if o.leaves > 0:
                o.status = "partially_filled"
            else:
                o.leaves = 0
                o.status = "filled"
                self._close(a, order_id, o)
            trade = (price, qty, ev.trade_id, fee, liquidity)
            out.append(self._execution(a, ev.seq, "trade", o, ts, trade=trade))
        return out

    def _amended(self, ev: e.OrderAmended) -> list[Push]:
        a = self._account(ev.account)
        o = self._live(a, ev.order_id)
        if o is None:
            return []
        o.price_ticks = ev.price_ticks
        o.leaves = ev.lots
        o.qty = o.cum + ev.lots
        o.ts_ns = ts = str(ev.ts_event)
        return [self._execution(a, ev.seq, "amended", o, ts)]

    def _cancelled(self, ev: e.OrderCancelled) -> list[Push]:
        a = self._account(ev.account)
        o = self._live(a, ev.order_id)
        if o is None:
            return []
        o.ts_ns = ts = str(ev.ts_event)
        if ev.lots_remaining > 0:
            # Self-trade decrement: the order rests on with fewer lots and its status.
            o.leaves = ev.lots_remaining
            o.qty = o.cum + ev.lots_remaining
        else:
            o.leaves = 0
            o.status = "canceled"
            self._close(a, ev.order_id, o)
        reason = _CANCEL_NAMES.get(ev.reason, str(ev.reason))
        return [self._execution(a, ev.seq, "canceled", o, ts, reason=reason)]

    def _expired(self, ev: e.OrderExpired) -> list[Push]:
        a = self._account(ev.account)
        o = self._live(a, ev.order_id)
        if o is None:
            return []
        o.ts_ns = ts = str(ev.ts_event)
        o.leaves = 0
        o.status = "expired"
        self._close(a, ev.order_id, o)
        reason = _EXPIRE_NAMES.get(ev.reason, str(ev.reason))
        return [self._execution(a, ev.seq, "expired", o, ts, reason=reason)]

    def _rejected(self, ev: e.OrderRejected) -> list[Push]:
        a = self._account(ev.account)
        ts = str(ev.ts_event)
        reject = (ev.code, ev.reason)
        own = (a.open.get(ev.order_id) or a.closed.get(ev.order_id)) if ev.order_id > 0 else None
        if own is not None:
            # A refused amend or cancel changed nothing: show the order as it stands.
            return [self._execution(a, ev.seq, "rejected", own, ts, reject=reject)]
        o = _Order(ev.order_id, ev.client_order_id, ev.symbol, ts)
        o.status = "rejected"
        o.reject_code, o.reason = reject
        if ev.order_id == 0 and ev.client_order_id:
            # A refused placement: kept so the lost-response lookup by client id finds it, unless
            # a working order answers to that id (the refusal must not hide it).
            working = a.by_client.get(ev.client_order_id)
            if working is None or working.status not in _LIVE:
                a.by_client[ev.client_order_id] = o
            self._rejections += 1
            self._close(a, -self._rejections, o)
        return [self._execution(a, ev.seq, "rejected", o, ts, reject=reject)]

    # ------------------------------------------------------------------ money and positions

    def _cash(self, ev: e.CashChanged) -> list[Push]:
        a = self._account(ev.account)
        available, held, escrow, collateral, pending = a.money
        if ev.available_delta:
            a.available += ev.available_delta
            available = _money(a.available)
        if ev.held_delta:
            a.held += ev.held_delta
            held = _money(a.held)
        if ev.escrow_delta:
            a.escrow += ev.escrow_delta
            escrow = _money(a.escrow)
        if ev.collateral_delta:
            a.collateral += ev.collateral_delta
            collateral = _money(a.collateral)
        if ev.pending_delta:
            a.pending += ev.pending_delta
            pending = _money(a.pending)
        a.money = (available, held, escrow, collateral, pending)
        a.balances_ts = ts = str(ev.ts_event)
        prev = a.advance(_BALANCES, ev.seq)
        body = {
            "channel": "balances",
            "type": "update",
            "account_seq": ev.seq,
            "prev_account_seq": prev,
            "available": available,
            "held": held,
            "escrow": escrow,
            "collateral": collateral,
            "pending": pending,
            "ts_ns": ts,
        }
        return [(ev.account, "balances", a.keep(_BALANCES, prev, orjson.dumps(body)))]

    def _position(self, ev: e.PositionChanged) -> list[Push]:
        a = self._account(ev.account)
        if ev.position_lots:
            a.positions[ev.symbol] = ev.position_lots
        else:
            a.positions.pop(ev.symbol, None)
        prev = a.advance(_POSITIONS, ev.seq)
        body = {
            "channel": "positions",
            "type": "update",
            "account_seq": ev.seq,
            "prev_account_seq": prev,
            "symbol": ev.symbol,
            "qty": str(ev.position_lots),
            "delta": str(ev.delta_lots),
            "ts_ns": str(ev.ts_event),
        }
        return [(ev.account, "positions", a.keep(_POSITIONS, prev, orjson.dumps(body)))]

    # ------------------------------------------------------------------ listing and capacity

    def _listed(self, ev: e.InstrumentListed) -> list[Push]:
        self._instruments[ev.symbol] = {
            "symbol": ev.symbol,
            "gpu": ev.gpu,
            "region": ev.region,
            "product": ev.product,
            "start_ns": str(ev.start_ns),
            "hours": ev.hours,
            "gate_close_ns": str(ev.gate_close_ns),
            "status": "trading",
            "lots_max": str(ev.lots_max),
            "price_band_min": self._price(ev.price_band_min_ticks),
            "price_band_max": self._price(ev.price_band_max_ticks),
        }
        return []

    def _closed(self, ev: e.InstrumentClosed) -> list[Push]:
        self._instruments.pop(ev.symbol, None)
        return []

    def _capacity(self, ev: e.CapacityUpdated) -> list[Push]:
        ranges = self._account(ev.account).capacity
        key = (ev.gpu, ev.region)
        updated = _set_range(ranges.get(key, []), ev.start_ns, ev.end_ns, ev.gpus, ev.ts_event)
        if updated:
            ranges[key] = updated
        else:
            ranges.pop(key, None)
        return []


def _channel_index(channel: str) -> int:
    try:
        return CHANNELS.index(channel)
    except ValueError:
        raise ValueError(f"channel: expected one of {CHANNELS}, found {channel!r}") from None


def _set_range(
    ranges: list[tuple[int, int, int]], start: int, end: int, gpus: int, now_ns: int
) -> list[tuple[int, int, int]]:
    """Set `gpus` over [start, end) in sorted non-overlapping ranges; drop ranges over by now."""
    out = []
    for s, t, g in ranges:
        if t <= start or s >= end:
            out.append((s, t, g))
            continue
        if s < start:
            out.append((s, start, g))
        if t > end:
            out.append((end, t, g))
    if gpus > 0 and end > start:
        out.append((start, end, gpus))
    out.sort()
    merged: list[tuple[int, int, int]] = []
    for s, t, g in out:
        if t <= now_ns:
            continue  # the hours are over: nothing can use this capacity any more
        if merged and merged[-1][1] == s and merged[-1][2] == g:
            merged[-1] = (merged[-1][0], t, g)
        else:
            merged.append((s, t, g))
    return merged
