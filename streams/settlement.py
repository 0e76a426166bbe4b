"""Settlement writer (`gx settle`): gx.events into the PostgreSQL ledger, idempotently.

One loop, one database connection, every partition of the events topic assigned by hand:

    getmany -> decode (msgspec) -> plan (dedupe, command boundaries) -> rows -> one transaction:
    COPY postings and trades straight into the ledger (under a savepoint), COPY the rest into
    temporary staging tables and INSERT ... SELECT ... ON CONFLICT into the ledger, upsert the
    consumer position -> commit.

Exactly once in effect, at-least-once underneath:

- The position to resume from is `consumer_positions.next_offset`, written in the same
  transaction as the rows it covers (Kafka group offsets are never used). A crash between two
  commits re-reads records whose effects were not committed, and nothing else.
- Duplicates are recognised twice over: the last settled event sequence per shard
  (`shard_positions`, same transaction) drops events already settled, even when the same event
  was produced again at a new offset; and every insert conflicts on its natural key, while the
  orders, positions and deliveries upserts only move forward (guarded by `seq`). Postings and
  trades, append-only and most of the rows, are copied into their tables directly: the sequence
  check makes a conflict impossible in a ledger only this writer fills, and should one happen
  anyway (a second writer under another consumer name), the savepoint rolls the copy back and
  the rows take the staged ON CONFLICT DO NOTHING path instead.
- Records are batches of whole commands (schemas/codec.py); a commit ends at a record that
  completes its last command (no `gx-partial` header), and the stored position is always a
  record boundary (a command split over records waits for its last record), which is where the
  audit compares the ledger with its replay. Single-event records (the first format) follow the
  rule below.
- A command's events (same shard and input offset) are settled in one transaction. Its
  CashChanged deltas sum to zero, so the sum of all postings is zero after every commit: a
  batch ends at the last complete command and holds back the trailing one, which is settled
  with the next batch, or at once when the partition is read to its end and its deltas balance.
- A record that cannot be settled (undecodable, unknown type, out-of-range integer, a sequence
  gap, a command whose cash does not balance) is logged with its partition and offset, counted,
  written to `dead_letters` in the same transaction, and skipped. After a sequence gap the
  shard's later events are dead-lettered too: the ledger stays an exact prefix of the log
  rather than silently missing money.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import asyncpg
import msgspec
from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas import events as ev
from schemas.codec import DecodeError, encode
from streams.consumers import log_consumer, read_batch
from streams.event_records import (
    decode_event_record,
    is_event_batch,
    is_partial,
    split_event_record,
)
from streams.ledger import schema as ls
from streams.settings import Settings
from streams.topics import topics

__all__ = [
    "SettlementWriter",
    "SettlementCounters",
    "Malformed",
    "Plan",
    "decode_record",
    "plan_commit",
    "CONSUMER_DEFAULT",
    "prepare_connection",
]

log = logging.getLogger("gx.settle")

CONSUMER_DEFAULT = "settlement"
poll_timeout_ms = 200
topic_wait_s = 1.0
reconnect_attempts_max = 10
reconnect_backoff_s_max = 5.0
dead_letter_payload_bytes_max = 1 << 16
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT16_MIN, _INT16_MAX = -(2**15), 2**15 - 1
# Integer fields stored as smallint, by event type.
_SMALLINT_FIELDS: dict[type, tuple[str, ...]] = {
    ev.CashChanged: ("reason",),
    ev.DeliverySettled: ("outcome",),
}
# Events whose fields become ledger rows (the others only advance the shard's sequence).
_STORED_EVENTS = frozenset(
    (
        ev.CashChanged, ev.TradeExecuted, ev.PositionChanged, ev.OrderAccepted,
        ev.OrderCancelled, ev.OrderExpired, ev.OrderAmended, ev.DeliveryAssigned,
        ev.DeliveryStarted, ev.DeliverySettled,
    )
)  # fmt: skip
_RETRIABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError)


class SettlementCounters(msgspec.Struct):
    """What the writer has done since it started (committed work only, except `records_read`)."""

    records_read: int = 0
    events_read: int = 0  # events in those records (a record holds one or a batch)
    events_settled: int = 0
    postings: int = 0
    trades: int = 0
    duplicates: int = 0  # events already settled (redelivery or produced twice)
    malformed: int = 0  # undecodable or out-of-range records
    seq_gaps: int = 0  # events after a missing sequence number
    unbalanced_commands: int = 0  # commands whose cash deltas do not sum to zero
    transactions: int = 0
    reconnects: int = 0
    copy_conflicts: int = 0  # direct copies that met existing rows and went through ON CONFLICT


class Malformed(msgspec.Struct, frozen=True):
    """A record that is not a settleable event: why, and its bytes (kept as a dead letter)."""

    reason: str
    payload: bytes | None


Entry = tuple[int, Any]  # (Kafka offset, event or Malformed)


# ============================================================================ decoding


def decode_record(value: bytes | None) -> list[Any]:
    """Decode one gx.events record into its events, each an event or a Malformed saying what
    is wrong with it (a record that does not decode at all is one Malformed). A bad event of a
    batch record keeps its own bytes; a record that cannot be split keeps the record's."""
    if value is None:
        return [Malformed("record has no value", None)]
    out: list[Any] = []
    bad = False
    for event in decode_event_record(value):
        if isinstance(event, DecodeError):
            out.append(Malformed(f"undecodable event: {event}", None))
            bad = True
            continue
        problem = _out_of_range(event)
        if problem is None:
            out.append(event)
        else:
            out.append(Malformed(problem, None))
            bad = True
    if bad:
        parts = _split_or_none(value)
        if parts is None or len(parts) != len(out):
            parts = [value] * len(out)
        out = [
            Malformed(x.reason, part[:dead_letter_payload_bytes_max]) if type(x) is Malformed else x
            for x, part in zip(out, parts, strict=True)
        ]
    return out


