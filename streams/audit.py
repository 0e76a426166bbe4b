"""Audit (`gx audit`): replay gx.events independently and check it, and the ledger, against itself.

Two parts:

- `Auditor` (pure): fed decoded events with their raw msgpack bytes, in log order per shard. It
  checks sequence contiguity, extends a hash chain per shard
  (h_n = BLAKE2b-256(h_{n-1} || raw bytes of event n), h_0 = 32 zero bytes), recomputes balances
  per (account, bucket) and positions per (account, symbol) from CashChanged and PositionChanged,
  and checks the invariants at every command boundary (a command = the events of one shard with
  one input offset): cash deltas sum to zero, no user account (>= 10) has a negative bucket, every
  trade is within both orders' limits, no order is overfilled, an IOC/FOK/market remainder never
  rests, and no book is crossed (best bid < best ask over the resting orders).
- `audit()` (async): reads the whole events topic up to its end offsets (plain aiokafka), feeds the
  Auditor, then, given a database URL, compares the replay with the PostgreSQL ledger.

The ledger may lag the log. The audit reads the ledger first, in one repeatable-read snapshot
(`consumer_positions` of the settlement consumer with `balances`, `positions` and the postings
sum), then replays the log to its end, capturing each shard's state at the ledger's next offset
for that partition. The ledger is compared with the replay *at the ledger's own position*, and the
lag is reported as a warning ("ledger behind by N records"), never as a violation.

A checkpoint (`Checkpoint`) is the audited state after a clean run: per shard its sequence, chain
head, the head before it and the next Kafka offset, plus the replayed balances, positions and
resting orders, sealed by a BLAKE2b digest of its contents. A run resumed from it first re-reads
the checkpoint's last event and verifies that BLAKE2b(prev_head || raw) still equals the head,
so a log rewritten at or before the checkpoint's last event is reported (`checkpoint_mismatch`);
events before that are trusted, not re-hashed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Iterable
from typing import Any

import asyncpg
import msgspec
from aiokafka import TopicPartition

from schemas import events as ev
from schemas.codec import decode_bounded, encode
from schemas.codes import CashReason, OrderType, Side, TimeInForce
from schemas.ids import ACCOUNT_EXTERNAL
from streams.consumers import log_consumer
from streams.event_records import CommandGrouper
from streams.settings import Settings
from streams.topics import topics

__all__ = [
    "Auditor",
    "AuditReport",
    "Checkpoint",
    "ShardHead",
    "Violation",
    "audit",
    "chain_step",
    "load_checkpoint",
    "dump_checkpoint",
    "CheckpointError",
    "USER_ACCOUNT_MIN",
    "ZERO_HEAD",
]

ZERO_HEAD = bytes(32)
USER_ACCOUNT_MIN = 10  # 0 external, 1 fees, below 10 house accounts that may go negative
violations_kept_max = 1000  # the report lists the first ones and counts the rest
poll_timeout_ms = 200
read_stall_s_max = 15.0  # no record read for this long before the end offsets: give up
_BUCKETS = ("available", "held", "escrow", "collateral", "pending")  # ledger buckets 1..5
_RESTING_TIF = (TimeInForce.GTC, TimeInForce.GTD)


def chain_step(head: bytes, raw: bytes) -> bytes:
    """Return the next chain head: BLAKE2b-256(head || raw)."""
    return hashlib.blake2b(head + raw, digest_size=32).digest()


# ============================================================================ report types


class Violation(msgspec.Struct, frozen=True, omit_defaults=True):
    """One broken invariant: a stable kind, where it was found and what was expected/found."""

    kind: str
    message: str
    shard: int = -1
    seq: int = 0
    account: int = -1


class ShardHead(msgspec.Struct, frozen=True):
    """A shard's chain after its last audited event (`next_offset` -1 when not from Kafka)."""

    shard: int
    seq: int
    head: str  # hex
    prev_head: str  # hex: the head before event `seq`
    next_offset: int = -1


class AuditReport(msgspec.Struct, omit_defaults=True):
    """What `gx audit` prints (JSON)."""

    ok: bool
    violations_total: int
    violations: list[Violation]
    warnings: list[str]
    events: int
    commands: int
    event_counts: dict[str, int]
    chain_heads: list[ShardHead]
    ledger_compared: bool = False
    ledger_accounts: int = 0
    ledger_positions: int = 0


