"""`gx sandbox`: the whole exchange embedded, with demo keys and bots, started and stopped cleanly.

Two scenarios: the sandbox in-process with bots (page, demo keys that sign, trades and depth
made by the bots through the gateway, providers' withdrawals settled and a drained buyer topped
up by the sandbox's operator, an audit without violations, and nothing left running after the
stop), and `gx sandbox --no-bots` as a subprocess stopped by SIGINT (exit status 0, PostgreSQL
gone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from exchange.cli.gx import build_parser
from exchange.client import Client, Transfer
from exchange.sandbox.operator import TOPUP_FLOOR_PERCENT
from exchange.sandbox.run import (
    DEMO_PROVIDER_ACCOUNT,
    DEMO_TRADER_ACCOUNT,
    Sandbox,
    SandboxOptions,
    run_sandbox,
)
from schemas import commands as c
from schemas import events as e
from schemas.units import usd_to_micros
from streams.embedded.postgres import process_alive
from tests.support.waiting import until

from .conftest import run

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]
START_WAIT_S = 120.0  # a cold Numba compile included
MARKET_WAIT_S = 40.0  # the bots' first trades and quotes
STOP_WAIT_S = 60.0
_PG_LINE = re.compile(r"PostgreSQL: private cluster on \S+ \(pid (\d+), (\S+)\)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children(pid: int) -> set[int]:
    """The live processes whose parent is `pid` (zombies excluded)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                found.add(int(entry.name))
    return found


def _processes_mentioning(text: str) -> list[int]:
    """The live processes whose command line contains `text` (a data directory, say)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    if process_alive(int(entry.name)):
                        found.append(int(entry.name))
    return found


def test_sandbox_with_bots_serves_page_demo_keys_and_a_trading_market() -> None:
    before = _children(os.getpid())
    out = io.StringIO()

    async def scenario() -> tuple[Sandbox, int | None, str]:
        stop = asyncio.Event()
        ready: asyncio.Future[Sandbox] = asyncio.get_running_loop().create_future()
        options = SandboxOptions(
            port=0, seed=5, status_interval_s=5.0, audit_interval_s=8.0, operator_interval_s=0.5
        )
        running = asyncio.create_task(
            run_sandbox(options, stop, out=out, ready=lambda s: ready.set_result(s))
        )
        try:
            sandbox = await asyncio.wait_for(asyncio.shield(ready), START_WAIT_S)
            pg_pid, data_dir = sandbox.postgres_pid, str(sandbox.postgres_dir)
            assert pg_pid is not None and process_alive(pg_pid)
            async with httpx.AsyncClient(base_url=sandbox.url, timeout=10) as http:
                await _check_page_and_keys(http, sandbox)
                symbol = await _check_trades(http, sandbox)
                await _check_depth(http, symbol)
            await _check_withdrawals(sandbox)
            await _check_topup(sandbox)

            async def audited() -> bool:
                return "audit: ok" in out.getvalue()

            await until(audited, MARKET_WAIT_S, "a clean audit", interval_s=0.5)
            assert "violations in" not in out.getvalue()
            assert sandbox.bots is not None and sandbox.bots.stats.crashes == 0
            assert sandbox.operator is not None and sandbox.operator.stats.crashes == 0
        finally:
            stop.set()
            await asyncio.wait_for(running, STOP_WAIT_S)
        return sandbox, pg_pid, data_dir

    sandbox, pg_pid, data_dir = run(scenario(), START_WAIT_S + 3 * MARKET_WAIT_S)
    text = out.getvalue()
    assert "gx sandbox ready in" in text and "gx sandbox: stopped" in text
    assert sandbox.stack is None and sandbox.broker is None and sandbox.postgres is None
    assert pg_pid is not None and not process_alive(pg_pid)
    assert not Path(data_dir).exists()
    assert _processes_mentioning(data_dir) == []
    assert _children(os.getpid()) <= before


async def _check_page_and_keys(http: httpx.AsyncClient, sandbox: Sandbox) -> None:
    page = await http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    demo = (await http.get("/sandbox/demo.json")).json()
    # A page that rebound its own name to 127.0.0.1 asks with that name as Host: refused.
    rebound = await http.get("/sandbox/demo.json", headers={"Host": "attacker.example:8080"})
    assert rebound.status_code == 403 and "secret" not in rebound.text
    assert rebound.json()["error"]["code"] == "FORBIDDEN"
    assert demo["trader"]["account"] == DEMO_TRADER_ACCOUNT
    assert demo["provider"]["account"] == DEMO_PROVIDER_ACCOUNT
    for name in ("trader", "provider"):
        keys = demo[name]
        async with Client(sandbox.url, keys["key"], keys["secret"]) as client:
            balance = await client.fetch_balance()  # a signed GET /api/v1/balances
        assert balance.available == 1_000_000


async def _check_trades(http: httpx.AsyncClient, sandbox: Sandbox) -> str:
    """Return a symbol the bots have traded, read from the public trades endpoint."""
    markets = (await http.get("/api/v1/instruments")).json()["instruments"]
    assert markets, "nothing listed"
    assert sandbox.bots is not None
    quoted = [m.symbol for ms in sandbox.bots.world.quoted.values() for m in ms]
    assert quoted, "the bots quote nothing"

    async def traded() -> str | None:
        for symbol in quoted:
            trades = (await http.get(f"/api/v1/trades/{symbol}")).json()["trades"]
            if trades:
                return symbol
        return None

    symbol: str = await until(traded, MARKET_WAIT_S, "a trade printed by the bots", interval_s=0.5)
    return symbol


async def _check_depth(http: httpx.AsyncClient, symbol: str) -> None:
    async def deep() -> bool:
        book = (await http.get(f"/api/v1/book/{symbol}", params={"depth": 10})).json()
        return len(book["bids"]) >= 2 and len(book["asks"]) >= 2

    await until(deep, MARKET_WAIT_S, f"two levels a side in {symbol}", interval_s=0.5)


async def _check_withdrawals(sandbox: Sandbox) -> None:
    """A provider bot's withdrawal to its sandbox bank is paid out by the sandbox's operator."""
    assert sandbox.bots is not None and sandbox.operator is not None
    providers = [s for s in sandbox.bots.specs if s.role == "provider"]
    clients = [Client(sandbox.url, *sandbox.bots.credentials[s.name]) for s in providers]
    try:

        async def paid() -> list[Transfer]:
            found = [await client.fetch_withdrawals() for client in clients]
            return [w for ws in found for w in ws if w.status == "completed"]

        completed = await until(paid, MARKET_WAIT_S, "a provider's withdrawal paid", interval_s=0.5)
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    banks = {f"sandbox-bank-{s.account}" for s in providers}
    assert all(w.destination in banks and w.amount > 0 for w in completed)
    assert sandbox.bots.stats.withdrawals >= len(completed)
    assert sandbox.operator.stats.approved >= len(completed)


async def _check_topup(sandbox: Sandbox) -> None:
    """A buyer whose cash an operator paid out is funded again by the sandbox's operator."""
    assert sandbox.bots is not None and sandbox.operator is not None
    buyer = next(s for s in sandbox.bots.specs if s.role == "buyer")
    gateway = sandbox.operator.gateway
    available = usd_to_micros(gateway.accounts.balances(buyer.account)["available"])
    # Half the floor is left: the buyer may hold some for an order meanwhile.
    left = buyer.deposit_micros * TOPUP_FLOOR_PERCENT // 200
    drain = c.Withdraw(account=buyer.account, amount_micros=available - left, ref="drain")
    assert not any(isinstance(ev, e.CommandRejected) for ev in await gateway.hub.submit(drain))
    async with Client(sandbox.url, *sandbox.bots.credentials[buyer.name]) as client:

        async def topped_up() -> list[Transfer]:
            deposits = await client.fetch_deposits()
            return [d for d in deposits if d.reference.startswith("sandbox-topup-")]

        deposits = await until(topped_up, MARKET_WAIT_S, "a top-up of a drained buyer")
    assert deposits[0].reference == f"sandbox-topup-{buyer.account}-1"
    assert deposits[0].status == "completed" and deposits[0].amount > 0
    assert sandbox.operator.stats.topped_up >= 1