def _split_or_none(value: bytes) -> list[bytes] | None:
    try:
        return split_event_record(value)
    except DecodeError:
        return None


def _out_of_range(event: Any) -> str | None:
    """Name the first field the ledger's columns cannot hold, or return None."""
    if not (0 < event.seq <= _INT64_MAX and 0 <= event.shard <= _INT64_MAX):
        name = type(event).__name__
        return (
            f"{name}: expected 1 <= seq and 0 <= shard (64-bit), found {event.seq}, {event.shard}"
        )
    checks = _FIELD_CHECKS.get(type(event))
    if checks is None:
        return None  # only its shard and seq reach the database
    ints, texts, smallints = checks
    values = ints(event)
    if max(values) > _INT64_MAX or min(values) < _INT64_MIN:
        return _first_bad_field(event)
    if texts is not None and "\x00" in "".join(texts(event)):
        return _first_bad_field(event)
    for value in smallints(event) if smallints is not None else ():
        if not _INT16_MIN <= value <= _INT16_MAX:
            return _first_bad_field(event)
    return None


def _first_bad_field(event: Any) -> str:
    """The slow path of `_out_of_range`: find and describe the offending field."""
    name = type(event).__name__
    for field, value in zip(event.__struct_fields__, msgspec.structs.astuple(event), strict=True):
        if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:
            return f"{name}.{field}: expected a 64-bit integer, found {value}"
        if isinstance(value, str) and "\x00" in value:
            return f"{name}.{field}: expected text without NUL characters"
    for field in _SMALLINT_FIELDS.get(type(event), ()):
        value = getattr(event, field)
        if not _INT16_MIN <= value <= _INT16_MAX:
            return f"{name}.{field}: expected a 16-bit code, found {value}"
    raise AssertionError(f"{name}: no field out of range")  # the fast path said there was one


Getter = Callable[[Any], tuple[Any, ...]]


def _getter(names: Sequence[str]) -> Getter | None:
    """`attrgetter` that always returns a tuple (None for no names)."""
    if not names:
        return None
    if len(names) == 1:
        name = names[0]
        return lambda obj: (getattr(obj, name),)
    return operator.attrgetter(*names)


def _field_checks(kind: type) -> tuple[Getter, Getter | None, Getter | None]:
    """Per stored event type: getters of its integer, text and smallint fields."""
    ints, texts = ["seq"], []
    for field in msgspec.structs.fields(kind):
        if field.type is str:
            texts.append(field.name)
        elif isinstance(field.type, type) and issubclass(field.type, int):
            ints.append(field.name)
    smallints = _getter(_SMALLINT_FIELDS.get(kind, ()))
    all_ints = _getter(ints)
    assert all_ints is not None
    return all_ints, _getter(texts), smallints


# Precomputed so that the check costs a few C calls per event, not a loop over its fields.
_FIELD_CHECKS: dict[type, tuple[Getter, Getter | None, Getter | None]] = {
    kind: _field_checks(kind) for kind in _STORED_EVENTS
}


# ============================================================================ planning


class Plan(msgspec.Struct):
    """What one partition's pending records contribute to the next transaction."""

    count: int = 0  # pending entries covered (settled or skipped) by this commit
    events: list[tuple[int, Any]] = msgspec.field(default_factory=list)  # (offset, event)
    # (offset, index in its record, why, bytes) of each event skipped as a dead letter
    dead: list[tuple[int, int, str, bytes | None]] = msgspec.field(default_factory=list)
    duplicates: int = 0
    malformed: int = 0
    seq_gaps: int = 0
    unbalanced: int = 0
    last_seq: dict[int, int] = msgspec.field(default_factory=dict)  # shard -> seq after commit


_DUPLICATE, _MALFORMED, _GAP = 0, 1, 2


