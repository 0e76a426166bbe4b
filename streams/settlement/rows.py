"""Ledger rows and their SQL: the rows a transaction stages (postings, trades, orders,
positions, deliveries, transfers), the staging tables, the statements that apply them (`_APPLY`), and the
direct COPY of append-only tables."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import asyncpg

from schemas import events as ev
from streams.ledger import schema as ls

log = logging.getLogger("gx.settle")


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
    ("stage_transfers", "LIKE transfers"),
    (
        "stage_transfer_updates",
        "shard bigint, kind smallint, transfer_id bigint, status smallint, seq bigint, "
        "ts_event bigint",
    ),
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
    "stage_transfers": "INSERT INTO transfers SELECT * FROM stage_transfers "
    "ON CONFLICT (shard, kind, transfer_id) DO UPDATE SET "
    f"{_set_all('transfers', ('status', 'seq', 'ts_event'))}",
    "stage_transfer_updates": """
        UPDATE transfers AS t SET status = s.status, seq = s.seq, ts_event = s.ts_event
        FROM stage_transfer_updates AS s
        WHERE t.shard = s.shard AND t.kind = s.kind AND t.transfer_id = s.transfer_id
          AND t.seq < s.seq
    """,
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
        # (shard, kind, id) -> its full row if requested in this batch, else [status, seq, ts]
        self.transfers: dict[tuple[int, int, int], list[Any]] = {}

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
        elif kind in _TRANSFER_EVENTS:
            self._transfer_event(event)

    def _cash(self, partition: int, offset: int, e: ev.CashChanged) -> None:
        deltas = (
            e.available_delta, e.held_delta, e.escrow_delta, e.collateral_delta, e.pending_delta
        )  # fmt: skip
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

    def _transfer_event(self, e: Any) -> None:
        if type(e) is ev.DepositCredited:
            self.transfers[(e.shard, ls.TRANSFER_DEPOSIT, e.deposit_id)] = [
                e.shard, ls.TRANSFER_DEPOSIT, e.deposit_id, e.account, e.amount_micros,
                e.reference, ls.TRANSFER_COMPLETED, e.ts_event, e.seq, e.ts_event,
            ]  # fmt: skip
        elif type(e) is ev.WithdrawalRequested:
            self.transfers[(e.shard, ls.TRANSFER_WITHDRAWAL, e.withdrawal_id)] = [
                e.shard, ls.TRANSFER_WITHDRAWAL, e.withdrawal_id, e.account, e.amount_micros,
                e.destination, ls.TRANSFER_PENDING, e.ts_event, e.seq, e.ts_event,
            ]  # fmt: skip
        else:  # WithdrawalSettled
            status = ls.TRANSFER_COMPLETED if e.approved else ls.TRANSFER_REJECTED
            key = (e.shard, ls.TRANSFER_WITHDRAWAL, e.withdrawal_id)
            row = self.transfers.get(key)
            if row is not None and len(row) == 10:  # requested in this batch
                row[6], row[8], row[9] = status, e.seq, e.ts_event
            else:
                self.transfers[key] = [status, e.seq, e.ts_event]

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
            "stage_transfers": [],
            "stage_transfer_updates": [],
        }
        for (shard, kind, transfer_id), row in self.transfers.items():
            if len(row) == 10:
                out["stage_transfers"].append(tuple(row))
            else:
                out["stage_transfer_updates"].append((shard, kind, transfer_id, *row))
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
_TRANSFER_EVENTS = (ev.DepositCredited, ev.WithdrawalRequested, ev.WithdrawalSettled)
# Staging tables of append-only ledger tables, which `_copy_new` fills without staging.
_APPEND_ONLY = {"stage_postings": "postings", "stage_trades": "trades"}
# Staging tables in the order their statements must run (orders exist before their updates).
_APPLY_ORDER = tuple(table for table, _ in _STAGES)


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
        log.warning(
            "%s: rows already present (a redelivery, or positions reset); settling this batch "
            "through ON CONFLICT: nothing to do unless it repeats on every batch",
            table,
        )
        return False
    return True
