"""Every consumer copes with the market-control events: market data publishes the instrument's
status, the audit replays them without a violation, settlement decodes them as settleable."""

from __future__ import annotations

import pytest

from schemas.codec import encode
from schemas.marketdata import InstrumentStatus
from streams.audit import Auditor
from streams.event_records import pack_events
from streams.marketdata.state import MarketData
from streams.settlement.decode import Malformed, decode_record
from tests.golden import runner

pytestmark = pytest.mark.nojit

CONTROL_SCENARIOS = [
    "circuit_breaker_halts_and_tick_resumes",
    "reject_instrument_halted",
    "reject_account_suspended",
    "cancel_instrument_orders_by_operator",
]


def _events(name: str) -> list:
    scenario = runner.load(name)
    commands = scenario.commands
    return runner.new_engine(scenario).apply(commands, offsets=range(len(commands)))


def test_market_data_publishes_halt_and_resumption_of_the_breaker() -> None:
    md = MarketData()
    messages = []
    for event in _events("circuit_breaker_halts_and_tick_resumes"):
        messages += md.apply(event)
    messages += md.flush()
    statuses = [m for m in messages if isinstance(m, InstrumentStatus)]
    assert [(s.status, s.reason) for s in statuses] == [
        ("halted", "circuit_breaker"),
        ("trading", ""),
    ]
    assert statuses[0].until_ns == 1796072580000000000


@pytest.mark.parametrize("name", CONTROL_SCENARIOS)
def test_audit_replays_control_events_without_violation(name: str) -> None:
    auditor = Auditor()
    for event in _events(name):
        auditor.feed(event, encode(event))
    auditor.finish()
    assert auditor.violations == []


@pytest.mark.parametrize("name", CONTROL_SCENARIOS)
def test_settlement_decodes_control_events(name: str) -> None:
    events = _events(name)
    decoded = decode_record(pack_events([encode(e) for e in events]))
    assert not [d for d in decoded if isinstance(d, Malformed)]
    assert len(decoded) == len(events)