def plan_commit(pending: Sequence[Entry], last_seq: Mapping[int, int], caught_up: bool) -> Plan:
    """Choose the longest prefix of `pending` that ends at a command boundary; classify it.

    `last_seq` is the last settled sequence per shard. The trailing command is held back unless
    the partition is read to its end (`caught_up`) and its cash deltas balance.
    """
    plan = Plan(last_seq=dict(last_seq))
    seqs = dict(last_seq)
    # i, kind, offset, index in record, why, bytes
    skipped: list[tuple[int, int, int, int, str, bytes | None]] = []
    group: list[tuple[int, Any]] = []
    indexes: list[int] = []  # the group's events' places in their records
    key: tuple[int, int] | None = None
    start = cash = 0
    record_start, record_offset = 0, -1  # pending starts at a record boundary
    for i, (offset, item) in enumerate(pending):
        if offset != record_offset:
            record_start, record_offset = i, offset
        if type(item) is Malformed:
            skipped.append((i, _MALFORMED, offset, i - record_start, item.reason, item.payload))
            continue
        last = seqs.get(item.shard, 0)
        if item.seq <= last:
            skipped.append((i, _DUPLICATE, offset, 0, "", None))
            continue
        if item.seq != last + 1:
            why = f"sequence gap: shard {item.shard} expected seq {last + 1}, found {item.seq}"
            skipped.append((i, _GAP, offset, i - record_start, why, encode(item)))
            continue
        seqs[item.shard] = item.seq
        if (item.shard, item.input_offset) != key:
            if group:
                _close_group(plan, group, indexes, cash)
            group, indexes, key, start, cash = [], [], (item.shard, item.input_offset), i, 0
        group.append((offset, item))
        indexes.append(i - record_start)
        if type(item) is ev.CashChanged:
            cash += _cash_sum(item)
    if group and caught_up and cash == 0:
        _close_group(plan, group, indexes, cash)
        plan.count = len(pending)
    else:
        plan.count = start if group else len(pending)
    for i, kind, offset, index, why, payload in skipped:
        if i >= plan.count:
            break
        if kind == _DUPLICATE:
            plan.duplicates += 1
            continue
        plan.dead.append((offset, index, why, payload))
        plan.malformed += kind == _MALFORMED
        plan.seq_gaps += kind == _GAP
    plan.dead.sort(key=lambda dead: (dead[0], dead[1]))
    return plan


def _cash_sum(event: ev.CashChanged) -> int:
    return event.available_delta + event.held_delta + event.escrow_delta + event.collateral_delta


def _close_group(plan: Plan, group: list[tuple[int, Any]], indexes: list[int], cash: int) -> None:
    """Settle one complete command; dead-letter its cash events if they do not balance.

    `indexes` are the events' places in their records (named in their dead letters).
    """
    last = group[-1][1]
    plan.last_seq[last.shard] = last.seq
    if cash == 0:
        plan.events.extend(group)
        return
    plan.unbalanced += 1
    why = f"unbalanced command: shard {last.shard} input offset {last.input_offset} cash sums to {cash}"
    for (offset, event), index in zip(group, indexes, strict=True):
        if type(event) is ev.CashChanged:
            plan.dead.append((offset, index, why, encode(event)))
        else:
            plan.events.append((offset, event))


# ============================================================================ rows


class _Order:
    """One order's events within a batch, folded: absolute if accepted here, else a delta."""

    __slots__ = (
        "base", "price_ticks", "lots_open", "absolute", "filled", "terminal",
        "seq_min", "seq", "ts_event",
    )  # fmt: skip

    def __init__(self, seq: int) -> None:
        self.base: tuple[Any, ...] | None = None  # set by OrderAccepted
        self.price_ticks: int | None = None
        self.lots_open = 0
        self.absolute = False
        self.filled = 0
        self.terminal = 0
        self.seq_min = seq
        self.seq = seq
        self.ts_event = 0

    def status(self) -> int:
        if self.lots_open > 0:
            return ls.ORDER_OPEN
        return self.terminal or ls.ORDER_FILLED


class _Delivery:
    """One obligation's events within a batch, folded."""

    __slots__ = ("base", "state", "settled", "seq", "ts_event")

    def __init__(self) -> None:
        self.base: tuple[Any, ...] | None = None  # set by DeliveryAssigned
        self.state = 0
        self.settled: tuple[int, ...] | None = None  # set by DeliverySettled
        self.seq = 0
        self.ts_event = 0


_STAGES = (
    # (staging table, ledger table or None: its DDL follows)
    ("stage_postings", "LIKE postings"),
    ("stage_trades", "LIKE trades"),
    ("stage_orders", "LIKE orders"),
    ("stage_positions", "LIKE positions"),
    ("stage_deliveries", "LIKE deliveries"),
    (
        "stage_order_updates",
        "shard bigint, order_id bigint, price_ticks bigint, lots_open bigint, "
        "lots_open_absolute boolean, lots_filled_delta bigint, status_terminal smallint, "
        "seq_min bigint, seq bigint, ts_event bigint",
    ),
    (
        "stage_delivery_updates",
        "shard bigint, obligation_id bigint, state smallint, outcome smallint, "
        "hours_delivered bigint, hours_failed bigint, released_micros bigint, "
        "refund_micros bigint, penalty_micros bigint, seq bigint, ts_event bigint",
    ),
)