class _OrderState(msgspec.Struct, array_like=True):
    """A live order as the replay sees it."""

    symbol: str
    buy: bool
    price_ticks: int
    lots_open: int
    rests: bool  # limit GTC/GTD: may rest; IOC/FOK/market never do


class _ShardState(msgspec.Struct):
    """Everything the replay knows about one shard (serialised into checkpoints)."""

    shard: int
    seq: int = 0
    head: bytes = ZERO_HEAD
    prev_head: bytes = ZERO_HEAD
    balances: dict[int, list[int]] = msgspec.field(default_factory=dict)  # account -> 5 buckets
    # Money that came in (deposits) and went out (withdrawals) through the external account,
    # and what every other account holds in all its buckets: the last equals the first minus
    # the second after every command.
    deposited: int = 0
    withdrawn: int = 0
    inside: int = 0
    positions: dict[str, dict[int, int]] = msgspec.field(default_factory=dict)  # symbol->acct->lots
    orders: dict[int, _OrderState] = msgspec.field(default_factory=dict)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, wrong version or its digest differs."""


class Checkpoint(msgspec.Struct, frozen=True):
    """The audited state after a clean run; `digest` seals `shards`."""

    version: int
    shards: list[_ShardState]
    next_offsets: dict[int, int]  # partition -> the offset after the last audited record
    digest: str


_CHECKPOINT_VERSION = 2  # 2: the pending bucket and money in and out
_state_encoder = msgspec.msgpack.Encoder()


def _seal(shards: list[_ShardState], next_offsets: dict[int, int]) -> str:
    body = _state_encoder.encode((_CHECKPOINT_VERSION, shards, sorted(next_offsets.items())))
    return hashlib.blake2b(body, digest_size=32).hexdigest()


def _copy(state: _ShardState) -> _ShardState:
    """A deep copy (checkpoints never share mutable state with an auditor)."""
    return msgspec.msgpack.decode(_state_encoder.encode(state), type=_ShardState)


def dump_checkpoint(checkpoint: Checkpoint) -> bytes:
    """Encode a checkpoint as JSON (the file format)."""
    return msgspec.json.encode(checkpoint)


_checkpoint_decoder = msgspec.json.Decoder(Checkpoint)


def load_checkpoint(data: bytes) -> Checkpoint:
    """Decode and verify a checkpoint; raise CheckpointError saying what is wrong."""
    try:
        cp = decode_bounded(_checkpoint_decoder, data)
    except msgspec.DecodeError as error:
        raise CheckpointError(f"checkpoint: not a checkpoint file ({error})") from None
    if cp.version != _CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint.version: expected {_CHECKPOINT_VERSION}, found {cp.version}"
        )
    if _seal(cp.shards, cp.next_offsets) != cp.digest:
        raise CheckpointError("checkpoint.digest: does not match its contents (file altered?)")
    return cp


# ============================================================================ the pure auditor


def _leg_key(e: ev.PositionChanged) -> tuple[int, str, int, int]:
    return (e.account, e.symbol, e.reason, e.ref_id)


class _Command:
    """The command being replayed on one shard: what its boundary checks need."""

    __slots__ = ("input_offset", "seq", "cash", "accounts", "orders", "symbols")

    def __init__(self, input_offset: int, seq: int) -> None:
        self.input_offset = input_offset
        self.seq = seq
        self.cash = 0
        self.accounts: set[int] = set()
        self.orders: set[int] = set()
        self.symbols: set[str] = set()


class Auditor:
    """Replay events per shard and check every invariant; see the module docstring."""

    def __init__(self, checkpoint: Checkpoint | None = None) -> None:
        """Start from nothing, or from a (verified) checkpoint's state."""
        self.violations: list[Violation] = []
        self.violations_total = 0
        self.warnings: list[str] = []
        self.counts: Counter[str] = Counter()
        self.commands = 0
        self._shards: dict[int, _ShardState] = {}
        self._command: dict[int, _Command] = {}
        self._anchors: dict[int, _ShardState] = {}  # shards whose checkpoint event is unverified
        self._legs: dict[int, list[ev.PositionChanged]] = {}  # position legs not yet checked
        if checkpoint is not None:
            for state in checkpoint.shards:
                s = _copy(state)
                self._shards[s.shard] = s
                if s.seq:
                    self._anchors[s.shard] = s

    # ------------------------------------------------------------------ public API

    def feed(self, event: Any, raw: bytes | None = None) -> None:
        """Replay one event; `raw` is its msgpack encoding as logged (re-encoded when None)."""
        raw = encode(event) if raw is None else raw
        s = self._shards.get(event.shard)
        if s is None:
            s = self._shards[event.shard] = _ShardState(shard=event.shard)
        if event.shard in self._anchors and self._verify_anchor(s, event, raw):
            return
        if event.seq <= s.seq:
            self._violate(
                "seq_duplicate", f"expected seq {s.seq + 1}, found {event.seq} (skipped)", event
            )
            return
        if event.seq != s.seq + 1:
            self._violate(
                "seq_gap", f"expected seq {s.seq + 1}, found {event.seq}: events missing", event
            )
        s.seq, s.prev_head, s.head = event.seq, s.head, chain_step(s.head, raw)
        cmd = self._command.get(s.shard)
        if cmd is None or cmd.input_offset != event.input_offset:
            if cmd is not None:
                self._end_command(s, cmd)
            cmd = self._command[s.shard] = _Command(event.input_offset, event.seq)
        self.counts[type(event).__name__] += 1
        self._apply(s, cmd, event)

    def finish(self) -> None:
        """Close every shard's last command (call once the log is read to its end)."""
        for shard, cmd in sorted(self._command.items()):
            if cmd.cash != 0:
                # The engine may still be producing this command's events.
                self.warnings.append(
                    f"shard {shard}: the last command (input offset {cmd.input_offset}) "
                    f"does not balance yet ({cmd.cash}): incomplete at the end of the log?"
                )
                cmd.cash = 0
            self._end_command(self._shards[shard], cmd)
        self._command.clear()
        for shard in sorted(self._anchors):
            self.warnings.append(f"shard {shard}: the checkpoint's last event was not re-read")

    def balances(self, shards: Iterable[int] | None = None) -> dict[tuple[int, int], int]:
        """Non-zero balances by (account, bucket 1..4), summed over `shards` (default all)."""
        out: Counter[tuple[int, int]] = Counter()
        for shard in self._shards if shards is None else shards:
            s = self._shards.get(shard)
            for account, buckets in (s.balances if s else {}).items():
                for i, amount in enumerate(buckets):
                    out[(account, i + 1)] += amount
        return {k: v for k, v in out.items() if v != 0}

    def positions(self, shards: Iterable[int] | None = None) -> dict[tuple[int, str], int]:
        """Non-zero positions by (account, symbol)."""
        out: dict[tuple[int, str], int] = {}
        for shard in self._shards if shards is None else shards:
            s = self._shards.get(shard)
            for symbol, lots in (s.positions if s else {}).items():
                out.update({(a, symbol): n for a, n in lots.items() if n != 0})
        return out

    def heads(self, next_offsets: dict[int, int] | None = None) -> list[ShardHead]:
        """The chain head per shard (with its next Kafka offset when known)."""
        offsets = next_offsets or {}
        return [
            ShardHead(s.shard, s.seq, s.head.hex(), s.prev_head.hex(), offsets.get(s.shard, -1))
            for _, s in sorted(self._shards.items())
        ]

    def checkpoint(self, next_offsets: dict[int, int]) -> Checkpoint:
        """Seal the current state as a checkpoint (after `finish`, on a clean run)."""
        if self._command:
            raise RuntimeError("checkpoint: call finish() first, a command is still open")
        shards = [_copy(s) for _, s in sorted(self._shards.items())]
        offsets = dict(next_offsets)
        return Checkpoint(_CHECKPOINT_VERSION, shards, offsets, _seal(shards, offsets))

    def report(self, **ledger: Any) -> AuditReport:
        """The report so far (`ledger` adds the ledger comparison's fields)."""
        return AuditReport(
            ok=self.violations_total == 0,
            violations_total=self.violations_total,
            violations=list(self.violations),
            warnings=list(self.warnings),
            events=sum(self.counts.values()),
            commands=self.commands,
            event_counts=dict(sorted(self.counts.items())),
            chain_heads=self.heads(ledger.pop("next_offsets", None)),
            **ledger,
        )

    def violate(self, violation: Violation) -> None:
        """Record a violation found outside the replay (the ledger comparison)."""
        self.violations_total += 1
        if len(self.violations) < violations_kept_max:
            self.violations.append(violation)

    # ------------------------------------------------------------------ replay

    def _violate(self, kind: str, message: str, event: Any, account: int = -1) -> None:
        self.violate(Violation(kind, message, event.shard, event.seq, account))

    def _verify_anchor(self, s: _ShardState, event: Any, raw: bytes) -> bool:
        """Check the checkpoint's last event against its head; True if `event` was audited.

        The replay resumes at the record holding the checkpoint's last event: the events before
        it in that record (a batch) were audited already and are passed over.
        """
        if event.seq > s.seq:
            self.warnings.append(f"shard {s.shard}: the checkpoint's last event was not re-read")
        elif event.seq < s.seq:
            return True  # earlier in the checkpoint's last record
        elif chain_step(s.prev_head, raw) != s.head:
            self._violate(
                "checkpoint_mismatch",
                f"event {event.seq} no longer hashes to the checkpoint's head {s.head.hex()}: "
                "the log was rewritten",
                event,
            )
        del self._anchors[s.shard]
        return event.seq <= s.seq

    def _apply(self, s: _ShardState, cmd: _Command, e: Any) -> None:
        kind = type(e)
        if kind is not ev.PositionChanged and s.shard in self._legs:
            self._check_legs(s)
        if kind is ev.CashChanged:
            self._cash(s, cmd, e)
        elif kind is ev.PositionChanged:
            self._position(s, e)
        elif kind is ev.TradeExecuted:
            self._trade(s, cmd, e)
        elif kind is ev.OrderAccepted:
            if e.order_id in s.orders:
                self._violate("order_duplicate", f"order {e.order_id} accepted twice", e)
            market = e.order_type is OrderType.MARKET
            rests = not market and e.tif in _RESTING_TIF
            s.orders[e.order_id] = _OrderState(
                e.symbol, e.side is Side.BUY, e.price_ticks, e.lots, rests
            )
            cmd.orders.add(e.order_id)
            cmd.symbols.add(e.symbol)
        elif kind in (ev.OrderCancelled, ev.OrderExpired, ev.OrderAmended):
            self._order_change(s, cmd, e)

    def _cash(self, s: _ShardState, cmd: _Command, e: ev.CashChanged) -> None:
        deltas = (
            e.available_delta, e.held_delta, e.escrow_delta, e.collateral_delta, e.pending_delta
        )  # fmt: skip
        buckets = s.balances.setdefault(e.account, [0] * len(_BUCKETS))
        for i, delta in enumerate(deltas):
            buckets[i] += delta
        total = sum(deltas)
        if e.account == ACCOUNT_EXTERNAL:
            if e.reason == CashReason.DEPOSIT:
                s.deposited -= total
            elif e.reason == CashReason.WITHDRAWAL:
                s.withdrawn += total
        else:
            s.inside += total
        cmd.cash += total
        cmd.accounts.add(e.account)

    def _position(self, s: _ShardState, e: ev.PositionChanged) -> None:
        lots = s.positions.setdefault(e.symbol, {})
        lots[e.account] = lots.get(e.account, 0) + e.delta_lots
        group = self._legs.setdefault(s.shard, [])
        if group and _leg_key(group[0]) != _leg_key(e):
            self._check_legs(s)
        group.append(e)

    def _check_legs(self, s: _ShardState) -> None:
        """Check the position_lots of one run of legs with the same account, symbol and ref.

        A self-trade moves one account's position twice (+n, -n) in one trade; the engine
        reports the position after the trade on both legs, so a run of legs is checked
        against the running sum after its last leg (a single leg: after itself).
        """
        group = self._legs.pop(s.shard, [])
        if not group:
            return
        now = s.positions[group[0].symbol][group[0].account]
        for e in group:
            if e.position_lots != now:
                self._violate(
                    "position_mismatch",
                    f"account {e.account} {e.symbol}: event says position {e.position_lots}, "
                    f"replayed deltas sum to {now}",
                    e,
                    e.account,
                )

    def _trade(self, s: _ShardState, cmd: _Command, e: ev.TradeExecuted) -> None:
        cmd.symbols.add(e.symbol)
        buyer, seller = (
            (e.taker_order_id, e.maker_order_id)
            if e.aggressor_side is Side.BUY
            else (e.maker_order_id, e.taker_order_id)
        )
        for order_id, buy in ((buyer, True), (seller, False)):
            order = s.orders.get(order_id)
            if order is None or order.buy != buy or order.symbol != e.symbol:
                self._violate(
                    "trade_unknown_order",
                    f"trade {e.trade_id}: no live {'buy' if buy else 'sell'} order {order_id} "
                    f"in {e.symbol}",
                    e,
                )
                continue
            side = "buy" if buy else "sell"
            if (buy and e.price_ticks > order.price_ticks) or (
                not buy and e.price_ticks < order.price_ticks
            ):
                self._violate(
                    "trade_outside_limit",
                    f"trade {e.trade_id} at {e.price_ticks} ticks: {side} order {order_id} "
                    f"limit is {order.price_ticks}",
                    e,
                )
            order.lots_open -= e.lots
            cmd.orders.add(order_id)
            if order.lots_open < 0:
                self._violate(
                    "order_overfilled",
                    f"trade {e.trade_id}: order {order_id} filled {-order.lots_open} lots more "
                    "than it had",
                    e,
                )

    def _order_change(self, s: _ShardState, cmd: _Command, e: Any) -> None:
        order = s.orders.get(e.order_id)
        if order is None:
            self._violate("order_unknown", f"{type(e).__name__} of unknown order {e.order_id}", e)
            return
        cmd.orders.add(e.order_id)
        cmd.symbols.add(order.symbol)
        if type(e) is ev.OrderCancelled:
            if order.lots_open - e.lots_cancelled != e.lots_remaining:
                self._violate(
                    "order_lots_mismatch",
                    f"order {e.order_id}: {order.lots_open} open - {e.lots_cancelled} cancelled "
                    f"!= {e.lots_remaining} remaining",
                    e,
                )
            order.lots_open = e.lots_remaining
        elif type(e) is ev.OrderExpired:
            order.lots_open = 0
        else:  # OrderAmended: the new limit and resting lots
            order.price_ticks, order.lots_open = e.price_ticks, e.lots

    def _end_command(self, s: _ShardState, cmd: _Command) -> None:
        self._check_legs(s)
        self.commands += 1
        where = Violation("", "", s.shard, cmd.seq)
        if cmd.cash != 0:
            self.violate(
                msgspec.structs.replace(
                    where,
                    kind="cash_not_zero_sum",
                    message=f"command at input offset {cmd.input_offset}: cash deltas sum to "
                    f"{cmd.cash}",
                )
            )
        if s.inside != s.deposited - s.withdrawn:
            self.violate(
                msgspec.structs.replace(
                    where,
                    kind="money_not_conserved",
                    message=f"after the command at input offset {cmd.input_offset}: accounts "
                    f"hold {s.inside}, deposits {s.deposited} minus withdrawals {s.withdrawn} "
                    f"is {s.deposited - s.withdrawn}",
                )
            )
        for account in sorted(a for a in cmd.accounts if a >= USER_ACCOUNT_MIN):
            for i, amount in enumerate(s.balances[account]):
                if amount < 0:
                    self.violate(
                        msgspec.structs.replace(
                            where,
                            kind="negative_balance",
                            message=f"account {account} {_BUCKETS[i]} is {amount} after the "
                            f"command at input offset {cmd.input_offset}",
                            account=account,
                        )
                    )
        for order_id in cmd.orders:
            order = s.orders[order_id]
            if order.lots_open > 0 and order.rests:
                continue
            if order.lots_open > 0:
                self.violate(
                    msgspec.structs.replace(
                        where,
                        kind="remainder_not_cancelled",
                        message=f"IOC/FOK/market order {order_id} still has {order.lots_open} "
                        "lots after its command",
                    )
                )
            del s.orders[order_id]
        if cmd.symbols:
            self._check_books(s, cmd, where)

    def _check_books(self, s: _ShardState, cmd: _Command, where: Violation) -> None:
        bid: dict[str, int] = {}
        ask: dict[str, int] = {}
        for o in s.orders.values():
            if o.symbol not in cmd.symbols:
                continue
            if o.buy:
                bid[o.symbol] = max(bid.get(o.symbol, o.price_ticks), o.price_ticks)
            else:
                ask[o.symbol] = min(ask.get(o.symbol, o.price_ticks), o.price_ticks)
        for symbol in sorted(cmd.symbols):
            if symbol in bid and symbol in ask and bid[symbol] >= ask[symbol]:
                self.violate(
                    msgspec.structs.replace(
                        where,
                        kind="book_crossed",
                        message=f"{symbol}: best bid {bid[symbol]} >= best ask {ask[symbol]} "
                        f"after the command at input offset {cmd.input_offset}",
                    )
                )


