"""The gateway's deliveries projection: each account's deliveries, as holder and as provider.

`Deliveries.apply(event)` takes every engine event of gx.events in log order, and
`Deliveries.apply_provision(message)` every gx.provisioning message; both return the private
pushes they cause as `(account, "deliveries", body)`, to the holder and the provider of the
delivery only (one push when they are the same account). The push `type` says what happened:

    DeliveryAssigned                          -> assigned
    DeliveryStarted (the engine took the
      provider's confirmation)                -> confirmed (with the access)
    CashChanged DELIVERY_RELEASE (ref_id =
      the obligation: one per hour released)  -> hour_released
    DeliveryDisputed                          -> disputed
    DisputeResolved                           -> resolved (`released`: the provider is paid on)
    DeliverySettled                           -> settled (outcome, refund, penalty)

Access: the provider's `ProvisionConfirmed` (gx.provisioning) carries it. It is shown only once
the engine confirmed the delivery (`DeliveryStarted`): a confirmation the engine refused (too
late, say) never shows its access to anyone. The two topics are not ordered with each other, so
the access may be read before its delivery is assigned (kept aside, at most PENDING_ACCESS_MAX
obligations) or after it is confirmed: the `confirmed` push then has `"access": null` and a second
`confirmed` push brings the access. That second push has no engine event of its own: it shares
the `account_seq` of the account's previous `deliveries` push (as the two pushes of a self-trade
do), so resume and gap checks treat it like any other (exchange/gateway/accounts.py numbers every
push: `Accounts.numbered`). The first access a provider confirmed with wins, as it is the one
the provisioning process acted on; a confirmation from another account than the provider is
ignored.

Access is private: it is in pushes to these two accounts and in their `GET /deliveries`, never
on a public channel, never in a log line (nothing here logs).

Retention: active deliveries are bounded by the engine; per account the last
DELIVERIES_SETTLED_MAX settled ones are kept. Idempotent on the source position: an event whose
`seq` is not above the last applied one of its shard changes nothing, and a repeated
confirmation finds its access already set. No I/O, no asyncio, no clock: the same messages in
the same order give the same pushes.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from exchange.gateway.accounts import Accounts, Push
from exchange.wire import money_to_str
from schemas import events as e
from schemas.codes import CashReason, DeliveryOutcome
from schemas.provisioning import Access, ProvisionConfirmed, ProvisionMessage

__all__ = [
    "CHANNEL",
    "DELIVERIES_SETTLED_MAX",
    "DELIVERY_ROLES",
    "DELIVERY_STATES",
    "PENDING_ACCESS_MAX",
    "Deliveries",
]

CHANNEL = "deliveries"
DELIVERY_STATES = ("assigned", "confirmed", "disputed", "settled")
DELIVERY_ROLES = ("holder", "provider")
DELIVERIES_SETTLED_MAX = 1000  # settled deliveries kept per account
PENDING_ACCESS_MAX = 10_000  # confirmations read before their delivery's assignment
_RELEASE = int(CashReason.DELIVERY_RELEASE)
_OUTCOME_NAMES = {int(code): code.name.lower() for code in DeliveryOutcome}


class _Delivery:
    __slots__ = (
        "obligation_id",
        "symbol",
        "provider",
        "holder",
        "gpus",
        "start_ns",
        "end_ns",
        "state",
        "outcome",
        "started",
        "hours_released",
        "refund_micros",
        "penalty_micros",
        "access",
        "ts_ns",
    )

    def __init__(self, ev: e.DeliveryAssigned) -> None:
        self.obligation_id = ev.obligation_id
        self.symbol = ev.symbol
        self.provider = ev.provider
        self.holder = ev.holder
        self.gpus = ev.gpus
        self.start_ns = ev.start_ns
        self.end_ns = ev.end_ns
        self.state = "assigned"
        self.outcome: str | None = None
        self.started = False  # the engine took the provider's confirmation
        self.hours_released = 0
        self.refund_micros = 0
        self.penalty_micros = 0
        self.access: Access | None = None  # as confirmed; shown once `started`
        self.ts_ns = ev.ts_event

    def accounts(self) -> Iterable[int]:
        return dict.fromkeys((self.holder, self.provider))

    def view(self) -> dict[str, Any]:
        """The delivery as the wire shows it (exchange/API.md, "delivery")."""
        access = self.access if self.started else None
        return {
            "obligation_id": self.obligation_id,
            "symbol": self.symbol,
            "provider": self.provider,
            "holder": self.holder,
            "gpus": self.gpus,
            "start_ns": str(self.start_ns),
            "end_ns": str(self.end_ns),
            "state": self.state,
            "outcome": self.outcome,
            "hours_released": self.hours_released,
            "refund": money_to_str(self.refund_micros),
            "penalty": money_to_str(self.penalty_micros),
            "access": None
            if access is None
            else {
                "host": access.host,
                "port": access.port,
                "user": access.user,
                "instructions": access.instructions,
            },
            "ts_ns": str(self.ts_ns),
        }


class Deliveries:
    """Deliveries by account, from gx.events and gx.provisioning, and their private pushes."""

    def __init__(self, accounts: Accounts, settled_max: int = DELIVERIES_SETTLED_MAX) -> None:
        if settled_max < 0:
            raise ValueError(f"settled_max: expected >= 0, found {settled_max}")
        self._accounts = accounts  # numbers the pushes and keeps them for resume
        self.settled_max = settled_max
        self._active: dict[int, _Delivery] = {}  # obligation id -> delivery not yet settled
        self._of: dict[int, dict[int, _Delivery]] = {}  # account -> its active deliveries
        self._settled: dict[int, deque[_Delivery]] = {}  # account -> settled, newest first
        # obligation id -> (provider, access) confirmed before the assignment was read
        self._pending: OrderedDict[int, tuple[int, Access]] = OrderedDict()
        self._seqs: dict[int, int] = {}  # shard -> seq of its last applied event
        self._handlers: dict[type, Callable[[Any], list[Push]]] = {
            e.DeliveryAssigned: self._assigned,
            e.DeliveryStarted: self._started,
            e.CashChanged: self._cash,
            e.DeliveryDisputed: self._disputed,
            e.DisputeResolved: self._resolved,
            e.DeliverySettled: self._settled_event,
        }

    # ------------------------------------------------------------------ applying

    def apply(self, event: e.Event) -> list[Push]:
        """Take the next event of a shard; return its pushes as (account, channel, body)."""
        handler = self._handlers.get(type(event))
        if event.seq <= self._seqs.get(event.shard, 0):
            return []  # a redelivery
        self._seqs[event.shard] = event.seq
        return [] if handler is None else handler(event)

    def apply_provision(self, message: ProvisionMessage) -> list[Push]:
        """Take the next gx.provisioning message: a confirmation brings its access."""
        if not isinstance(message, ProvisionConfirmed) or message.access is None:
            return []
        d = self._active.get(message.obligation_id)
        if d is None:
            self._pending[message.obligation_id] = (message.provider, message.access)
            self._pending.move_to_end(message.obligation_id)
            while len(self._pending) > PENDING_ACCESS_MAX:
                self._pending.popitem(last=False)
            return []
        if message.provider != d.provider or d.access is not None:
            return []
        d.access = message.access
        if not d.started:
            return []  # shown once the engine confirms the delivery
        # Confirmed before its access was read: say it again, now with the access.
        return [
            self._push(d, account, self._accounts.last_seq(account, CHANNEL), "confirmed")
            for account in d.accounts()
        ]

    # ------------------------------------------------------------------ queries

    def deliveries(
        self, account: int, state: str | None = None, role: str | None = None
    ) -> list[dict[str, Any]]:
        """The account's deliveries: active ones by obligation id, then settled, newest first.

        `state` keeps one of DELIVERY_STATES; `role` (`holder` or `provider`) one side.
        """
        found = self._active_of(account) + list(self._settled.get(account, ()))
        return [
            d.view()
            for d in found
            if (state is None or d.state == state)
            and (role is None or (d.holder if role == "holder" else d.provider) == account)
        ]

    def delivery(self, account: int, obligation_id: int) -> dict[str, Any] | None:
        """One of the account's deliveries (as holder or provider), or None."""
        d = self._find(account, obligation_id)
        return None if d is None else d.view()

    def is_holder(self, account: int, obligation_id: int) -> bool:
        """Whether the account holds the delivery (active or retained settled)."""
        d = self._find(account, obligation_id)
        return d is not None and d.holder == account

    def snapshot(self, account: int) -> bytes:
        """The `deliveries` snapshot body: the account's active deliveries."""
        body = {
            "channel": CHANNEL,
            "type": "snapshot",
            "account_seq": self._accounts.last_seq(account, CHANNEL),
            "deliveries": [d.view() for d in self._active_of(account)],
        }
        return orjson.dumps(body)

    # ------------------------------------------------------------------ events

    def _assigned(self, ev: e.DeliveryAssigned) -> list[Push]:
        d = _Delivery(ev)
        pending = self._pending.pop(ev.obligation_id, None)
        if pending is not None and pending[0] == ev.provider:
            d.access = pending[1]
        self._active[ev.obligation_id] = d
        for account in d.accounts():
            self._of.setdefault(account, {})[ev.obligation_id] = d
        return self._pushes(d, ev, "assigned")

    def _started(self, ev: e.DeliveryStarted) -> list[Push]:
        d = self._active.get(ev.obligation_id)
        if d is None:
            return []
        d.started = True
        d.state = "confirmed"
        return self._pushes(d, ev, "confirmed")

    def _cash(self, ev: e.CashChanged) -> list[Push]:
        if ev.reason != _RELEASE:
            return []
        d = self._active.get(ev.ref_id)
        if d is None or ev.account != d.provider:
            return []
        d.hours_released += 1
        return self._pushes(d, ev, "hour_released")

    def _disputed(self, ev: e.DeliveryDisputed) -> list[Push]:
        d = self._active.get(ev.obligation_id)
        if d is None:
            return []
        d.state = "disputed"
        return self._pushes(d, ev, "disputed")

    def _resolved(self, ev: e.DisputeResolved) -> list[Push]:
        d = self._active.get(ev.obligation_id)
        if d is None:
            return []
        if ev.released:
            d.state = "confirmed"  # delivery goes on; else a DeliverySettled follows
        return self._pushes(d, ev, "resolved", released=ev.released)

    def _settled_event(self, ev: e.DeliverySettled) -> list[Push]:
        d = self._active.pop(ev.obligation_id, None)
        self._pending.pop(ev.obligation_id, None)
        if d is None:
            return []
        d.state = "settled"
        d.outcome = _OUTCOME_NAMES.get(ev.outcome, str(ev.outcome))
        d.refund_micros = ev.refund_micros
        d.penalty_micros = ev.penalty_micros
        for account in d.accounts():
            active = self._of.get(account, {})
            active.pop(ev.obligation_id, None)
            if not active:
                self._of.pop(account, None)
            settled = self._settled.get(account)
            if settled is None:
                settled = self._settled[account] = deque(maxlen=self.settled_max)
            settled.appendleft(d)
        return self._pushes(d, ev, "settled")

    # ------------------------------------------------------------------ helpers

    def _active_of(self, account: int) -> list[_Delivery]:
        active = self._of.get(account, {})
        return [active[i] for i in sorted(active)]

    def _find(self, account: int, obligation_id: int) -> _Delivery | None:
        d = self._of.get(account, {}).get(obligation_id)
        if d is not None:
            return d
        for settled in self._settled.get(account, ()):
            if settled.obligation_id == obligation_id:
                return settled
        return None

    def _pushes(self, d: _Delivery, ev: e.Event, kind: str, **extra: Any) -> list[Push]:
        d.ts_ns = ev.ts_event
        return [self._push(d, account, ev.seq, kind, **extra) for account in d.accounts()]

    def _push(self, d: _Delivery, account: int, seq: int, kind: str, **extra: Any) -> Push:
        body = {"type": kind, "delivery": d.view(), **extra, "ts_ns": str(d.ts_ns)}
        return self._accounts.numbered(account, CHANNEL, seq, body)