_ORDER_COLUMNS = (
    "account", "symbol", "side", "order_type", "tif", "price_ticks", "lots", "lots_open",
    "lots_filled", "status", "client_order_id", "expire_ns", "seq_accepted", "ts_accepted", "seq",
    "ts_event",
)  # fmt: skip
_DELIVERY_COLUMNS = (
    "symbol", "provider", "holder", "gpus", "start_ns", "end_ns", "escrow_micros", "state",
    "outcome", "hours_delivered", "hours_failed", "released_micros", "refund_micros",
    "penalty_micros", "seq", "ts_event",
)  # fmt: skip


def _set_all(table: str, columns: Iterable[str]) -> str:
    return ", ".join(f"{c} = excluded.{c}" for c in columns) + f" WHERE {table}.seq < excluded.seq"


# An order's resting lots after a batch that did not accept it (SET sees the old row as `o`).
_NEW_OPEN = "(CASE WHEN s.lots_open_absolute THEN s.lots_open ELSE o.lots_open + s.lots_open END)"
# Staging table -> the statement that moves its rows into the ledger.
_APPLY = {
    "stage_postings": "INSERT INTO postings SELECT * FROM stage_postings ON CONFLICT DO NOTHING",
    "stage_trades": "INSERT INTO trades SELECT * FROM stage_trades ON CONFLICT DO NOTHING",
    "stage_orders": "INSERT INTO orders SELECT * FROM stage_orders "
    f"ON CONFLICT (shard, order_id) DO UPDATE SET {_set_all('orders', _ORDER_COLUMNS)}",
    "stage_positions": "INSERT INTO positions SELECT * FROM stage_positions "
    "ON CONFLICT (account, symbol) DO UPDATE SET "
    f"{_set_all('positions', ('shard', 'lots', 'seq', 'ts_event'))}",
    "stage_deliveries": "INSERT INTO deliveries SELECT * FROM stage_deliveries "
    f"ON CONFLICT (shard, obligation_id) DO UPDATE SET "
    f"{_set_all('deliveries', _DELIVERY_COLUMNS)}",
    # Deltas apply only if none of the batch's events for the order was applied before.
    "stage_order_updates": f"""
        UPDATE orders AS o SET
            price_ticks = coalesce(s.price_ticks, o.price_ticks),
            lots_open = {_NEW_OPEN},
            lots_filled = o.lots_filled + s.lots_filled_delta,
            status = CASE WHEN {_NEW_OPEN} > 0 THEN {ls.ORDER_OPEN}
                          WHEN s.status_terminal <> 0 THEN s.status_terminal
                          WHEN s.lots_filled_delta > 0 THEN {ls.ORDER_FILLED}
                          ELSE o.status END,
            seq = s.seq,
            ts_event = s.ts_event
        FROM stage_order_updates AS s
        WHERE o.shard = s.shard AND o.order_id = s.order_id AND o.seq < s.seq_min
    """,
    "stage_delivery_updates": """
        UPDATE deliveries AS d SET
            state = s.state,
            outcome = coalesce(s.outcome, d.outcome),
            hours_delivered = coalesce(s.hours_delivered, d.hours_delivered),
            hours_failed = coalesce(s.hours_failed, d.hours_failed),
            released_micros = coalesce(s.released_micros, d.released_micros),
            refund_micros = coalesce(s.refund_micros, d.refund_micros),
            penalty_micros = coalesce(s.penalty_micros, d.penalty_micros),
            seq = s.seq,
            ts_event = s.ts_event
        FROM stage_delivery_updates AS s
        WHERE d.shard = s.shard AND d.obligation_id = s.obligation_id AND d.seq < s.seq
    """,
}