# ============================================================================ over Kafka and PG


class _Ledger(msgspec.Struct):
    """One consistent snapshot of the ledger."""

    cut: dict[int, int]  # partition -> next offset settled
    balances: dict[tuple[int, int], int]
    positions: dict[tuple[int, str], int]
    postings_sum: int
    dead_letters: int


async def audit(
    settings: Settings,
    bootstrap: str,
    dsn: str | None = None,
    *,
    checkpoint: Checkpoint | None = None,
    consumer: str = "settlement",
    check_crcs: bool = True,
) -> tuple[AuditReport, Auditor, dict[int, int]]:
    """Replay the events topic to its end and compare it with the ledger at `dsn` (if given).

    Returns the report, the auditor (for a checkpoint) and the next offset per partition.
    `check_crcs=False` only against the embedded mock broker.
    """
    topic = topics(settings)["events"]
    ledger = await _read_ledger(dsn, consumer, topic.name) if dsn else None
    auditor = Auditor(checkpoint)
    starts = {p: 0 for p in range(topic.partitions)}
    if checkpoint is not None:
        # Re-read the checkpoint's last event of each partition to verify its head.
        starts.update({p: max(0, o - 1) for p, o in checkpoint.next_offsets.items()})
    captured: dict[int, tuple[dict[Any, int], dict[Any, int]]] = {}
    ends = await _replay(
        auditor, bootstrap, topic.name, starts, check_crcs, ledger.cut if ledger else {}, captured
    )
    auditor.finish()
    fields: dict[str, Any] = {"next_offsets": ends}
    if ledger is None:
        auditor.warnings.append("no database URL: the ledger was not compared")
    else:
        floor = checkpoint.next_offsets if checkpoint is not None else {}
        fields.update(_compare(auditor, ledger, floor, ends, captured))
    return auditor.report(**fields), auditor, ends


