"""The provisioning lifecycle and worker against bad provider records: each is logged and
skipped before anything changes, and the records after it are handled as if it never came."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from schemas import commands as c
from schemas import events as e
from schemas.codec import decode_command
from schemas.provisioning import ProvisionFailed, encode_provision
from streams.provisioning import Lifecycle, ProvisioningProcess, ProvisioningStats
from streams.settings import Settings

HOUR_NS = 3_600_000_000_000
START_NS = 1_000 * HOUR_NS
PROVIDER, HOLDER, OBLIGATION = 20, 10, 7


def _lifecycle(stats: ProvisioningStats | None = None) -> Lifecycle:
    stats = stats or ProvisioningStats()
    lifecycle = Lifecycle({}, {}, deadline_ns=HOUR_NS // 4, stats=stats)
    assigned = e.DeliveryAssigned(
        input_offset=0,
        ts_event=START_NS - HOUR_NS,
        obligation_id=OBLIGATION,
        symbol="H100-SXM.us-east.2h.2026-11-30T22",
        provider=PROVIDER,
        holder=HOLDER,
        gpus=1,
        start_ns=START_NS,
        end_ns=START_NS + 2 * HOUR_NS,
        escrow_micros=1,
    )
    assert [o.role for o in lifecycle.on_event(assigned)] == ["provisioning"]
    return lifecycle


def _failed(hours: int, reason: str = "no power") -> ProvisionFailed:
    return ProvisionFailed(
        obligation_id=OBLIGATION, provider=PROVIDER, hours_delivered=hours, reason=reason
    )


def _state(lifecycle: Lifecycle) -> str:
    record = lifecycle._get(OBLIGATION)
    assert record is not None
    return record.state


def test_a_failure_report_out_of_bounds_is_dropped_and_the_delivery_can_still_fail():
    lifecycle = _lifecycle()
    for bad in (_failed(2**64), _failed(2**63), _failed(3), _failed(-1), _failed(0, "r" * 501)):
        assert lifecycle.on_reply(bad) == []
        assert _state(lifecycle) == "requested"  # not marked failed: the engine would never hear
    assert lifecycle.stats.unfit_replies == 5 and lifecycle.stats.failed == 0
    out = lifecycle.on_reply(_failed(2))
    assert [decode_command(o.value) for o in out] == [
        c.DeliveryFailed(
            account=PROVIDER, obligation_id=OBLIGATION, hours_delivered=2, reason="no power"
        )
    ]
    assert _state(lifecycle) == "failed"


async def _records(values: list[bytes]) -> AsyncIterator[bytes]:
    for value in values:
        yield value


def test_a_record_whose_handling_raises_is_skipped_and_the_worker_reads_on(monkeypatch):
    process = ProvisioningProcess(
        Settings(kafka_bootstrap="127.0.0.1:9"), deadline_ns=HOUR_NS // 4, mock_broker=True
    )
    lifecycle = _lifecycle(process.stats)
    process.lifecycle = lifecycle
    sent: list[Any] = []

    async def send(out: list[Any]) -> None:
        sent.extend(out)

    monkeypatch.setattr(process, "_send", send)
    handle = lifecycle.on_reply
    calls = iter([RuntimeError("a bug"), None, None])

    def flaky(message: Any) -> Any:
        failure = next(calls)
        if failure is not None:
            raise failure
        return handle(message)

    monkeypatch.setattr(lifecycle, "on_reply", flaky)
    values = [encode_provision(_failed(1)), b"not json", encode_provision(_failed(2**64))]
    values.append(encode_provision(_failed(1)))
    asyncio.run(process._on_replies(_records(values)))  # type: ignore[arg-type]
    assert process.stats.errors == 1 and process.stats.malformed == 1
    assert process.stats.unfit_replies == 1 and process.stats.failed == 1
    assert [decode_command(o.value) for o in sent] == [
        c.DeliveryFailed(
            account=PROVIDER, obligation_id=OBLIGATION, hours_delivered=1, reason="no power"
        )
    ]