class _Rows:
    """The rows one transaction stages, built event by event (plain tuples, COPY order)."""

    def __init__(self) -> None:
        self.postings: list[tuple[int, ...]] = []
        self.trades: list[tuple[Any, ...]] = []
        self.orders: dict[tuple[int, int], _Order] = {}
        self.positions: dict[tuple[int, str], tuple[Any, ...]] = {}
        self.deliveries: dict[tuple[int, int], _Delivery] = {}

    def add(self, partition: int, offset: int, event: Any) -> None:
        kind = type(event)
        if kind is ev.CashChanged:
            self._cash(partition, offset, event)
        elif kind is ev.TradeExecuted:
            self._trade(partition, offset, event)
        elif kind is ev.PositionChanged:
            self.positions[(event.account, event.symbol)] = (
                event.account, event.symbol, event.shard, event.position_lots, event.seq,
                event.ts_event,
            )  # fmt: skip
        elif kind in _ORDER_EVENTS:
            self._order_event(event)
        elif kind in _DELIVERY_EVENTS:
            self._delivery_event(event)

    def _cash(self, partition: int, offset: int, e: ev.CashChanged) -> None:
        deltas = (e.available_delta, e.held_delta, e.escrow_delta, e.collateral_delta)
        for index, amount in enumerate(deltas):
            if amount:
                self.postings.append(
                    (partition, offset, index, e.shard, e.seq, e.input_offset, e.account,
                     index + 1, amount, e.reason, e.ref_id, e.ts_event)
                )  # fmt: skip

    def _trade(self, partition: int, offset: int, e: ev.TradeExecuted) -> None:
        self.trades.append(
            (e.shard, e.trade_id, partition, offset, e.seq, e.input_offset, e.ts_event, e.symbol,
             e.price_ticks, e.lots, e.aggressor_side.value, e.maker_order_id, e.taker_order_id,
             e.maker_account, e.taker_account, e.maker_fee_micros, e.taker_fee_micros)
        )  # fmt: skip
        for order_id in (e.maker_order_id, e.taker_order_id):
            order = self._order(e, order_id)
            order.filled += e.lots
            order.lots_open -= e.lots

    def _order(self, e: Any, order_id: int) -> _Order:
        order = self.orders.get((e.shard, order_id))
        if order is None:
            order = self.orders[(e.shard, order_id)] = _Order(e.seq)
        order.seq, order.ts_event = e.seq, e.ts_event
        return order

    def _order_event(self, e: Any) -> None:
        order = self._order(e, e.order_id)
        if type(e) is ev.OrderAccepted:
            order.base = (
                e.account, e.symbol, e.side.value, e.order_type.value, e.tif.value, e.lots,
                e.client_order_id, e.expire_ns, e.seq, e.ts_event,
            )  # fmt: skip
            order.price_ticks, order.lots_open, order.absolute = e.price_ticks, e.lots, True
        elif type(e) is ev.OrderCancelled:
            order.lots_open, order.absolute = e.lots_remaining, True
            if e.lots_remaining == 0:
                order.terminal = ls.ORDER_CANCELLED
        elif type(e) is ev.OrderExpired:
            order.lots_open, order.absolute, order.terminal = 0, True, ls.ORDER_EXPIRED
        else:  # OrderAmended: new price and resting lots
            order.price_ticks, order.lots_open, order.absolute = e.price_ticks, e.lots, True

    def _delivery_event(self, e: Any) -> None:
        delivery = self.deliveries.setdefault((e.shard, e.obligation_id), _Delivery())
        delivery.seq, delivery.ts_event = e.seq, e.ts_event
        if type(e) is ev.DeliveryAssigned:
            delivery.base = (
                e.symbol,
                e.provider,
                e.holder,
                e.gpus,
                e.start_ns,
                e.end_ns,
                e.escrow_micros,
            )
            delivery.state = ls.DELIVERY_ASSIGNED
        elif type(e) is ev.DeliveryStarted:
            delivery.state = ls.DELIVERY_STARTED
        else:
            delivery.state = ls.DELIVERY_SETTLED
            delivery.settled = (
                e.outcome, e.hours_delivered, e.hours_failed, e.released_micros,
                e.refund_micros, e.penalty_micros,
            )  # fmt: skip

    def staged(self) -> dict[str, list[tuple[Any, ...]]]:
        """Rows per staging table (empty tables left out)."""
        out: dict[str, list[tuple[Any, ...]]] = {
            "stage_postings": self.postings,
            "stage_trades": self.trades,
            "stage_positions": list(self.positions.values()),
            "stage_orders": [],
            "stage_order_updates": [],
            "stage_deliveries": [],
            "stage_delivery_updates": [],
        }
        for (shard, order_id), o in self.orders.items():
            if o.base is not None:
                a, sym, side, otype, tif, lots, coid, expire, seq_acc, ts_acc = o.base
                out["stage_orders"].append(
                    (shard, order_id, a, sym, side, otype, tif, o.price_ticks, lots, o.lots_open,
                     o.filled, o.status(), coid, expire, seq_acc, ts_acc, o.seq, o.ts_event)
                )  # fmt: skip
            else:
                out["stage_order_updates"].append(
                    (shard, order_id, o.price_ticks, o.lots_open, o.absolute, o.filled,
                     o.terminal, o.seq_min, o.seq, o.ts_event)
                )  # fmt: skip
        for (shard, obligation_id), d in self.deliveries.items():
            if d.base is not None:
                settled = d.settled or (0, 0, 0, 0, 0, 0)
                out["stage_deliveries"].append(
                    (shard, obligation_id, *d.base, d.state, *settled, d.seq, d.ts_event)
                )
            else:
                settled_or_none = d.settled or (None,) * 6
                out["stage_delivery_updates"].append(
                    (shard, obligation_id, d.state, *settled_or_none, d.seq, d.ts_event)
                )
        return {table: rows for table, rows in out.items() if rows}