async def _read_ledger(dsn: str, consumer: str, topic: str) -> _Ledger:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            if not await conn.fetchval("SELECT to_regclass('postings') IS NOT NULL"):
                return _Ledger({}, {}, {}, 0, 0)
            cut = await conn.fetch(
                "SELECT partition, next_offset FROM consumer_positions "
                "WHERE consumer = $1 AND topic = $2",
                consumer,
                topic,
            )
            balances = await conn.fetch(
                "SELECT account, bucket, amount_micros FROM balances WHERE amount_micros <> 0"
            )
            positions = await conn.fetch("SELECT account, symbol, lots FROM positions")
            total = await conn.fetchval("SELECT coalesce(sum(amount_micros), 0) FROM postings")
            dead = await conn.fetchval(
                "SELECT count(*) FROM dead_letters WHERE consumer = $1", consumer
            )
    finally:
        await conn.close()
    return _Ledger(
        cut={int(r[0]): int(r[1]) for r in cut},
        balances={(int(r[0]), int(r[1])): int(r[2]) for r in balances},
        positions={(int(r[0]), str(r[1])): int(r[2]) for r in positions if r[2] != 0},
        postings_sum=int(total),
        dead_letters=int(dead),
    )


async def _replay(
    auditor: Auditor,
    bootstrap: str,
    topic: str,
    starts: dict[int, int],
    check_crcs: bool,
    cut: dict[int, int],
    captured: dict[int, tuple[dict[Any, int], dict[Any, int]]],
) -> dict[int, int]:
    """Feed every record from `starts` to the end offsets; capture shard state at `cut`."""
    kafka = log_consumer(bootstrap, check_crcs=check_crcs, client_id="gx-audit")
    await kafka.start()
    try:
        if topic not in await kafka.topics():
            raise LookupError(f"topic {topic} does not exist: nothing to audit")
        tps = [TopicPartition(topic, p) for p in sorted(starts)]
        kafka.assign(tps)
        for tp in tps:
            kafka.seek(tp, starts[tp.partition])
        ends = {tp.partition: int(o) for tp, o in (await kafka.end_offsets(tps)).items()}
        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        while True:
            todo = [tp for tp in tps if await kafka.position(tp) < ends[tp.partition]]
            for tp in tps:
                if tp not in todo:
                    _capture(auditor, tp.partition, ends[tp.partition], cut, captured)
            if not todo:
                return ends
            if loop.time() - last_progress > read_stall_s_max:
                raise TimeoutError(f"{topic}: no records for {read_stall_s_max} s before its end")
            batches = await kafka.getmany(*todo, timeout_ms=poll_timeout_ms)
            for tp, records in batches.items():
                for r in records:
                    if r.offset >= ends[tp.partition]:
                        break
                    _capture(auditor, tp.partition, r.offset, cut, captured)
                    _feed_record(auditor, tp.partition, r.offset, r.value)
                    last_progress = loop.time()
    finally:
        await kafka.stop()


