"""`gx bench soak`: the sandbox under sustained load; throughput, latency, memory and the audit.

The sandbox (`gx sandbox --no-bots`: embedded broker and private PostgreSQL) runs as a child
process, as a user runs it; this process drives it through the SDK (exchange.client) over
HTTP and WebSocket, as the users' programs do:
- `TRADER_LOOPS` trader sessions place a resting bid and cancel it, together `--rate` orders
  per second (each placement's submit-to-answer time is one round-trip sample);
- a fill step every `fill_every`-th order: the provider sells one lot, the trader buys it
  (IOC), so the provider goes short against its streamed capacity (re-posted every
  `capacity_interval_s`) and each hour's shorts become deliveries;
- the provider's agent answers every provisioning request (confirm at the start): requests
  come only when the run crosses the start of an hour the trader bought (`delivery_symbol`),
  so the sandbox runs with a `gate_closure_lead_s` short lead to keep that hour tradable
  until just before its start;
- a deposit every `deposit_interval_s` through the operator's funds path (`gx funds deposit`'s
  `submit`) and a withdrawal request every `withdrawal_interval_s`, which the sandbox's
  operator approves or rejects;
- `--subscribers` WebSocket subscribers in a process of their own (exchange/bench/soak_clients.py)
  on the traded books and trades, each checking that every sequence continues (`gaps`);
- the audit (`streams.audit.audit`, what `gx audit` runs) every `audit_interval_s` from the
  previous run's checkpoint (the embedded broker keeps only the newest few MiB of a partition,
  so one replay from the start at the end could find the start gone), and once more at the end,
  after the load stopped.

Memory: resident memory (VmRSS less shared memory, `_rss_kib`) of every process (the sandbox,
its broker, PostgreSQL's processes, the subscribers' process and this one) at the start of the
load, at the end of the warm-up (`max(60 s, 10 %)` of the run, at most half of it) and at the
end. `rss_growth_after_warmup_pct` compares the end with the warm-up over the processes alive
at both, but the broker; `memory_flat` is that growth within `memory_flat_pct_max`. The broker
(librdkafka's mock, a child of the sandbox) is reported on its own: it holds the log in memory,
the newest few MiB of every partition, so it grows until each partition is full
(`broker_rss_growth_after_warmup_pct`), where Kafka would keep the log on disk.

`rss_series_kib` adds the total and the sandbox's RSS every `memory_series_interval_s`.

Exits 1 when the audit found a violation, a subscriber saw a gap, was told to resync (the
gateway dropped its pushes) or was closed before the end, or no order was answered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import orjson
import uvloop

from exchange.bench.report import Report, add_benchmark, print_report, table
from exchange.cli.funds import submit
from exchange.client import (
    Client,
    GatewayError,
    Market,
    NetworkError,
    ProviderAgent,
    ProvisionRequest,
    ProvisionResult,
)
from schemas import commands as c
from schemas.catalog import load_catalog
from schemas.units import NS_PER_HOUR, NS_PER_SECOND
from streams.audit import Checkpoint, audit
from streams.settings import Settings, load_settings

__all__ = ["register", "run", "bench_soak"]

MINUTES_DEFAULT = 30.0
RATE_DEFAULT = 20  # orders per second, all trader loops together
SUBSCRIBERS_DEFAULT = 200
TRADER_LOOPS = 4
fill_every = 10  # one fill step per this many placed orders
book_symbols_count = 4  # hourly instruments that start after the run: their books stay open
gate_closure_lead_s = 60
delivery_margin_s = 5  # no order on the delivery hour this close to its gate closure
capacity_gpus = 2000  # per hour of the book symbols: more than the run's fills
capacity_interval_s = 30.0
deposit_interval_s = 5.0
deposit_micros = 1_000 * 1_000_000
withdrawal_interval_s = 5.0
withdrawal_usd = "1.00"
withdrawals_listed_max = 1000  # the gateway's page limit: the newest this many are counted
audit_interval_s = 60.0
warmup_s_min = 60.0
warmup_fraction = 0.1
memory_flat_pct_max = 10.0
memory_series_interval_s = 60.0
sandbox_ready_wait_s = 240.0  # a cold Numba compile of the engine's kernels included
subscribers_ready_wait_s = 90.0
sandbox_stop_wait_s = 60.0
settle_s = 3.0  # after the load, before the last audit: the stages catch up
final_audit_tries = 5
request_timeout_s = 30.0
ACCESS_HOST, ACCESS_PORT, ACCESS_USER = "gpu-1.soak.example", 22, "gx"
_AUDIT_LINE = re.compile(r"audit: (ok|\d+ violations|could not run)")


def register(bench_subparsers: argparse._SubParsersAction) -> None:
    """Add `soak` to the `gx bench` group."""
    p = add_benchmark(
        bench_subparsers, "soak", "the sandbox under sustained load: memory and audit", __doc__
    )
    p.add_argument("--minutes", type=float, default=MINUTES_DEFAULT, help="minutes of load")
    p.add_argument("--seconds", type=float, help=argparse.SUPPRESS)  # tests: a short run
    p.add_argument("--rate", type=int, default=RATE_DEFAULT, help="orders per second")
    p.add_argument("--subscribers", type=int, default=SUBSCRIBERS_DEFAULT)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Run the soak; print its figures; return 1 when the audit or a subscriber failed."""
    duration_s = args.seconds if args.seconds is not None else args.minutes * 60
    if duration_s <= 0:
        raise SystemExit(f"--minutes: expected > 0, found {args.minutes}")
    if args.rate < TRADER_LOOPS:
        raise SystemExit(f"--rate: expected >= {TRADER_LOOPS}, found {args.rate}")
    if args.subscribers < 0:
        raise SystemExit(f"--subscribers: expected >= 0, found {args.subscribers}")
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("gx").setLevel(logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    report = bench_soak(duration_s, args.rate, args.subscribers)
    if args.json:
        print_report(report, True)
    else:
        print(_human(report))
    failed = (
        not report["audit_clean"]
        or report["gaps"] > 0
        or report["subscribers_closed_early"] > 0  # a closed subscriber sees no gap
        or report["subscriber_resyncs"] > 0  # the gateway dropped a subscriber's pushes
        or report["orders"] == 0
    )
    return 1 if failed else 0


def _human(report: Report) -> str:
    """The figures as a table, then one line per process: RSS at start, warm-up and end."""
    lines = [table({k: v for k, v in report.items() if k != "processes"}), ""]
    lines.append(f"{'process':<40} {'pid':>8} {'start MiB':>10} {'warm MiB':>10} {'end MiB':>10}")
    for p in report.get("processes", []):
        sizes = [
            "-" if p[f"rss_{n}_kib"] is None else f"{p[f'rss_{n}_kib'] / 1024:.1f}"
            for n in ("start", "warm", "end")
        ]
        lines.append(
            f"{p['label'][:40]:<40} {p['pid']:>8} {sizes[0]:>10} {sizes[1]:>10} {sizes[2]:>10}"
        )
    return "\n".join(lines)


def _progress(text: str) -> None:
    print(f"gx bench soak: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- memory


def _rss_kib(pid: int) -> int | None:
    """VmRSS without RssShmem: PostgreSQL's shared buffers are one preallocated segment
    (`shared_buffers`) whose pages count in a backend's VmRSS as it first touches them, so
    VmRSS grows for an hour under any load while no memory is allocated."""
    fields: dict[bytes, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as file:
            for line in file:
                if line.startswith((b"VmRSS:", b"RssShmem:")):
                    fields[line.split(b":")[0]] = int(line.split()[1])
    except (OSError, ValueError):
        return None
    return fields.get(b"VmRSS", 0) - fields.get(b"RssShmem", 0)  # a zombie has neither line


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _label(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "gone"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    if text.startswith("postgres:"):  # a PostgreSQL process names its role in its title
        title = text.removeprefix("postgres:").strip()
        return "postgres backend" if "(" in title else f"postgres {title}"
    if "streams.embedded.broker_process" in text:
        return "broker"
    if "exchange.cli.sandbox" in text:
        return "sandbox"
    if "exchange.bench.soak_clients" in text:
        return "subscribers"
    if "postgres" in text.split(" ")[0] or " -D " in text:
        return "postgres postmaster"
    return Path(argv[0].decode(errors="replace")).name or "?"


def _tree(roots: list[int]) -> list[int]:
    seen: list[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo += _children(pid)
    return seen


class _Memory:
    """RSS samples of a set of process trees, by process id."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.labels: dict[int, str] = {}
        self.samples: dict[str, dict[int, int]] = {}
        self.series: list[list[int | None]] = []  # [seconds into the load, total, sandbox]

    def sample(self, name: str) -> int:
        """Record every process's RSS under `name`; return their total in KiB."""
        taken: dict[int, int] = {}
        for pid in _tree(self.roots):
            rss = _rss_kib(pid)
            if rss is None:
                continue
            taken[pid] = rss
            if pid not in self.labels:
                self.labels[pid] = "bench" if pid == os.getpid() else _label(pid)
        self.samples[name] = taken
        return sum(taken.values())

    def point(self, t_s: float) -> None:
        """Add the total and the sandbox's RSS now to the series (a trend, not per process)."""
        pids = _tree(self.roots)
        total = sum(r for p in pids if (r := _rss_kib(p)) is not None)
        sandbox = next((p for p, label in self.labels.items() if label == "sandbox"), None)
        sandbox_kib = _rss_kib(sandbox) if sandbox is not None else None
        self.series.append([round(t_s), total, sandbox_kib])

    def report(self) -> dict[str, Any]:
        start = self.samples.get("start", {})
        warm = self.samples.get("warm", {})
        end = self.samples.get("end", {})
        processes = []
        for pid, label in self.labels.items():
            row: dict[str, Any] = {"pid": pid, "label": label}
            for name, taken in (("start", start), ("warm", warm), ("end", end)):
                row[f"rss_{name}_kib"] = taken.get(pid)
            if pid in warm and pid in end and warm[pid]:
                row["growth_after_warmup_pct"] = round(100 * (end[pid] - warm[pid]) / warm[pid], 1)
            processes.append(row)
        both = [pid for pid in warm if pid in end and self.labels[pid] != "broker"]
        warm_kib = sum(warm[p] for p in both)
        end_kib = sum(end[p] for p in both)
        growth = 100 * (end_kib - warm_kib) / warm_kib if warm_kib else 0.0
        sandbox = [p for p in both if self.labels[p] == "sandbox" and warm[p]]
        sandbox_growth = (
            100 * (end[sandbox[0]] - warm[sandbox[0]]) / warm[sandbox[0]] if sandbox else None
        )
        broker = [p for p in warm if p in end and self.labels[p] == "broker" and warm[p]]
        broker_growth = (
            100 * (end[broker[0]] - warm[broker[0]]) / warm[broker[0]] if broker else None
        )
        return {
            "rss_start_kib": sum(start.values()),
            "rss_warm_kib": warm_kib,
            "rss_end_kib": end_kib,
            "rss_growth_after_warmup_pct": round(growth, 1),
            "sandbox_rss_growth_after_warmup_pct": (
                None if sandbox_growth is None else round(sandbox_growth, 1)
            ),
            "broker_rss_growth_after_warmup_pct": (
                None if broker_growth is None else round(broker_growth, 1)
            ),
            "memory_flat": growth <= memory_flat_pct_max,
            "rss_series_kib": self.series,
            "processes": processes,
        }


# ---------------------------------------------------------------------- the sandbox child


class _SandboxChild:
    """`gx sandbox --no-bots` in a child process; `info` is what its ready file says."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ready_file = workdir / "sandbox.json"
        self.log_path = workdir / "sandbox.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    async def start(self) -> dict[str, Any]:
        env = dict(os.environ)
        env.setdefault("GX_LOG_LEVEL", "warning")
        command = [
            sys.executable, "-m", "exchange.cli.sandbox", "--no-bots", "--port", "0",
            "--gate-closure-lead-s", str(gate_closure_lead_s),
            "--ready-file", str(self.ready_file),
        ]  # fmt: skip
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + sandbox_ready_wait_s
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"the sandbox exited ({self.process.returncode}):\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox not ready in {sandbox_ready_wait_s:g} s")
            await asyncio.sleep(0.2)
        self.info = orjson.loads(self.ready_file.read_bytes())
        return self.info

    def check(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the sandbox exited ({self.process.returncode}):\n{self.log()}")

    def log(self, tail_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail_chars:]
        except OSError:
            return ""

    def audits(self) -> dict[str, int]:
        """The sandbox's own periodic audits, from its status lines."""
        found = _AUDIT_LINE.findall(self.log(tail_chars=10**8))
        return {
            "sandbox_audits_ok": sum(1 for f in found if f == "ok"),
            "sandbox_audits_failed": sum(1 for f in found if f != "ok"),
        }

    async def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.process.wait, sandbox_stop_wait_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return await asyncio.to_thread(self.process.wait)


# ---------------------------------------------------------------------- the load


class _Stats:
    def __init__(self) -> None:
        self.placed_ns: list[int] = []
        self.cancel_ns: list[int] = []
        self.orders = 0
        self.cancels = 0
        self.fills = 0
        self.fills_by_symbol: dict[str, int] = {}
        self.order_errors = 0
        self.behind = 0  # loop steps that started late (the load did not keep the rate)
        self.deposits = 0
        self.deposit_errors = 0
        self.withdrawals_requested = 0
        self.withdrawal_errors = 0
        self.capacity_posts = 0
        self.provisioning_requests = 0
        self.provisioning_confirmed = 0
        self.audits = 0
        self.audit_events = 0
        self.audit_violations = 0
        self.audit_errors: list[str] = []
        self.audit_ledger_compared = False
        self.last_errors: list[str] = []

    def error(self, what: str, error: BaseException) -> None:
        if len(self.last_errors) < 10:
            self.last_errors.append(f"{what}: {error!r}"[:300])


def _tick(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.001")))


class _Load:
    def __init__(self, info: dict[str, Any], rate: int, stats: _Stats, settings: Settings) -> None:
        self.info = info
        self.rate = rate
        self.stats = stats
        self.settings = settings
        self.catalog = load_catalog()
        self.gpu = self.catalog.gpus[0].model  # the model and region of the demo provider
        self.region = self.catalog.regions[0]
        self.stop = asyncio.Event()
        self.book_symbols: list[str] = []
        self.delivery_symbol: str | None = None
        self.delivery_gate_close_ns = 0
        self.bid: dict[str, str] = {}
        self.ask: dict[str, str] = {}
        self.checkpoint: Checkpoint | None = None

    def client(self, name: str) -> Client:
        key = self.info["demo_keys"][name]
        return Client(self.info["url"], key["key"], key["secret"], timeout_s=request_timeout_s)

    def pick(self, markets: list[Market], duration_s: float) -> None:
        """The books (hours starting after the run) and the delivery hour (starting within)."""
        now_ns = time.time_ns()
        end_ns = now_ns + int(duration_s * NS_PER_SECOND)
        hourly = sorted(
            (m for m in markets if m.gpu == self.gpu and m.region == self.region
             and m.product == "1h"),
            key=lambda m: m.start_ns,
        )  # fmt: skip
        later = [m for m in hourly if m.start_ns > end_ns + NS_PER_HOUR]
        if len(later) < book_symbols_count:
            raise RuntimeError(f"listing: fewer than {book_symbols_count} hours after the run")
        chosen = later[:book_symbols_count]
        soon = [m for m in hourly if now_ns < m.gate_close_ns and m.start_ns < end_ns]
        if soon:
            chosen.append(soon[0])
            self.delivery_symbol = soon[0].symbol
            self.delivery_gate_close_ns = soon[0].gate_close_ns
        for m in chosen:
            low, high = m.price_band_min, m.price_band_max
            if low is None or high is None:
                raise RuntimeError(f"{m.symbol}: no price band")
            self.bid[m.symbol] = _tick(low)
            self.ask[m.symbol] = _tick((low + high) / 2)
        self.book_symbols = [m.symbol for m in chosen if m.symbol != self.delivery_symbol]

    async def paced(self, interval_s: float, step: Any) -> None:
        """Run `step()` every `interval_s` until stop; a late start counts as behind."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while not self.stop.is_set():
            await step()
            next_at += interval_s
            wait_s = next_at - loop.time()
            if wait_s < 0:
                self.stats.behind += 1
                next_at = loop.time()
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), wait_s)

    async def trader(self, index: int, trader: Client, provider: Client) -> None:
        stats = self.stats
        count = 0

        async def step() -> None:
            nonlocal count
            count += 1
            symbols = self.book_symbols
            closing_ns = self.delivery_gate_close_ns - delivery_margin_s * NS_PER_SECOND
            if self.delivery_symbol is not None and time.time_ns() < closing_ns:
                symbols = [*symbols, self.delivery_symbol]
            symbol = symbols[(count + index) % len(symbols)]
            try:
                if count % fill_every == 0:
                    # by the fill's own count: `count + index` is the same symbol every time
                    fill_symbol = symbols[(count // fill_every + index) % len(symbols)]
                    await self.fill(fill_symbol, trader, provider)
                    return
                t0 = time.perf_counter_ns()
                placed = await trader.create_order_ws(
                    symbol, "limit", "buy", 1, self.bid[symbol], {"post_only": True}
                )
                stats.placed_ns.append(time.perf_counter_ns() - t0)
                stats.orders += 1
                if placed.order.status != "new":
                    return
                t1 = time.perf_counter_ns()
                await trader.cancel_order_ws(placed.order.order_id)
                stats.cancel_ns.append(time.perf_counter_ns() - t1)
                stats.cancels += 1
            except (GatewayError, NetworkError, TimeoutError) as error:
                stats.order_errors += 1
                stats.error("order", error)

        await self.paced(TRADER_LOOPS / self.rate, step)

    async def fill(self, symbol: str, trader: Client, provider: Client) -> None:
        """The provider sells one lot, the trader buys it: a trade and a short to deliver."""
        await provider.create_order_ws(symbol, "limit", "sell", 1, self.ask[symbol])
        t0 = time.perf_counter_ns()
        bought = await trader.create_order_ws(
            symbol, "limit", "buy", 1, self.ask[symbol], {"tif": "ioc"}
        )
        self.stats.placed_ns.append(time.perf_counter_ns() - t0)
        self.stats.orders += 2
        self.stats.fills += len(bought.fills)
        by_symbol = self.stats.fills_by_symbol
        by_symbol[symbol] = by_symbol.get(symbol, 0) + len(bought.fills)

    async def capacity(self, agent: ProviderAgent) -> None:
        start_ns = time.time_ns() // NS_PER_HOUR * NS_PER_HOUR

        async def step() -> None:
            try:
                await agent.update_capacity(
                    self.gpu, self.region, start_ns, start_ns + 72 * NS_PER_HOUR, capacity_gpus
                )
                self.stats.capacity_posts += 1
            except (GatewayError, NetworkError, TimeoutError) as error:
                self.stats.error("capacity", error)

        await self.paced(capacity_interval_s, step)

    async def provision(self, request: ProvisionRequest) -> ProvisionResult | None:
        self.stats.provisioning_requests += 1
        if request.stage != "start":
            return None
        self.stats.provisioning_confirmed += 1
        return ProvisionResult.confirm(ACCESS_HOST, ACCESS_PORT, ACCESS_USER)

    async def deposits(self) -> None:
        account = self.info["demo_keys"]["trader"]["account"]
        run_ref = time.time_ns()

        async def step() -> None:
            deposit = c.Deposit(
                ts_init=time.time_ns(),
                account=account,
                amount_micros=deposit_micros,
                ref=f"soak-{run_ref}-{self.stats.deposits + self.stats.deposit_errors}",
            )
            try:
                await submit(self.settings, deposit, True, request_timeout_s)
                self.stats.deposits += 1
            except Exception as error:  # counted and shown: the load goes on
                self.stats.deposit_errors += 1
                self.stats.error("deposit", error)

        await self.paced(deposit_interval_s, step)

    async def withdrawals(self, trader: Client) -> None:
        async def step() -> None:
            try:
                await trader.withdraw(withdrawal_usd, "soak-bank-account")
                self.stats.withdrawals_requested += 1
            except (GatewayError, NetworkError, TimeoutError) as error:
                self.stats.withdrawal_errors += 1
                self.stats.error("withdrawal", error)

        await self.paced(withdrawal_interval_s, step)

    async def audit_once(self) -> bool:
        """Audit the events since the last clean cut; return whether the cut was clean."""
        report, auditor, ends = await audit(
            self.settings,
            self.info["bootstrap"],
            self.info["dsn"],
            checkpoint=self.checkpoint,
            check_crcs=False,  # the mock broker's transaction markers carry CRC 0
        )
        stats = self.stats
        stats.audits += 1
        stats.audit_events += report.events
        stats.audit_violations += report.violations_total
        stats.audit_ledger_compared = report.ledger_compared
        for violation in report.violations[:3]:
            stats.audit_errors.append(f"{violation.kind}: {violation.message}"[:300])
        clean_cut = not any("does not balance yet" in w for w in report.warnings)
        if clean_cut:
            self.checkpoint = auditor.checkpoint(ends)
        return clean_cut

    async def audits(self) -> None:
        async def step() -> None:
            try:
                await self.audit_once()
            except Exception as error:  # a read timeout: shown, and the next run covers it
                self.stats.error("audit", error)

        with contextlib.suppress(TimeoutError):  # the first run after one interval
            await asyncio.wait_for(self.stop.wait(), audit_interval_s)
        await self.paced(audit_interval_s, step)


async def _subscribers(
    ws_url: str, symbols: list[str], count: int, out_path: Path
) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exchange.bench.soak_clients", ws_url, ",".join(symbols),
        str(count), str(out_path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), subscribers_ready_wait_s)
    if line.strip() != b"ready":
        raise RuntimeError(f"the subscribers did not start: {line!r}")
    return child


def bench_soak(duration_s: float, rate: int, subscribers: int) -> Report:
    """Start the sandbox, load it for `duration_s`, audit it; return the figures."""
    workdir = Path(tempfile.mkdtemp(prefix="gx-bench-soak-"))
    try:
        return uvloop.run(_bench(workdir, duration_s, rate, subscribers))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _bench(workdir: Path, duration_s: float, rate: int, subscribers: int) -> Report:
    sandbox = _SandboxChild(workdir)
    stats = _Stats()
    report: Report = {}
    _progress("starting the sandbox")
    try:
        info = await sandbox.start()
        settings = msgspec.structs.replace(
            load_settings(), kafka_bootstrap=info["bootstrap"], database_url=info["dsn"]
        )
        load = _Load(info, rate, stats, settings)
        report = await _drive(load, sandbox, workdir, duration_s, subscribers)
    finally:
        stopped = await sandbox.stop()
        report["sandbox_exit_status"] = stopped
    return report


async def _drive(
    load: _Load, sandbox: _SandboxChild, workdir: Path, duration_s: float, subscribers: int
) -> Report:
    stats = load.stats
    traders = [load.client("trader") for _ in range(TRADER_LOOPS)]
    provider = load.client("provider")
    subscribers_out = workdir / "subscribers.json"
    child: asyncio.subprocess.Process | None = None
    tasks: list[asyncio.Task[Any]] = []
    try:
        load.pick(await traders[0].fetch_markets(), duration_s)
        agent = ProviderAgent(provider)
        await agent.update_capacity(
            load.gpu,
            load.region,
            time.time_ns() // NS_PER_HOUR * NS_PER_HOUR,
            time.time_ns() // NS_PER_HOUR * NS_PER_HOUR + 72 * NS_PER_HOUR,
            capacity_gpus,
        )
        watched = load.book_symbols + ([load.delivery_symbol] if load.delivery_symbol else [])
        if subscribers:
            _progress(f"connecting {subscribers} subscribers")
            child = await _subscribers(load.info["ws_url"], watched, subscribers, subscribers_out)
        memory = _Memory([load.info["pid"], os.getpid()] + _postgres_root(load.info))
        memory.sample("start")
        warmup_s = min(max(warmup_s_min, warmup_fraction * duration_s), duration_s / 2)
        _progress(
            f"load for {duration_s:g} s ({load.rate} orders/s, warm-up {warmup_s:g} s) on "
            f"{', '.join(watched)}"
        )
        t0 = time.monotonic()
        tasks = [asyncio.create_task(agent.run(load.provision))]
        paced = [load.trader(i, t, provider) for i, t in enumerate(traders)]
        paced += [
            load.capacity(agent),
            load.deposits(),
            load.withdrawals(traders[0]),
            load.audits(),
        ]
        tasks += [asyncio.create_task(p) for p in paced]
        warm_taken = False
        orders_at_warm = 0
        next_point_s = 0.0
        while (elapsed := time.monotonic() - t0) < duration_s:
            await asyncio.sleep(min(1.0, duration_s - elapsed))
            sandbox.check()
            for task in tasks:
                if task.done():
                    task.result()  # a loop that ended by itself: raise what ended it
            if elapsed >= next_point_s:
                memory.point(elapsed)
                next_point_s += memory_series_interval_s
            if not warm_taken and elapsed >= warmup_s:
                memory.sample("warm")
                warm_taken, orders_at_warm = True, stats.orders
                _progress(f"warm-up done: {stats.orders} orders, {stats.fills} fills")
        load_s = time.monotonic() - t0
        memory.sample("end")
        memory.point(load_s)
        load.stop.set()
        await asyncio.wait(tasks[1:], timeout=request_timeout_s)  # the paced loops end
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        withdrawals = await traders[0].fetch_withdrawals(limit=withdrawals_listed_max)
        subscriber_counts = await _stop_subscribers(child, subscribers_out)
        child = None
        await asyncio.sleep(settle_s)
        clean_cut = False
        for _ in range(final_audit_tries):
            try:
                if await load.audit_once():
                    clean_cut = True
                    break
            except Exception as error:  # shown; the next try may read it
                stats.error("final audit", error)
            await asyncio.sleep(settle_s)
        sandbox.check()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if child is not None:
            with contextlib.suppress(Exception):
                await _stop_subscribers(child, subscribers_out)
        for client in [*traders, provider]:
            with contextlib.suppress(Exception):
                await client.close()
    return _report(
        load, memory, withdrawals, subscriber_counts, sandbox, load_s, duration_s,
        warmup_s, orders_at_warm, clean_cut, subscribers,
    )  # fmt: skip


def _postgres_root(info: dict[str, Any]) -> list[int]:
    pid = info.get("postgres_pid")
    return [int(pid)] if pid else []


async def _stop_subscribers(
    child: asyncio.subprocess.Process | None, out_path: Path
) -> dict[str, int]:
    if child is None:
        return {}
    assert child.stdin is not None
    child.stdin.close()
    await asyncio.wait_for(child.wait(), 30)
    counts: dict[str, int] = orjson.loads(out_path.read_bytes())
    return counts


def _ms(values: list[int], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.asarray(values, dtype=np.float64) / 1e6, q)), 2)


def _report(
    load: _Load,
    memory: _Memory,
    withdrawals: list[Any],
    counts: dict[str, int],
    sandbox: _SandboxChild,
    load_s: float,
    duration_s: float,
    warmup_s: float,
    orders_at_warm: int,
    clean_cut: bool,
    subscribers: int,
) -> Report:
    s = load.stats
    gaps = counts.get("conn_seq_gaps", 0) + counts.get("book_gaps", 0)
    gaps += counts.get("trade_gaps", 0)
    by_status: dict[str, int] = {}
    for w in withdrawals:
        by_status[w.status] = by_status.get(w.status, 0) + 1
    audit_clean = clean_cut and s.audits > 0 and s.audit_violations == 0
    report: Report = {
        "duration_s": round(load_s, 1),
        "duration_asked_s": duration_s,
        "warmup_s": warmup_s,
        "rate_asked_per_s": load.rate,
        "orders": s.orders,
        "orders_per_s": round(s.orders / load_s, 1),
        "orders_after_warmup": s.orders - orders_at_warm,
        "cancels": s.cancels,
        "cancels_per_s": round(s.cancels / load_s, 1),
        "fills": s.fills,
        "fills_by_symbol": s.fills_by_symbol,
        "order_errors": s.order_errors,
        "steps_behind": s.behind,
        "order_round_trip_p50_ms": _ms(s.placed_ns, 50),
        "order_round_trip_p99_ms": _ms(s.placed_ns, 99),
        "order_round_trip_max_ms": _ms(s.placed_ns, 100),
        "cancel_round_trip_p99_ms": _ms(s.cancel_ns, 99),
        "deposits": s.deposits,
        "deposit_errors": s.deposit_errors,
        "withdrawals_requested": s.withdrawals_requested,
        "withdrawal_errors": s.withdrawal_errors,
        "withdrawals_by_status": by_status,
        "capacity_posts": s.capacity_posts,
        "gate_closure_lead_s": load.info["gate_closure_lead_ns"] // NS_PER_SECOND,
        "delivery_symbol": load.delivery_symbol,
        "provisioning_requests": s.provisioning_requests,
        "provisioning_confirmed": s.provisioning_confirmed,
        "subscribers": subscribers,
        "subscribers_connected": counts.get("connected", 0),
        "subscribers_closed_early": counts.get("closed_before_end", 0),
        "subscriber_messages": counts.get("messages", 0),
        "subscriber_book_updates": counts.get("book_updates", 0),
        "subscriber_resyncs": counts.get("resyncs", 0),
        "subscriber_pings_answered": counts.get("pings", 0),
        "gaps": gaps,
        "audit_clean": audit_clean,
        "audits": s.audits,
        "audit_events": s.audit_events,
        "audit_violations": s.audit_violations,
        "audit_ledger_compared": s.audit_ledger_compared,
        "audit_final_cut_clean": clean_cut,
        "audit_first_violations": s.audit_errors[:3],
        **sandbox.audits(),
        **memory.report(),
        "errors": s.last_errors,
    }
    return report