_ORDER_EVENTS = (ev.OrderAccepted, ev.OrderCancelled, ev.OrderExpired, ev.OrderAmended)
_DELIVERY_EVENTS = (ev.DeliveryAssigned, ev.DeliveryStarted, ev.DeliverySettled)
# Staging tables of append-only ledger tables, which `_copy_new` fills without staging.
_APPEND_ONLY = {"stage_postings": "postings", "stage_trades": "trades"}
# Staging tables in the order their statements must run (orders exist before their updates).
_APPLY_ORDER = tuple(table for table, _ in _STAGES)


# ============================================================================ the writer


class _Tail:
    """What the last record read from a partition was, and its unsettled partial records."""

    __slots__ = ("batch", "partial", "partial_offsets")

    def __init__(self) -> None:
        self.batch = False  # a batch record (not a record without a value, or garbage)
        self.partial = False  # its last command continues in the next record
        self.partial_offsets: set[int] = set()  # pending records marked partial


def _plan_at_record_boundary(
    pending: list[Entry], last_seq: Mapping[int, int], complete: bool, partial: set[int]
) -> Plan:
    """`plan_commit`, never ending inside a batch record: the consumer position stays a record
    boundary, which is where the audit compares the ledger with its replay.

    A plan that would end inside a record (a command split over records is held back) ends
    instead where that record starts, or before the partial records leading to it.
    """
    plan = plan_commit(pending, last_seq, complete)
    cut = plan.count
    if not 0 < cut < len(pending) or pending[cut][0] != pending[cut - 1][0]:
        return plan
    while cut > 0 and pending[cut - 1][0] == pending[cut][0]:
        cut -= 1  # to the start of the record
    while cut > 0 and pending[cut - 1][0] in partial:
        cut -= 1  # the records before it continue into it: back to the command's start
        while cut > 0 and pending[cut - 1][0] == pending[cut][0]:
            cut -= 1
    return plan_commit(pending[:cut], last_seq, True) if cut else Plan(last_seq=dict(last_seq))


async def prepare_connection(conn: Any) -> list[int]:
    """Ready a writer's connection: migrate the ledger, create the staging tables, set the
    planner; return the migrations applied."""
    applied = await ls.migrate(conn)
    for table, definition in _STAGES:
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {table} ({definition}) ON COMMIT DELETE ROWS"
        )
    # Every join this connection runs is a staged batch against a ledger table by its primary
    # key. Staging tables have no statistics, so the planner guessed a hash join over the whole
    # orders table per commit (quadratic: 28 ms per commit at 77k orders, seen in `gx bench
    # pipeline`); index lookups cost what the batch costs.
    await conn.execute("SET enable_hashjoin = off; SET enable_mergejoin = off")
    return list(applied)


async def _copy_new(conn: Any, table: str, rows: list[tuple[Any, ...]]) -> bool:
    """COPY rows straight into an append-only ledger table; False (nothing written) on a conflict.

    Several times cheaper than staging + INSERT ... ON CONFLICT (measured on postings). A
    savepoint keeps the transaction usable when a row already exists.
    """
    try:
        async with conn.transaction():  # a savepoint inside the commit's transaction
            await conn.copy_records_to_table(table, records=rows)
    except asyncpg.UniqueViolationError:
        log.warning("%s: rows already present; settling this batch through ON CONFLICT", table)
        return False
    return True


OnCommit = Callable[[Any], Awaitable[None]]