def test_gx_sandbox_no_bots_stops_cleanly_on_sigint() -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GX_")}
    env["PYTHONUNBUFFERED"] = "1"
    child = subprocess.Popen(
        [*_sandbox_command(), "--no-bots", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        pg_pid, data_dir, url = _read_until_ready(child, lines)
        assert url == f"http://127.0.0.1:{port}/"
        assert httpx.get(url, timeout=10).status_code == 200
        child.send_signal(signal.SIGINT)
        child.wait(timeout=STOP_WAIT_S)  # the output after the banner is a few lines
        assert child.stdout is not None
        lines.append(child.stdout.read())  # read() keeps what readline() buffered
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    output = "".join(lines)
    assert child.returncode == 0, output
    assert "bots           off (--no-bots)" in output
    assert "SIGINT: stopping" in output and "gx sandbox: stopped" in output
    assert not process_alive(pg_pid)
    assert not Path(data_dir).exists()
    assert _processes_mentioning(data_dir) == []


def _sandbox_command() -> list[str]:
    """`gx sandbox` once the `gx` command line registers it, else its module directly."""
    subcommands = next(
        (a.choices for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)),
        {},
    )
    if "sandbox" in subcommands:
        return [sys.executable, "-m", "exchange.cli.gx", "sandbox"]
    return [sys.executable, "-m", "exchange.cli.sandbox"]


def _read_until_ready(child: subprocess.Popen[str], lines: list[str]) -> tuple[int, str, str]:
    """Read the sandbox's output up to its page URL; return PostgreSQL's pid and dir, the URL."""
    assert child.stdout is not None
    deadline = time.monotonic() + START_WAIT_S
    pg: tuple[int, str] | None = None
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = _PG_LINE.search(line)
        if found:
            pg = (int(found.group(1)), found.group(2))
        if "market page" in line:
            assert pg is not None, "".join(lines)
            return pg[0], pg[1], line.split()[-1]
    raise AssertionError("gx sandbox did not print its URL:\n" + "".join(lines))
