"""The ledger as users read it: pages with a cursor and a period, statements in JSON and CSV."""

from __future__ import annotations

import asyncio
import csv
import io
from decimal import Decimal
from typing import Any

import pytest

from streams.ledger.reads import BUCKET_NAMES
from tests.support.gateway_harness import Exchange, rest, running_exchange

from .conftest import run

pytestmark = pytest.mark.timeout(120)


async def _trade(ex: Exchange) -> None:
    """One trade between the provider and the trader, settled into the ledger."""
    provider, trader = ex.keys["provider"], ex.keys["trader"]
    ask = {"symbol": ex.symbol, "side": "sell", "type": "limit", "price": "2.450", "qty": "2"}
    assert (await rest(ex, "POST", "/api/v1/orders", provider, ask)).status_code == 200
    bid = {**ask, "side": "buy"}
    assert (await rest(ex, "POST", "/api/v1/orders", trader, bid)).status_code == 200
    for _ in range(200):
        entries = (await rest(ex, "GET", "/api/v1/ledger", trader)).json()["entries"]
        if any(e["reason"] == "trade" for e in entries):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the trade never reached the ledger")


def test_ledger_pages_by_cursor_and_period_and_statements_add_up(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            await _trade(ex)
            trader = ex.keys["trader"]

            async def get(path: str) -> Any:
                answer = await rest(ex, "GET", path, trader)
                return answer.status_code, answer

            status, whole = await get("/api/v1/ledger?limit=1000")
            entries = whole.json()["entries"]
            assert status == 200 and whole.json()["next_cursor"] is None
            assert {e["reason"] for e in entries} >= {"deposit", "order_hold", "trade"}
            # Page one entry at a time: the same entries, in the same order, none twice.
            paged: list[dict[str, Any]] = []
            cursor = ""
            while True:
                status, page = await get(f"/api/v1/ledger?limit=1&cursor={cursor}")
                body = page.json()
                paged += body["entries"]
                if body["next_cursor"] is None or len(paged) > len(entries):
                    break
                cursor = body["next_cursor"]
            assert paged == entries
            # A period: only the entries with ts_ns in [from, to).
            newest = int(entries[0]["ts_ns"])
            status, recent = await get(f"/api/v1/ledger?from={newest}&to={newest + 1}")
            assert {e["ts_ns"] for e in recent.json()["entries"]} == {str(newest)}

            # The statement: opening + entries = closing, and closing = the balances.
            status, st = await get(f"/api/v1/statements?from={newest}")
            statement = st.json()
            balances = (await rest(ex, "GET", "/api/v1/balances", trader)).json()
            for bucket, closing in statement["closing"].items():
                moved = sum(
                    Decimal(e["amount"]) for e in statement["entries"] if e["bucket"] == bucket
                )
                assert Decimal(statement["opening"][bucket]) + moved == Decimal(closing)
                assert Decimal(closing) == Decimal(balances[bucket]), bucket
            status, whole_csv = await get("/api/v1/statements?format=csv&from=2020-01-01")
            assert status == 200 and whole_csv.headers["content-type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(whole_csv.text)))
            buckets = len(BUCKET_NAMES)  # one opening row per bucket
            assert [r["reason"] for r in rows[:buckets]] == ["opening"] * buckets
            last: dict[str, str] = {}
            for r in rows:
                last[r["bucket"]] = r["balance"]
            assert {b: Decimal(v) for b, v in last.items()} == {
                b: Decimal(balances[b]) for b in last
            }
            assert len(rows) == buckets + len(entries)

            # Bad queries: a stable code, nothing else.
            for path in (
                "/api/v1/ledger?cursor=nope",
                "/api/v1/ledger?cursor=1.2.3",
                "/api/v1/ledger?limit=0",
                "/api/v1/ledger?limit=1001",
                "/api/v1/ledger?from=yesterday",
                "/api/v1/statements?format=xml",
            ):
                status, bad = await get(path)
                assert status == 400 and bad.json()["error"]["code"] == "BAD_REQUEST", path
            # from after to fits the document (each is a time): an empty period, not an error
            status, empty = await get("/api/v1/ledger?from=5&to=4")
            assert status == 200 and empty.json() == {"entries": [], "next_cursor": None}
            assert (await rest(ex, "GET", "/api/v1/statements")).status_code == 401

    run(scenario(), timeout_s=100)
