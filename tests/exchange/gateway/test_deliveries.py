"""The gateway's deliveries projection over hand-built event and provisioning sequences.

Each scenario feeds `Deliveries` the events of one delivery's life and checks who is pushed
what: only the holder and the provider, the access only once the engine confirmed, numbered so
`resume_from_seq` works like on the other private channels. Seeded simulations and one traded
delivery replay the engine's own events and compare each delivery's state with them. The desk's
checks before anything is sent (bad access, a failure report out of bounds, disputing another's
delivery) run against a hub that fails if used.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from exchange import wire
from exchange.gateway.accounts import Accounts
from exchange.gateway.deliveries import PENDING_ACCESS_MAX, Deliveries
from exchange.gateway.orders import (
    ConfirmParams,
    DisputeParams,
    FailParams,
    OrderDesk,
    parse_params,
)
from exchange.gateway.provisioning import Provisioning
from exchange.wire import ErrorCode, WireError
from matching.engine import Engine
from schemas import commands as c
from schemas import events as e
from schemas.codes import CashReason, DeliveryOutcome
from schemas.provisioning import Access, ProvisionConfirmed, ProvisionFailed, ProvisionRequested
from schemas.symbols import parse_symbol
from tests.conftest import SMALL, T0_NS, capacity_for, first_hourly
from tests.support.simulation import run_simulation

HOLDER, PROVIDER, OTHER = 10, 20, 30
OBLIGATION = 7
START_NS, END_NS = 1_000 * 3_600_000_000_000, 1_002 * 3_600_000_000_000
SYMBOL = "H100-SXM.us-east.1h.2026-11-30T22"
ACCESS = Access(host="gpu-7.example.com", port=2222, user="gx", instructions="run nvidia-smi")
DELIVERY_KEYS = [
    "obligation_id",
    "symbol",
    "provider",
    "holder",
    "gpus",
    "start_ns",
    "end_ns",
    "state",
    "outcome",
    "hours_released",
    "refund",
    "penalty",
    "access",
    "ts_ns",
]
SEEDS = (1, 2, 3)
USD = 1_000_000


class Log:
    """Events of shard 0 with rising seqs."""

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, kind: type[Any], **fields: Any) -> Any:
        self.seq += 1
        return kind(seq=self.seq, ts_event=START_NS + self.seq, **fields)


def assigned(log: Log, holder: int = HOLDER, provider: int = PROVIDER) -> e.DeliveryAssigned:
    return log(
        e.DeliveryAssigned,
        obligation_id=OBLIGATION,
        symbol=SYMBOL,
        provider=provider,
        holder=holder,
        gpus=2,
        start_ns=START_NS,
        end_ns=END_NS,
        escrow_micros=9_600_000,
    )


def started(log: Log) -> e.DeliveryStarted:
    return log(e.DeliveryStarted, obligation_id=OBLIGATION, provider=PROVIDER, holder=HOLDER)


def released(log: Log) -> e.CashChanged:
    return log(
        e.CashChanged,
        account=PROVIDER,
        available_delta=4_800_000,
        held_delta=0,
        escrow_delta=-4_800_000,
        collateral_delta=0,
        reason=int(CashReason.DELIVERY_RELEASE),
        ref_id=OBLIGATION,
    )


def settled(log: Log, outcome: DeliveryOutcome, refund: int = 0, penalty: int = 0) -> Any:
    return log(
        e.DeliverySettled,
        obligation_id=OBLIGATION,
        provider=PROVIDER,
        holder=HOLDER,
        outcome=int(outcome),
        hours_delivered=1,
        hours_failed=1,
        released_micros=4_800_000,
        refund_micros=refund,
        penalty_micros=penalty,
    )


def confirmation(provider: int = PROVIDER, access: Access | None = ACCESS) -> ProvisionConfirmed:
    return ProvisionConfirmed(obligation_id=OBLIGATION, provider=provider, access=access)


def projection() -> tuple[Accounts, Deliveries]:
    accounts = Accounts(wire.Prices(1000))
    return accounts, Deliveries(accounts)


def feed(deliveries: Deliveries, *items: Any) -> list[tuple[int, str, dict[str, Any]]]:
    """Apply events and provisioning messages; return the pushes decoded."""
    out = []
    for item in items:
        if isinstance(item, ProvisionConfirmed | ProvisionRequested):
            pushes = deliveries.apply_provision(item)
        else:
            pushes = deliveries.apply(item)
        out += [(account, channel, orjson.loads(body)) for account, channel, body in pushes]
    return out


def test_each_event_pushes_its_type_to_the_holder_and_the_provider_only():
    log = Log()
    _, deliveries = projection()
    pushes = feed(
        deliveries,
        assigned(log),
        confirmation(),
        started(log),
        released(log),
        log(e.DeliveryDisputed, obligation_id=OBLIGATION, provider=PROVIDER, holder=HOLDER),
        log(
            e.DisputeResolved,
            obligation_id=OBLIGATION,
            provider=PROVIDER,
            holder=HOLDER,
            released=False,
        ),
        settled(log, DeliveryOutcome.INTERRUPTED, refund=4_800_000, penalty=1_000_000),
    )
    kinds = ["assigned", "confirmed", "hour_released", "disputed", "resolved", "settled"]
    assert [(p["type"], a) for a, _, p in pushes] == [
        (kind, account) for kind in kinds for account in (HOLDER, PROVIDER)
    ]
    assert {channel for _, channel, _ in pushes} == {"deliveries"}
    by_type = {p["type"]: p for a, _, p in pushes if a == HOLDER}
    assert by_type["hour_released"]["delivery"]["hours_released"] == 1
    assert by_type["disputed"]["delivery"]["state"] == "disputed"
    assert by_type["resolved"]["released"] is False
    final = by_type["settled"]["delivery"]
    assert final["state"] == "settled" and final["outcome"] == "interrupted"
    assert (final["refund"], final["penalty"]) == ("4.800000", "1.000000")
    assert deliveries.deliveries(OTHER) == []
    assert [d["obligation_id"] for d in deliveries.deliveries(HOLDER, "settled")] == [OBLIGATION]


def test_access_is_shown_only_once_the_engine_confirmed():
    log = Log()
    _, deliveries = projection()
    first = feed(deliveries, assigned(log), confirmation())
    assert [p["delivery"]["access"] for _, _, p in first] == [None, None]
    assert deliveries.deliveries(HOLDER)[0]["access"] is None  # confirmed by the provider only
    confirmed = feed(deliveries, started(log))
    assert [p["delivery"]["access"] for _, _, p in confirmed] == [
        {"host": "gpu-7.example.com", "port": 2222, "user": "gx", "instructions": "run nvidia-smi"}
    ] * 2
    assert deliveries.deliveries(HOLDER, "confirmed")[0]["access"]["host"] == ACCESS.host


def test_access_of_a_delivery_the_engine_never_confirmed_is_never_shown():
    log = Log()
    _, deliveries = projection()
    pushes = feed(deliveries, assigned(log), confirmation(), settled(log, DeliveryOutcome.FAILED))
    assert all(p["delivery"]["access"] is None for _, _, p in pushes)
    assert deliveries.deliveries(HOLDER)[0]["access"] is None


def test_access_read_after_the_confirmation_comes_in_a_second_confirmed_push():
    log = Log()
    accounts, deliveries = projection()
    feed(deliveries, assigned(log))
    confirmed = feed(deliveries, started(log))
    assert [p["delivery"]["access"] for _, _, p in confirmed] == [None, None]
    late = feed(deliveries, confirmation())
    assert [(a, p["type"]) for a, _, p in late] == [(HOLDER, "confirmed"), (PROVIDER, "confirmed")]
    assert late[0][2]["delivery"]["access"]["user"] == "gx"
    # it shares the account_seq of the push before it, as the two of a self-trade do
    assert (
        late[0][2]["account_seq"]
        == late[0][2]["prev_account_seq"]
        == confirmed[0][2]["account_seq"]
    )
    assert feed(deliveries, confirmation()) == []  # a repeated confirmation changes nothing
    assert accounts.resume(HOLDER, "deliveries", confirmed[0][2]["account_seq"]) is not None


def test_access_read_before_the_assignment_is_kept_for_it():
    log = Log()
    _, deliveries = projection()
    feed(deliveries, confirmation())
    pushes = feed(deliveries, assigned(log), started(log))
    assert pushes[-1][2]["delivery"]["access"]["port"] == 2222


def test_confirmations_from_another_account_or_without_access_are_ignored():
    log = Log()
    _, deliveries = projection()
    feed(deliveries, assigned(log), confirmation(provider=OTHER), confirmation(access=None))
    feed(deliveries, started(log))
    assert deliveries.deliveries(HOLDER)[0]["access"] is None


def test_pending_access_is_bounded():
    _, deliveries = projection()
    for i in range(PENDING_ACCESS_MAX + 5):
        deliveries.apply_provision(ProvisionConfirmed(obligation_id=i, provider=1, access=ACCESS))
    assert len(deliveries._pending) == PENDING_ACCESS_MAX


def test_pushes_are_numbered_and_resume_like_the_other_private_channels():
    log = Log()
    accounts, deliveries = projection()
    pushes = [
        p for a, _, p in feed(deliveries, assigned(log), started(log), released(log)) if a == HOLDER
    ]
    seqs = [(p["account_seq"], p["prev_account_seq"]) for p in pushes]
    assert seqs == [(1, 0), (2, 1), (3, 2)]
    assert accounts.last_seq(HOLDER, "deliveries") == 3
    replay = accounts.resume(HOLDER, "deliveries", 1)
    assert [orjson.loads(b)["type"] for b in replay or []] == ["confirmed", "hour_released"]
    assert accounts.resume(HOLDER, "deliveries", 3) == []
    assert accounts.resume(HOLDER, "deliveries", 9) is None  # ahead: start over from a snapshot


def test_redelivered_events_change_nothing():
    log = Log()
    _, deliveries = projection()
    events = [assigned(log), started(log), released(log)]
    feed(deliveries, *events)
    assert feed(deliveries, *events) == []
    assert deliveries.deliveries(PROVIDER)[0]["hours_released"] == 1


def test_snapshot_lists_the_accounts_active_deliveries():
    log = Log()
    _, deliveries = projection()
    feed(deliveries, assigned(log), confirmation(), started(log))
    snapshot = orjson.loads(deliveries.snapshot(HOLDER))
    assert snapshot["channel"] == "deliveries" and snapshot["type"] == "snapshot"
    assert snapshot["account_seq"] == 2
    assert [(d["obligation_id"], d["state"]) for d in snapshot["deliveries"]] == [
        (OBLIGATION, "confirmed")
    ]
    assert snapshot["deliveries"][0]["access"]["host"] == ACCESS.host
    assert orjson.loads(deliveries.snapshot(OTHER))["deliveries"] == []
    feed(deliveries, settled(log, DeliveryOutcome.DELIVERED))
    assert orjson.loads(deliveries.snapshot(HOLDER))["deliveries"] == []


def test_a_provider_delivering_to_itself_gets_one_push_per_event():
    log = Log()
    _, deliveries = projection()
    pushes = feed(deliveries, assigned(log, holder=PROVIDER, provider=PROVIDER))
    assert [a for a, _, _ in pushes] == [PROVIDER]


def test_list_filters_by_state_and_role():
    log = Log()
    _, deliveries = projection()
    feed(deliveries, assigned(log))
    assert len(deliveries.deliveries(HOLDER, "assigned", "holder")) == 1
    assert deliveries.deliveries(HOLDER, "assigned", "provider") == []
    assert deliveries.deliveries(HOLDER, "confirmed") == []


# ---------------------------------------------------------------------- against the engine


@pytest.fixture(scope="module")
def simulated(catalog) -> dict[int, list[e.Event]]:
    """Per seed: every event of a long simulation (deliveries assigned, confirmed, settled)."""
    return {seed: run_simulation(catalog, seed, 300)[2] for seed in SEEDS}


def _told(events: list[e.Event]) -> dict[int, tuple[int, int, str, str | None, int]]:
    """Per obligation as the events tell it: (provider, holder, state, outcome, hours released)."""
    told: dict[int, tuple[int, int, str, str | None, int]] = {}
    for ev in events:
        if isinstance(ev, e.DeliveryAssigned):
            told[ev.obligation_id] = (ev.provider, ev.holder, "assigned", None, 0)
            continue
        if isinstance(ev, e.CashChanged):
            if ev.reason != CashReason.DELIVERY_RELEASE or ev.ref_id not in told:
                continue
            provider, holder, state, outcome, hours = told[ev.ref_id]
            told[ev.ref_id] = (provider, holder, state, outcome, hours + 1)
            continue
        if not isinstance(
            ev, e.DeliveryStarted | e.DeliveryDisputed | e.DisputeResolved | e.DeliverySettled
        ):
            continue
        provider, holder, state, outcome, hours = told[ev.obligation_id]
        if isinstance(ev, e.DeliveryStarted):
            state = "confirmed"
        elif isinstance(ev, e.DeliveryDisputed):
            state = "disputed"
        elif isinstance(ev, e.DisputeResolved):
            state = "confirmed" if ev.released else state
        else:
            state = "settled"
            outcome = {1: "delivered", 2: "failed", 3: "interrupted"}[ev.outcome]
        told[ev.obligation_id] = (provider, holder, state, outcome, hours)
    return told


@pytest.mark.parametrize("seed", SEEDS)
def test_every_simulated_delivery_is_listed_to_both_parties_as_the_engine_tells_it(simulated, seed):
    events = simulated[seed]
    _, deliveries = projection()
    for ev in events:
        deliveries.apply(ev)
    told = _told(events)
    assert any(state == "settled" for _, _, state, _, _ in told.values())
    for obligation_id, (provider, holder, state, outcome, hours) in told.items():
        for account, role in ((provider, "provider"), (holder, "holder")):
            (found,) = [
                d
                for d in deliveries.deliveries(account, role=role)
                if d["obligation_id"] == obligation_id
            ]
            assert (found["provider"], found["holder"]) == (provider, holder)
            assert (found["state"], found["outcome"], found["hours_released"]) == (
                state,
                outcome,
                hours,
            )
            assert list(found) == DELIVERY_KEYS


def test_a_traded_delivery_moves_from_assigned_to_confirmed_to_settled(catalog):
    engine = Engine(catalog, SMALL)
    _, deliveries = projection()

    def run(command: c.Command) -> None:
        for ev in engine.apply([command]):
            deliveries.apply(ev)

    def seen() -> list[tuple[int, str, str | None]]:
        return [
            (d["gpus"], d["state"], d["outcome"])
            for account, role in ((PROVIDER, "provider"), (HOLDER, "holder"))
            for d in deliveries.deliveries(account, role=role)
        ]

    run(c.ClockTick(ts_ns=T0_NS))
    symbol = first_hourly(engine)
    key = parse_symbol(symbol)
    run(capacity_for(PROVIDER, symbol, 10))
    for account in (PROVIDER, HOLDER):
        run(c.Deposit(account=account, amount_micros=100 * USD))
    for account, side in ((PROVIDER, "sell"), (HOLDER, "buy")):
        run(c.PlaceOrder(account=account, symbol=symbol, side=side, lots=2, price_ticks=2400))
    run(c.ClockTick(ts_ns=key.start_ns - catalog.gate_closure_lead_ns))
    assert seen() == [(2, "assigned", None)] * 2
    assert deliveries.deliveries(PROVIDER, role="holder") == []
    assert deliveries.deliveries(HOLDER, role="provider") == []
    (obligation,) = deliveries.deliveries(HOLDER)
    assert obligation["symbol"] == symbol
    assert (obligation["start_ns"], obligation["end_ns"]) == (str(key.start_ns), str(key.end_ns))
    run(c.ClockTick(ts_ns=key.start_ns))
    run(c.DeliveryConfirmed(account=PROVIDER, obligation_id=obligation["obligation_id"]))
    assert seen() == [(2, "confirmed", None)] * 2
    run(c.ClockTick(ts_ns=key.end_ns))
    assert seen() == [(2, "settled", "delivered")] * 2
    assert deliveries.deliveries(PROVIDER)[0]["hours_released"] == key.hours


# ---------------------------------------------------------------------- the desk's checks


class _NoHub:
    """A hub that fails the test if anything is sent."""

    async def send_provision(self, message: Any) -> None:
        raise AssertionError(f"sent {message!r}")

    async def submit(self, command: Any) -> list[e.Event]:
        raise AssertionError(f"sent {command!r}")


def _desk(deliveries: Deliveries, accounts: Accounts) -> OrderDesk:
    provisioning = Provisioning()
    provisioning.apply(
        ProvisionRequested(
            obligation_id=OBLIGATION,
            provider=PROVIDER,
            holder=HOLDER,
            symbol=SYMBOL,
            gpus=2,
            start_ns=START_NS,
            end_ns=END_NS,
            deadline_ns=START_NS,
        )
    )
    return OrderDesk(
        _NoHub(),  # type: ignore[arg-type]
        accounts,
        None,  # type: ignore[arg-type]
        provisioning,
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        wire.Prices(1000),
        deliveries=deliveries,
    )


@pytest.mark.parametrize(
    ("access", "field"),
    [
        ("ssh gx@gpu-7.example.com", "access:"),
        ({"host": "gpu 7", "port": 22, "user": "gx"}, "access.host:"),
        ({"host": "-gpu.example", "port": 22, "user": "gx"}, "access.host:"),
        ({"host": "10.0.0.7", "port": 0, "user": "gx"}, "access:"),
        ({"host": "10.0.0.7", "port": 65536, "user": "gx"}, "access:"),
        ({"host": "10.0.0.7", "port": "22", "user": "gx"}, "access:"),
        ({"host": "10.0.0.7", "port": 22, "user": "x" * 65}, "access:"),
        ({"host": "10.0.0.7", "port": 22, "user": "a;rm"}, "access.user:"),
        ({"host": "10.0.0.7", "port": 22, "user": "gx\n"}, "access.user:"),
        ({"host": "gpu-7.example.com\n", "port": 22, "user": "gx"}, "access.host:"),
        ({"host": "h" * 254, "port": 22, "user": "gx"}, "access:"),
        ({"host": "10.0.0.7", "port": 22, "user": "gx", "instructions": "i" * 2001}, "access:"),
        ({"host": "10.0.0.7", "port": 22, "user": "gx", "password": "hunter2"}, "access:"),
        ({"port": 22, "user": "gx"}, "access:"),
    ],
)
def test_bad_access_is_refused_with_bad_access_and_nothing_is_sent(access, field):
    accounts, deliveries = projection()
    desk = _desk(deliveries, accounts)
    with pytest.raises(WireError) as refused:
        asyncio.run(desk.confirm(PROVIDER, ConfirmParams(obligation_id=OBLIGATION, access=access)))
    assert refused.value.code == ErrorCode.BAD_ACCESS and refused.value.status == 400
    assert refused.value.msg.startswith(field)
    assert "hunter2" not in refused.value.msg


def test_a_dispute_of_a_delivery_the_caller_does_not_hold_is_refused_locally():
    log = Log()
    accounts, deliveries = projection()
    feed(deliveries, assigned(log), started(log))
    desk = _desk(deliveries, accounts)
    for account, obligation_id in ((PROVIDER, OBLIGATION), (OTHER, OBLIGATION), (HOLDER, 99)):
        with pytest.raises(WireError) as refused:
            asyncio.run(desk.dispute(account, DisputeParams(obligation_id=obligation_id)))
        assert refused.value.code == ErrorCode.UNKNOWN_DELIVERY and refused.value.status == 404


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"hours_delivered": 3}, "hours_delivered:"),  # the window has 2 hours
        ({"hours_delivered": -1}, "hours_delivered:"),
        ({"hours_delivered": 2**63 - 1}, "params:"),
        ({"hours_delivered": 2**64 - 1}, "params:"),
        ({"hours_delivered": 2**64}, "params:"),
        ({"obligation_id": 2**64}, "params:"),
        ({"reason": "r" * 501}, "reason:"),
        ({"reason": "no power\x00"}, "reason:"),
    ],
)
def test_a_failure_report_out_of_bounds_is_refused_and_nothing_is_sent(fields, field):
    accounts, deliveries = projection()
    desk = _desk(deliveries, accounts)
    params = {"obligation_id": OBLIGATION, "hours_delivered": 1, "reason": "no power", **fields}
    with pytest.raises(WireError) as refused:
        asyncio.run(desk.fail(PROVIDER, parse_params(params, FailParams)))
    assert refused.value.code == ErrorCode.BAD_REQUEST and refused.value.status == 400
    assert refused.value.msg.startswith(field), refused.value.msg


def test_a_failure_report_within_bounds_is_sent_as_given():
    sent: list[Any] = []

    class _Hub(_NoHub):
        async def send_provision(self, message: Any) -> None:
            sent.append(message)

    accounts, deliveries = projection()
    desk = _desk(deliveries, accounts)
    desk.hub = _Hub()  # type: ignore[assignment]
    params = {"obligation_id": OBLIGATION, "hours_delivered": 2, "reason": "r" * 500}
    asyncio.run(desk.fail(PROVIDER, parse_params(params, FailParams)))
    assert sent == [
        ProvisionFailed(
            obligation_id=OBLIGATION, provider=PROVIDER, hours_delivered=2, reason="r" * 500
        )
    ]