def _capture(
    auditor: Auditor,
    partition: int,
    offset: int,
    cut: dict[int, int],
    captured: dict[int, tuple[dict[Any, int], dict[Any, int]]],
) -> None:
    """Keep the shard's replayed state once the replay reaches the ledger's position."""
    if partition in cut and partition not in captured and offset >= cut[partition]:
        captured[partition] = (auditor.balances([partition]), auditor.positions([partition]))


# Records as they come (the Auditor keeps the command boundaries), each event with its bytes.
_records = CommandGrouper(hold_partial=False, keep_raw=True)


def _feed_record(auditor: Auditor, partition: int, offset: int, value: bytes | None) -> None:
    """Replay the events of one gx.events record, as they come: the Auditor checks each command
    as its events arrive, a command split over records included."""
    where = f"partition {partition} offset {offset}"
    if value is None:
        auditor.violate(Violation("record_malformed", f"{where}: record has no value"))
        return
    commands, errors = _records.feed(value)
    for index, error in errors:
        what = ": undecodable record" if index < 0 else f" event {index}: undecodable event"
        auditor.violate(Violation("record_malformed", f"{where}{what}: {error}"))
    events = [(event, raw) for c in commands for event, raw in zip(c.events, c.raws, strict=True)]
    for event, raw in events:
        if event.shard != partition:
            auditor.violate(
                Violation(
                    "wrong_partition",
                    f"{where}: event of shard {event.shard} (expected {partition})",
                    event.shard,
                    event.seq,
                )
            )
        auditor.feed(event, raw)