class SettlementWriter:
    """Consume the events topic into the ledger until `stop()` (once per object); see the module."""

    def __init__(
        self,
        settings: Settings,
        dsn: str,
        bootstrap: str,
        *,
        consumer: str = CONSUMER_DEFAULT,
        check_crcs: bool = True,
        on_commit: OnCommit | None = None,
    ) -> None:
        """Describe a writer; `check_crcs=False` only against the embedded mock broker.

        `on_commit(connection)` runs after every commit (tests check invariants with it).
        """
        if settings.settle_batch_max < 1:
            raise ValueError(f"settle_batch_max: expected >= 1, found {settings.settle_batch_max}")
        self._fetch_wait_ms = settings.kafka_fetch_wait_ms
        events_topic = topics(settings)["events"]
        self.topic = events_topic.name
        self._partitions_n = events_topic.partitions
        self.consumer_name = consumer
        self.counters = SettlementCounters()
        self._dsn = dsn
        self._bootstrap = bootstrap
        self._batch_max = settings.settle_batch_max
        self._check_crcs = check_crcs
        self._on_commit = on_commit
        self._conn: Any = None
        self._partitions: list[TopicPartition] = []
        self._pending: dict[int, list[Entry]] = {}
        self._tail: dict[int, _Tail] = {}  # per partition: what the last record read was
        self._events_per_record = 1.0  # running mean, to size reads in events
        self._next_offset: dict[int, int] = {}
        self._last_seq: dict[int, int] = {}
        self._stopping = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False

    # ------------------------------------------------------------------ public API

    @property
    def positions(self) -> dict[int, int]:
        """The committed next offset per partition."""
        return dict(self._next_offset)

    async def run(self) -> None:
        """Settle until `stop()` is called; raise if the database stays unreachable."""
        self._running = True
        self._done.clear()
        kafka = log_consumer(
            self._bootstrap,
            check_crcs=self._check_crcs,
            fetch_wait_ms=self._fetch_wait_ms,
            client_id=f"gx-settle-{self.consumer_name}",
        )
        try:
            await self._connect()
            await kafka.start()
            try:
                if await self._assign(kafka):
                    await self._resume(kafka)
                    while not self._stopping.is_set():
                        await self._step_retrying(kafka)
            finally:
                await kafka.stop()
        finally:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
            self._running = False
            self._done.set()

    def stop(self) -> None:
        """Ask the writer to stop after its current transaction; `run()` then returns.

        A held-back command is settled by the next run. Synchronous like every process's
        `stop` (`streams.process.Process`), so a signal handler can call it.
        """
        self._stopping.set()

    # ------------------------------------------------------------------ setup

    async def _connect(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        try:
            applied = await prepare_connection(conn)
            if applied:
                log.info("ledger schema migrated to version %d", applied[-1])
        except BaseException:
            await conn.close()
            raise
        self._conn = conn

    async def _assign(self, kafka: AIOKafkaConsumer) -> bool:
        """Assign every partition of the events topic, waiting for it to exist; False if stopped.

        The partitions are the configured layout (streams.topics: one per shard).
        """
        warned = False
        while not self._stopping.is_set():
            if self.topic in await kafka.topics():  # a fresh metadata fetch
                self._partitions = [
                    TopicPartition(self.topic, p) for p in range(self._partitions_n)
                ]
                kafka.assign(self._partitions)
                return True
            if not warned:
                log.warning("topic %s does not exist yet; waiting for it", self.topic)
                warned = True
            await asyncio.sleep(topic_wait_s)
        return False

    async def _resume(self, kafka: AIOKafkaConsumer) -> None:
        """Load the committed positions and seek there, dropping anything read but not settled."""
        rows = await self._conn.fetch(
            "SELECT partition, next_offset FROM consumer_positions WHERE consumer = $1 "
            "AND topic = $2",
            self.consumer_name,
            self.topic,
        )
        stored = {int(r["partition"]): int(r["next_offset"]) for r in rows}
        seqs = await self._conn.fetch(
            "SELECT shard, last_seq FROM shard_positions WHERE consumer = $1", self.consumer_name
        )
        self._last_seq = {int(r["shard"]): int(r["last_seq"]) for r in seqs}
        for tp in self._partitions:
            self._next_offset[tp.partition] = stored.get(tp.partition, 0)
            self._pending[tp.partition] = []
            self._tail[tp.partition] = _Tail()
            kafka.seek(tp, self._next_offset[tp.partition])

    # ------------------------------------------------------------------ the loop

    async def _step_retrying(self, kafka: AIOKafkaConsumer) -> None:
        for attempt in range(1, reconnect_attempts_max + 1):
            try:
                await self._step(kafka)
                return
            except _RETRIABLE as error:
                if attempt == reconnect_attempts_max:
                    raise
                log.warning("database error (%s); reconnecting, attempt %d", error, attempt)
                self.counters.reconnects += 1
                await asyncio.sleep(min(0.1 * 2**attempt, reconnect_backoff_s_max))
                await self._reconnect(kafka)

    async def _reconnect(self, kafka: AIOKafkaConsumer) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        try:
            await self._connect()
        except _RETRIABLE as error:
            log.warning("database still unreachable: %s", error)
            return
        # Whether the failed commit landed is unknown: the database says where to resume.
        await self._resume(kafka)

    async def _step(self, kafka: AIOKafkaConsumer) -> None:
        if self._conn is None:
            raise ConnectionError("no database connection")
        # settle_batch_max counts events; a record holds the events of one or more commands
        records_max = max(1, int(self._batch_max / self._events_per_record))
        batches = await read_batch(
            kafka, tuple(self._partitions), timeout_ms=poll_timeout_ms, max_records=records_max
        )
        read = 0
        for tp, records in batches.items():
            pending, tail = self._pending[tp.partition], self._tail[tp.partition]
            for r in records:
                offset = r.offset
                items = decode_record(r.value)
                pending.extend((offset, item) for item in items)
                read += len(items)
                tail.partial = is_partial(r.headers)
                tail.batch = r.value is not None and is_event_batch(r.value)
                if tail.partial:
                    tail.partial_offsets.add(offset)
            self.counters.records_read += len(records)
        if read:
            self.counters.events_read += read
            record_count = sum(len(r) for r in batches.values())
            self._events_per_record += 0.2 * (read / record_count - self._events_per_record)
        plans: dict[int, Plan] = {}
        seqs = self._last_seq
        for tp in self._partitions:
            pending = self._pending[tp.partition]
            if not pending:
                continue
            tail = self._tail[tp.partition]
            # The pending events end with a record. A batch record that is not marked partial
            # ends its last command; a record that is no batch (no value, or garbage: dead
            # letters) is only known to end one when nothing follows it yet.
            complete = (tail.batch and not tail.partial) or (
                not tail.batch and await _caught_up(kafka, tp)
            )
            plan = _plan_at_record_boundary(pending, seqs, complete, tail.partial_offsets)
            if plan.count:
                plans[tp.partition] = plan
                seqs = plan.last_seq
        if plans:
            await self._commit(plans, seqs)

    async def _commit(self, plans: dict[int, Plan], seqs: dict[int, int]) -> None:
        rows = _Rows()
        next_offsets: dict[int, int] = {}
        for partition, plan in plans.items():
            for offset, event in plan.events:
                rows.add(partition, offset, event)
            pending = self._pending[partition]
            covered = pending[plan.count - 1][0] + 1
            next_offsets[partition] = (
                pending[plan.count][0] if plan.count < len(pending) else covered
            )
        staged = rows.staged()
        conn = self._conn
        async with conn.transaction():
            for table in _APPLY_ORDER:
                if table not in staged:
                    continue
                ledger_table = _APPEND_ONLY.get(table)
                if ledger_table is not None:
                    if await _copy_new(conn, ledger_table, staged[table]):
                        continue
                    self.counters.copy_conflicts += 1
                await conn.copy_records_to_table(table, records=staged[table])
                await conn.execute(_APPLY[table])
            await self._write_dead_letters(plans)
            await self._write_positions(next_offsets, seqs)
        for partition, plan in plans.items():
            pending = self._pending[partition]
            del pending[: plan.count]
            partial = self._tail[partition].partial_offsets
            if partial:  # forget the partial records settled in full
                first = pending[0][0] if pending else None
                partial.difference_update([o for o in partial if first is None or o < first])
        self._next_offset.update(next_offsets)
        self._last_seq = seqs
        self._count(plans, rows)
        if self._on_commit is not None:
            await self._on_commit(conn)

    async def _write_dead_letters(self, plans: dict[int, Plan]) -> None:
        dead = [(p, *d) for p, plan in plans.items() for d in plan.dead]
        if not dead:
            return
        await self._conn.executemany(
            'INSERT INTO dead_letters (consumer, topic, partition, "offset", event_index, reason, '
            "payload) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            [(self.consumer_name, self.topic, *d) for d in dead],
        )

    async def _write_positions(self, next_offsets: dict[int, int], seqs: dict[int, int]) -> None:
        await self._conn.execute(
            "INSERT INTO consumer_positions (consumer, topic, partition, next_offset) "
            "SELECT $1, $2, p, o FROM unnest($3::integer[], $4::bigint[]) AS t(p, o) "
            "ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            self.consumer_name,
            self.topic,
            list(next_offsets),
            list(next_offsets.values()),
        )
        changed = {s: q for s, q in seqs.items() if self._last_seq.get(s) != q}
        if changed:
            await self._conn.execute(
                "INSERT INTO shard_positions (consumer, shard, last_seq) "
                "SELECT $1, s, q FROM unnest($2::bigint[], $3::bigint[]) AS t(s, q) "
                "ON CONFLICT (consumer, shard) DO UPDATE SET last_seq = excluded.last_seq",
                self.consumer_name,
                list(changed),
                list(changed.values()),
            )

    def _count(self, plans: dict[int, Plan], rows: _Rows) -> None:
        c = self.counters
        c.transactions += 1
        c.postings += len(rows.postings)
        c.trades += len(rows.trades)
        for partition, plan in plans.items():
            for offset, index, reason, _ in plan.dead:
                log.warning(
                    "skipped %s[%d]@%d#%d: %s", self.topic, partition, offset, index, reason
                )
            c.events_settled += len(plan.events)
            c.duplicates += plan.duplicates
            c.malformed += plan.malformed
            c.seq_gaps += plan.seq_gaps
            c.unbalanced_commands += plan.unbalanced


async def _caught_up(kafka: AIOKafkaConsumer, tp: TopicPartition) -> bool:
    """Whether everything readable in the partition has been read (transaction markers too)."""
    end = kafka.last_stable_offset(tp)
    if end is None or end < 0:
        end = kafka.highwater(tp)
    if end is None:
        return False
    return bool(await kafka.position(tp) >= end)
