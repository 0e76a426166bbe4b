"""Money in and out: operator deposits once per reference, users' withdrawals pending until an
operator approves or rejects them (`gx funds`), and every refusal changing nothing."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from exchange.gateway.transfers import DESTINATION_CHARS_MAX
from tests.support.gateway_harness import Exchange, Keys, rest, running_exchange
from tests.support.operator import gx_funds

from .conftest import run

pytestmark = pytest.mark.timeout(180)

IBAN = "DE89 3704 0044 0532 0130 00"


async def _balances(ex: Exchange, keys: Keys) -> dict[str, Decimal]:
    body = (await rest(ex, "GET", "/api/v1/balances", keys)).json()
    return {k: Decimal(v) for k, v in body.items() if k != "account"}


async def _listed(ex: Exchange, keys: Keys, kind: str, count: int) -> list[dict[str, Any]]:
    """The account's deposits or withdrawals once settlement has written `count` of them."""

    async def rows() -> list[dict[str, Any]] | None:
        found = (await rest(ex, "GET", f"/api/v1/{kind}", keys)).json()[kind]
        return found if len(found) >= count else None

    for _ in range(600):  # settlement runs nicer and lags on a loaded machine: up to 30 s
        found = await rows()
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{kind}: fewer than {count} within 30 s")


def test_withdrawals_wait_for_the_operator_and_deposits_count_once(broker, dsn):
    async def scenario() -> None:
        async with running_exchange(broker, dsn) as ex:
            trader = ex.keys["trader"]
            start = await _balances(ex, trader)
            assert start["pending"] == 0

            async def withdraw(body: Any, keys: Keys = trader) -> tuple[int, dict[str, Any]]:
                answer = await rest(ex, "POST", "/api/v1/withdrawals", keys, body)
                return answer.status_code, answer.json()

            status, first = await withdraw({"amount": "600000.00", "destination": IBAN})
            assert status == 200, first
            w1 = first["withdrawal"]
            assert (w1["amount"], w1["destination"], w1["status"]) == (
                "600000.000000",
                IBAN,
                "pending",
            )
            held = await _balances(ex, trader)
            assert held["available"] == start["available"] - 600_000
            assert held["pending"] == 600_000

            # Every refusal: a stable code, and the balances as they were.
            read_only = await ex.gateway.keys.create(trader.account, ("read", "trade"))
            no_scope = Keys(read_only[0].key_id, read_only[1], trader.account)
            refused = [
                ({"amount": "500000.00", "destination": IBAN}, "INSUFFICIENT_CASH", trader),
                ({"amount": "1000000.000001", "destination": IBAN}, "WITHDRAWAL_LIMIT", trader),
                ({"amount": "1", "destination": IBAN}, "FORBIDDEN", no_scope),
                ({"amount": "abc", "destination": IBAN}, "BAD_REQUEST", trader),
                ({"amount": "0", "destination": IBAN}, "BAD_REQUEST", trader),
                ({"amount": "-5", "destination": IBAN}, "BAD_REQUEST", trader),
                ({"amount": "0.0000001", "destination": IBAN}, "BAD_REQUEST", trader),
                ({"amount": "1", "destination": ""}, "BAD_REQUEST", trader),
                ({"amount": "1", "destination": "x" * (DESTINATION_CHARS_MAX + 1)}, "BAD_REQUEST", trader),
                ({"amount": "1", "destination": "line\nbreak"}, "BAD_REQUEST", trader),
                ({"amount": 1, "destination": IBAN}, "BAD_REQUEST", trader),
                ({"amount": "1", "destination": IBAN, "priority": "high"}, "BAD_REQUEST", trader),
            ]  # fmt: skip
            for body, code, keys in refused:
                status, answer = await withdraw(body, keys)
                assert status != 200 and answer["error"]["code"] == code, (body, answer)
            assert await _balances(ex, trader) == held

            # The operator approves the first: the money leaves.
            status, approved, err = await gx_funds(broker, "approve", str(w1["id"]))
            assert status == 0, err
            assert approved == {
                "status": "approved", "withdrawal_id": w1["id"],
                "account": trader.account, "amount": "600000.000000",
            }  # fmt: skip
            await ex.wait_for(
                lambda: ex.gateway.accounts.balances(trader.account)["pending"] == "0.000000"
            )
            paid = await _balances(ex, trader)
            assert paid["available"] == start["available"] - 600_000 and paid["pending"] == 0
            status, again, _ = await gx_funds(broker, "approve", str(w1["id"]))
            assert (status, again["code"]) == (1, "UNKNOWN_WITHDRAWAL")

            # A second, rejected: the money returns to available.
            status, second = await withdraw({"amount": "250.50", "destination": IBAN})
            assert status == 200
            w2 = second["withdrawal"]
            status, rejected, err = await gx_funds(broker, "reject", str(w2["id"]))
            assert (status, rejected["status"]) == (0, "rejected"), err
            await ex.wait_for(
                lambda: ex.gateway.accounts.balances(trader.account)["pending"] == "0.000000"
            )
            assert await _balances(ex, trader) == paid

            listed = await _listed(ex, trader, "withdrawals", 2)
            by_id = {w["id"]: w for w in listed}
            assert by_id[w1["id"]]["status"] == "completed"
            assert by_id[w2["id"]]["status"] == "rejected"
            assert by_id[w2["id"]]["amount"] == "250.500000"

            # Deposits: a reference is credited once, however often the operator runs it.
            args = ("deposit", "--account", str(trader.account), "--amount", "1234.56",
                    "--reference", "BANK-2026-12-03-0042")  # fmt: skip
            status, credited, err = await gx_funds(broker, *args)
            assert (status, credited["status"], credited["amount"]) == (
                0,
                "credited",
                "1234.560000",
            ), err
            status, repeated, err = await gx_funds(broker, *args)
            assert (status, repeated["status"]) == (0, "already_credited"), err
            status, bad, err = await gx_funds(
                broker, "deposit", "--account", "1", "--amount", "1.0000001", "--reference", "x"
            )
            assert status == 2 and "amount" in err
            status, unknown, _ = await gx_funds(
                broker, "deposit", "--account", "99999999", "--amount", "1", "--reference", "y"
            )
            assert (status, unknown["code"]) == (1, "UNKNOWN_ACCOUNT")
            deposits = await _listed(ex, trader, "deposits", 2)
            referenced = [d for d in deposits if d["reference"] == "BANK-2026-12-03-0042"]
            assert len(referenced) == 1 and referenced[0]["amount"] == "1234.560000"
            assert referenced[0]["status"] == "completed"
            await ex.wait_for(
                lambda: (
                    ex.gateway.accounts.balances(trader.account)["available"]
                    == f"{paid['available'] + Decimal('1234.56'):.6f}"
                )
            )
            # Another account sees none of it.
            other = (await rest(ex, "GET", "/api/v1/withdrawals", ex.keys["maker"])).json()
            assert other == {"withdrawals": []}

    run(scenario(), 170)