def _compare(
    auditor: Auditor,
    ledger: _Ledger,
    floor: dict[int, int],
    ends: dict[int, int],
    captured: dict[int, tuple[dict[Any, int], dict[Any, int]]],
) -> dict[str, Any]:
    """Compare the ledger with the replay at the ledger's position; report lag as warnings."""
    for p in sorted(ends):
        at = ledger.cut.get(p, 0)
        if at > ends[p]:
            auditor.violate(
                Violation("ledger_ahead", f"partition {p}: ledger at {at}, log ends at {ends[p]}")
            )
            return {}
        if at < floor.get(p, 0):
            auditor.warnings.append(
                f"partition {p}: ledger at offset {at}, before the checkpoint: not compared"
            )
            return {}
        if at < ends[p]:
            auditor.warnings.append(
                f"partition {p}: ledger behind by {ends[p] - at} records; compared at its "
                f"position (offset {at})"
            )
    if ledger.postings_sum != 0:
        auditor.violate(
            Violation("postings_not_zero_sum", f"ledger postings sum to {ledger.postings_sum}")
        )
    if ledger.dead_letters:
        auditor.warnings.append(f"ledger holds {ledger.dead_letters} dead letters")
    replay_bal: Counter[tuple[int, int]] = Counter()
    replay_pos: dict[tuple[int, str], int] = {}
    for p in sorted(ends):
        balances, positions = captured.get(p, ({}, {}))
        replay_bal.update(balances)
        replay_pos.update(positions)
    for account, bucket in sorted(set(replay_bal) | set(ledger.balances)):
        want, got = replay_bal.get((account, bucket), 0), ledger.balances.get((account, bucket), 0)
        if want != got:
            auditor.violate(
                Violation(
                    "ledger_balance_mismatch",
                    f"account {account} {_BUCKETS[bucket - 1]}: ledger {got}, replay {want}",
                    account=account,
                )
            )
    for account, symbol in sorted(set(replay_pos) | set(ledger.positions)):
        want, got = replay_pos.get((account, symbol), 0), ledger.positions.get((account, symbol), 0)
        if want != got:
            auditor.violate(
                Violation(
                    "ledger_position_mismatch",
                    f"account {account} {symbol}: ledger {got} lots, replay {want}",
                    account=account,
                )
            )
    return {
        "ledger_compared": True,
        "ledger_accounts": len({a for a, _ in ledger.balances}),
        "ledger_positions": len(ledger.positions),
    }
