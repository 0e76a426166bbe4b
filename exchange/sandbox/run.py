"""`gx sandbox`: the whole exchange in one supervised process, with demo keys and a living market.

    broker (librdkafka's mock cluster, in a child process: streams/embedded/broker_process.py)
    -> PostgreSQL (private cluster) and the engine's kernels (compiled or loaded), in parallel
    -> engine, settlement, market data, provisioning, clock and gateway (exchange/stack.py)
    -> listing (the clock's first tick lists the calendar)
    -> demo accounts funded, demo API keys created, bots' accounts and keys
    -> bots (exchange/sandbox/bots.py) trading through the gateway
    -> the operator (exchange/sandbox/operator.py): approves withdrawals, tops buyers up,
       resolves disputes
    -> a status line every STATUS_INTERVAL_S, an audit every AUDIT_INTERVAL_S

Everything lives and dies with the process: the broker is its child, the database is a private
cluster in a temporary directory (or an empty `GX_DATABASE_URL`), and stopping (Ctrl-C, SIGTERM,
or the `stop` event of `run_sandbox`) stops the gateway, the bots, every stage, the broker and
PostgreSQL, in that order. The gateway's master key is `GX_GATEWAY_MASTER_KEY` or a random one;
the demo keys are printed and served to the market page on loopback (`/sandbox/demo.json`).

The audit is `streams.audit.audit` run periodically from a checkpoint of the previous run, so
each run replays only the events written since; the checkpoint advances only when the log ended
on a command boundary (a command cut at the log's end would be checked in two halves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

import asyncpg
import msgspec

from exchange.gateway.context import Gateway
from exchange.gateway.keys import check_master_key
from exchange.sandbox.bots import Bots, BotSpec, roster
from exchange.sandbox.demo import DEMO_PATH, demo_keys_route
from exchange.sandbox.operator import (
    DISPUTE_REVIEW_S,
    OPERATOR_INTERVAL_S,
    TOPUP_FLOOR_PERCENT,
    WITHDRAWAL_REJECT_PROBABILITY,
    Operator,
)
from exchange.stack import Stack, StackOptions
from matching.engine import Engine
from matching.state import EngineConfig
from schemas import commands as c
from schemas.catalog import Catalog, load_catalog
from schemas.units import NS_PER_HOUR, NS_PER_SECOND
from streams.audit import Checkpoint, audit
from streams.embedded.broker_process import BrokerProcess
from streams.embedded.postgres import EmbeddedPostgres
from streams.settings import Settings

__all__ = [
    "SandboxOptions",
    "SandboxError",
    "DemoKey",
    "SandboxStatus",
    "Sandbox",
    "run_sandbox",
    "STATUS_INTERVAL_S",
    "AUDIT_INTERVAL_S",
    "DEMO_TRADER_ACCOUNT",
    "DEMO_PROVIDER_ACCOUNT",
]

log = logging.getLogger("gx.sandbox")

STATUS_INTERVAL_S = 10.0
AUDIT_INTERVAL_S = 30.0
LISTING_WAIT_S = 30.0  # the clock's first tick lists the calendar within a second or two
FUNDING_WAIT_S = 30.0  # deposits show in the gateway's projection
STOP_STAGE_TIMEOUT_S = 30.0  # per part when stopping; past it the next part stops anyway
SLOW_NOTICE_S = 3.0  # a stage still running after this long says what it is waiting for
MASTER_KEY_BYTES = 32
DEMO_TRADER_ACCOUNT = 100
DEMO_PROVIDER_ACCOUNT = 101
DEMO_DEPOSIT_MICROS = 1_000_000 * 1_000_000  # one million USD each
DEMO_CAPACITY_GPUS = 16  # the demo provider may sell this many GPUs of the flagship model
DEMO_CAPACITY_HOURS = 72
# Withdrawals too: the sandbox's operator settles them, so a demo user can try one.
_TRADER_SCOPES = ("read", "trade", "withdraw")
_PROVIDER_SCOPES = ("read", "trade", "provide", "withdraw")
_LOOPBACK = "127.0.0.1"
# A throwaway engine just big enough to run one command: it compiles or loads every kernel.
_WARM_ENGINE = EngineConfig(
    accounts_max=16,
    instruments_max=16,
    orders_max=16,
    levels_max=16,
    positions_max=16,
    capacity_rows_max=16,
    obligations_max=16,
)
# Ledger counts for the status line; deliveries by schemas.codes.DeliveryOutcome.
_STATUS_SQL = """
SELECT (SELECT count(*) FROM orders),
       (SELECT count(*) FROM trades),
       (SELECT count(*) FROM deliveries WHERE outcome = 1),
       (SELECT count(*) FROM deliveries WHERE outcome = 2),
       (SELECT count(*) FROM deliveries WHERE outcome = 3),
       (SELECT count(*) FROM deliveries WHERE outcome = 0)
"""
T = TypeVar("T")


class SandboxError(RuntimeError):
    """The sandbox cannot start or a stage stopped by itself; the message says what to do."""


class SandboxOptions(msgspec.Struct, frozen=True, kw_only=True):
    """How `gx sandbox` runs: where the gateway listens, whether bots trade, their seed."""

    host: str = _LOOPBACK
    port: int = 8080  # 0: any free port (tests)
    bots: bool = True
    seed: int = 7
    status_interval_s: float = STATUS_INTERVAL_S
    audit_interval_s: float = AUDIT_INTERVAL_S
    operator_interval_s: float = OPERATOR_INTERVAL_S
    # None: the catalog's. A soak test sets a short lead so that instruments trade until just
    # before their delivery starts (the catalog's lead closes an hour's book 15 min early).
    gate_closure_lead_s: int | None = None


class DemoKey(msgspec.Struct, frozen=True):
    """An API key printed for the user and served to the market page."""

    key: str
    secret: str
    account: int
    scopes: tuple[str, ...]


class SandboxStatus(msgspec.Struct, kw_only=True):
    """What the status line shows: ledger counts, engine throughput, the last audit."""

    orders: int = 0
    trades: int = 0
    delivered: int = 0
    failed: int = 0
    interrupted: int = 0
    deliveries_open: int = 0
    commands: int = 0  # engine commands applied since start
    withdrawals_approved: int = 0  # by the sandbox's operator
    withdrawals_rejected: int = 0
    topups: int = 0
    disputes_resolved: int = 0
    audit: str = "pending"


class Progress:
    """Print one line per finished stage: seconds since start and the stage's own."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def line(self, text: str) -> None:
        print(f"  [{self.elapsed():5.1f} s] {text}", file=self.out, flush=True)

    async def stage(self, what: Awaitable[T], done: Callable[[T], str], slow_hint: str = "") -> T:
        """Await one stage; print `done(result)` with its duration, and `slow_hint` if slow."""
        t = time.monotonic()
        task = asyncio.ensure_future(what)
        try:
            if slow_hint:
                finished, _ = await asyncio.wait({task}, timeout=SLOW_NOTICE_S)
                if not finished:
                    self.line(slow_hint)
            result = await task
        finally:
            task.cancel()
        self.line(f"{done(result)} ({time.monotonic() - t:.1f} s)")
        return result


def _warm_kernels(catalog: Catalog) -> None:
    """Compile (first run) or load from Numba's cache every kernel the engine runs."""
    Engine(catalog, _WARM_ENGINE).apply([c.Deposit(account=10, amount_micros=1)])


def _in_daemon_thread(fn: Callable[..., None], *args: Any) -> asyncio.Future[None]:
    """Run `fn` in a daemon thread: a Ctrl-C during a cold compile need not wait for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def target() -> None:
        error: BaseException | None = None
        try:
            fn(*args)
        except BaseException as caught:  # handed to the awaiting coroutine
            error = caught
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=target, name="gx-sandbox-kernels", daemon=True).start()
    return future


def _check_port(host: str, port: int) -> None:
    """Refuse early, with advice, a port another process listens on (uvicorn would exit)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((host, port))
        except OSError as error:
            raise SandboxError(
                f"cannot listen on {host}:{port} ({error.strerror}): another process uses it; "
                "pass --port (or set GX_GATEWAY_PORT) to choose another"
            ) from None


@contextlib.contextmanager
def _logging_kept() -> Iterator[None]:
    """Keep the root logger's level and handlers: Litestar's default configuration sets INFO
    with its own handler when the gateway's application is built, which floods the console."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        yield
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers


def _display_host(host: str) -> str:
    """Return the host a local browser should use for a listen address."""
    return _LOOPBACK if host in ("", "0.0.0.0", "::") else host


class Sandbox:
    """The exchange, its demo accounts and its bots; `start()`, then `stop()` (always)."""

    def __init__(
        self, options: SandboxOptions, settings: Settings, *, out: TextIO | None = None
    ) -> None:
        master_key = settings.gateway_master_key or secrets.token_urlsafe(MASTER_KEY_BYTES)
        check_master_key(master_key)
        self.options = options
        self.settings = msgspec.structs.replace(
            settings,
            gateway_master_key=master_key,
            gateway_host=options.host,
            gateway_port=options.port,
        )
        self.out = out or sys.stdout
        self.progress = Progress(self.out)
        self.catalog = load_catalog()
        if options.gate_closure_lead_s is not None:
            if options.gate_closure_lead_s < 0:
                raise ValueError(
                    f"gate closure lead: expected >= 0 s, found {options.gate_closure_lead_s}"
                )
            self.catalog = msgspec.structs.replace(
                self.catalog, gate_closure_lead_ns=options.gate_closure_lead_s * NS_PER_SECOND
            )
        self.broker: BrokerProcess | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.dsn = ""
        self.stack: Stack | None = None
        self.bots: Bots | None = None
        self.operator: Operator | None = None
        self._operating: asyncio.Task[None] | None = None
        self.bot_specs: list[BotSpec] = roster(self.catalog) if options.bots else []
        self.demo_keys: dict[str, DemoKey] = {}
        self.ready_s: float | None = None  # seconds from start() to a serving, funded exchange
        self.last_audit = "pending"
        self.audit_violations = 0
        self._served_keys: dict[str, dict[str, Any]] = {}  # what /sandbox/demo.json answers
        self._checkpoint: Checkpoint | None = None
        self._status_conn: asyncpg.Connection | None = None

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """The market page's URL (the gateway's base URL)."""
        assert self.stack is not None and self.stack.gateway is not None, "start() first"
        gateway = self.stack.gateway
        return f"http://{_display_host(gateway.host)}:{gateway.port}"

    @property
    def ws_url(self) -> str:
        """The WebSocket URL."""
        return self.url.replace("http://", "ws://", 1) + "/ws"

    @property
    def postgres_pid(self) -> int | None:
        """The embedded PostgreSQL's postmaster process id (None with GX_DATABASE_URL)."""
        return self.postgres.pid if self.postgres is not None else None

    @property
    def postgres_dir(self) -> Path | None:
        """The embedded PostgreSQL's data directory (None with GX_DATABASE_URL)."""
        return self.postgres.data_dir if self.postgres is not None else None

    # ------------------------------------------------------------------ start

    async def start(self) -> None:
        """Start every part in order, printing a progress line per stage."""
        p = self.progress
        _check_port(self.options.host, self.options.port)
        print("gx sandbox: starting the exchange", file=self.out, flush=True)
        self.broker = BrokerProcess(broker_count=1)
        self.broker.start()
        self.broker.group_initial_rebalance_delay_ms(0)  # faust's group joins at once
        p.line(f"broker: librdkafka mock cluster at {self.broker.bootstrap_servers}")
        database = asyncio.ensure_future(
            p.stage(self._open_database(), lambda text: text, "starting PostgreSQL ...")
        )
        kernels = p.stage(
            _in_daemon_thread(_warm_kernels, self.catalog),
            lambda _: "engine kernels ready",
            "compiling the engine's Numba kernels (first run about 25 s, then cached) ...",
        )
        try:
            await asyncio.gather(database, kernels)
        finally:
            database.cancel()
        self.stack = Stack(
            self.broker,
            self.dsn,
            self.settings,
            options=StackOptions(
                clock=True,
                provisioning=True,
                settlement=True,
                gateway_host=self.options.host,
                gateway_port=self.options.port,
            ),
            catalog=self.catalog,
            extra_handlers=[demo_keys_route(self._served_keys)],
        )
        with _logging_kept():
            await p.stage(
                self.stack.start(),
                lambda _: (
                    "engine, settlement, market data, provisioning, clock and gateway running"
                ),
                "starting the stages ...",
            )
        await p.stage(self._wait_listing(), lambda n: f"{n} instruments listed")
        await p.stage(self._open_accounts(), lambda text: text)
        self._status_conn = await asyncpg.connect(self.dsn)
        if self.bot_specs:
            await p.stage(self._start_bots(), lambda text: text)
        self._start_operator()
        self.ready_s = p.elapsed()

    async def _open_database(self) -> str:
        if self.settings.database_url:
            self.dsn = self.settings.database_url
            await _check_empty(self.dsn)
            return "PostgreSQL: GX_DATABASE_URL (an empty database)"
        self.postgres = EmbeddedPostgres(database="gx")
        await asyncio.to_thread(self.postgres.start)
        self.dsn = self.postgres.dsn
        return (
            f"PostgreSQL: private cluster on 127.0.0.1:{self.postgres.port} "
            f"(pid {self.postgres.pid}, {self.postgres.data_dir})"
        )

    async def _wait_listing(self) -> int:
        accounts = self._gateway().accounts
        deadline = time.monotonic() + LISTING_WAIT_S
        while not accounts.instruments():
            self._check_stages()
            if time.monotonic() > deadline:
                raise SandboxError(f"no instrument listed within {LISTING_WAIT_S:.0f} s")
            await asyncio.sleep(0.05)
        return len(accounts.instruments())

    async def _open_accounts(self) -> str:
        """Fund the demo and bot accounts, give the demo provider capacity, create the keys."""
        gateway = self._gateway()
        funds = {
            DEMO_TRADER_ACCOUNT: DEMO_DEPOSIT_MICROS,
            DEMO_PROVIDER_ACCOUNT: DEMO_DEPOSIT_MICROS,
        }
        funds.update({s.account: s.deposit_micros for s in self.bot_specs})
        start_ns = time.time_ns() // NS_PER_HOUR * NS_PER_HOUR
        commands: list[c.Command] = [
            c.Deposit(account=account, amount_micros=amount, ref=f"sandbox-funding-{account}")
            for account, amount in funds.items()
        ]
        commands.append(
            c.CapacityUpdate(
                account=DEMO_PROVIDER_ACCOUNT,
                gpu=self.catalog.gpus[0].model,
                region=self.catalog.regions[0],
                start_ns=start_ns,
                end_ns=start_ns + DEMO_CAPACITY_HOURS * NS_PER_HOUR,
                gpus=DEMO_CAPACITY_GPUS,
            )
        )
        await gateway.hub.send_commands(commands)
        named = [
            ("trader", DEMO_TRADER_ACCOUNT, _TRADER_SCOPES),
            ("provider", DEMO_PROVIDER_ACCOUNT, _PROVIDER_SCOPES),
        ]
        for name, account, scopes in named:
            api_key, secret = await gateway.keys.create(account, scopes)
            self.demo_keys[name] = DemoKey(api_key.key_id, secret, account, scopes)
            self._served_keys[name] = {"key": api_key.key_id, "secret": secret, "account": account}
        deadline = time.monotonic() + FUNDING_WAIT_S
        accounts = gateway.accounts
        while any(accounts.balances(a)["available"] == "0.000000" for a in funds):
            self._check_stages()
            if time.monotonic() > deadline:
                raise SandboxError(f"deposits not visible within {FUNDING_WAIT_S:.0f} s")
            await asyncio.sleep(0.05)
        return f"{len(funds)} accounts funded, demo keys created"

    async def _start_bots(self) -> str:
        gateway = self._gateway()
        credentials: dict[str, tuple[str, str]] = {}
        for spec in self.bot_specs:
            api_key, secret = await gateway.keys.create(spec.account, spec.scopes)
            credentials[spec.name] = (api_key.key_id, secret)
        self.bots = Bots(
            self.url, self.catalog, self.bot_specs, credentials, seed=self.options.seed
        )
        await self.bots.start()
        roles = [s.role for s in self.bot_specs]
        return (
            f"bots trading: {roles.count('provider')} providers, {roles.count('maker')} market "
            f"makers, {roles.count('buyer')} buyers (seed {self.options.seed})"
        )

    def _start_operator(self) -> None:
        """Top up the buyers and the demo trader, resolve their disputes, settle all withdrawals."""
        buyers = {s.account: s.deposit_micros for s in self.bot_specs if s.role == "buyer"}
        funded = {DEMO_TRADER_ACCOUNT: DEMO_DEPOSIT_MICROS, **buyers}
        self.operator = Operator(
            self._gateway(),
            funded=funded,
            holders=list(funded),
            seed=self.options.seed,
            interval_s=self.options.operator_interval_s,
        )
        self._operating = asyncio.create_task(self.operator.run(), name="sandbox-operator")

    def _gateway(self) -> Gateway:
        assert self.stack is not None and self.stack.gateway is not None
        assert self.stack.gateway.gateway is not None
        return self.stack.gateway.gateway

    def _check_stages(self) -> None:
        if self.stack is not None:
            try:
                self.stack.check()
            except RuntimeError as error:
                raise SandboxError(str(error)) from None

    # ------------------------------------------------------------------ running

    def banner(self) -> str:
        """The lines printed once the sandbox is ready."""
        lines = [
            f"gx sandbox ready in {self.ready_s or 0.0:.1f} s",
            f"  market page    {self.url}/",
            f"  WebSocket      {self.ws_url}",
            f"  REST           {self.url}/api/v1  (OpenAPI: {self.url}/api/v1/schema/openapi.json)",
        ]
        for name, key in self.demo_keys.items():
            lines.append(
                f"  demo {name:<9} key {key.key}  secret {key.secret}  account {key.account}  "
                f"({', '.join(key.scopes)})"
            )
        lines.append(f"  demo keys      {self.url}{DEMO_PATH} (loopback only)")
        if self.bots is None:
            lines.append("  bots           off (--no-bots): an empty market")
        lines.append(
            f"  operator       settles withdrawals every {self.options.operator_interval_s:g} s "
            f"(rejects {WITHDRAWAL_REJECT_PROBABILITY:.0%}), tops buyers up below "
            f"{TOPUP_FLOOR_PERCENT}% of their funding, resolves disputes after "
            f"{DISPUTE_REVIEW_S:g} s"
        )
        if self.postgres is not None:
            lines.append("  Ctrl-C stops everything; the sandbox's database is thrown away.")
        else:
            lines.append(
                "  Ctrl-C stops everything; GX_DATABASE_URL keeps what was written (the next "
                "sandbox needs an empty database)."
            )
        return "\n".join(lines)

    async def status(self) -> SandboxStatus:
        """Count orders, trades and deliveries in the ledger; the engine's commands."""
        status = SandboxStatus(audit=self.last_audit)
        if self.stack is not None and self.stack.runner is not None:
            status.commands = self.stack.runner.stats.commands
        if self.operator is not None:
            done = self.operator.stats
            status.withdrawals_approved, status.withdrawals_rejected = done.approved, done.rejected
            status.topups, status.disputes_resolved = done.topped_up, done.released + done.refunded
        if self._status_conn is not None:
            row = await self._status_conn.fetchrow(_STATUS_SQL)
            if row is not None:
                status.orders, status.trades = int(row[0]), int(row[1])
                status.delivered, status.failed = int(row[2]), int(row[3])
                status.interrupted, status.deliveries_open = int(row[4]), int(row[5])
        return status

    async def audit_once(self) -> str:
        """Audit the events written since the last clean cut; return the one-line result."""
        assert self.stack is not None and self.broker is not None
        report, auditor, ends = await audit(
            self.stack.settings,
            self.broker.bootstrap_servers,
            self.dsn,
            checkpoint=self._checkpoint,
            check_crcs=False,  # the mock broker's transaction markers carry CRC 0
        )
        if not any("does not balance yet" in w for w in report.warnings):
            self._checkpoint = auditor.checkpoint(ends)
        self.audit_violations += report.violations_total
        if report.violations_total:
            first = report.violations[0]
            self.last_audit = f"{self.audit_violations} violations"
            return (
                f"audit: {report.violations_total} violations in {report.events} events "
                f"(first: {first.kind}: {first.message})"
            )
        compared = "ledger compared" if report.ledger_compared else "ledger not compared"
        self.last_audit = "ok" if not self.audit_violations else self.last_audit
        return f"audit: ok, {report.events} new events replayed, {compared}, 0 violations"

    async def supervise(self, stop: asyncio.Event) -> None:
        """Print status lines and run audits until `stop` is set; raise if a stage fails."""
        loop = asyncio.get_running_loop()
        next_status = loop.time() + self.options.status_interval_s
        next_audit = loop.time() + self.options.audit_interval_s
        last_commands, last_at = 0, loop.time()
        auditing: asyncio.Task[str] | None = None
        try:
            while not stop.is_set():
                wait_s = max(0.0, min(next_status, next_audit) - loop.time())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=min(wait_s, 1.0))
                self._check_stages()
                now = loop.time()
                if auditing is not None and auditing.done():
                    self._report_audit(auditing)
                    auditing = None
                if now >= next_audit:
                    next_audit = now + self.options.audit_interval_s
                    if auditing is None:
                        auditing = asyncio.create_task(self.audit_once(), name="audit")
                if now >= next_status and not stop.is_set():
                    next_status = now + self.options.status_interval_s
                    try:
                        status = await self.status()
                    except (asyncpg.PostgresError, OSError) as error:
                        self.progress.line(f"status unavailable: {error!r}")
                        continue
                    rate = (status.commands - last_commands) / max(now - last_at, 1e-9)
                    last_commands, last_at = status.commands, now
                    self.progress.line(_status_line(status, rate))
        finally:
            if auditing is not None:
                auditing.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await auditing

    def _report_audit(self, task: asyncio.Task[str]) -> None:
        try:
            self.progress.line(task.result())
        except Exception as error:  # a read timeout or the broker's lost data: say so, go on
            self.last_audit = "failed"
            self.progress.line(f"audit: could not run: {error!r}")

    # ------------------------------------------------------------------ stop

    async def stop(self) -> None:
        """Stop the bots, the stages and gateway, the broker and PostgreSQL; never raise."""
        t = time.monotonic()
        started = self.broker is not None  # a refusal before the broker has nothing to stop
        if self._operating is not None:
            self._operating.cancel()
            await self._quietly("operator", _cancelled(self._operating))
            self._operating = None
        if self.bots is not None:
            await self._quietly("bots", self.bots.stop())
            self.bots = None
        if self._status_conn is not None:
            await self._quietly("status connection", self._status_conn.close())
            self._status_conn = None
        if self.stack is not None:
            await self._quietly("stages", self.stack.stop())
            self.stack = None
        if self.broker is not None:
            self.broker.stop()
            self.broker = None
        if self.postgres is not None:
            await self._quietly("PostgreSQL", asyncio.to_thread(self.postgres.stop))
            self.postgres = None
        if started:
            print(f"gx sandbox: stopped ({time.monotonic() - t:.1f} s)", file=self.out, flush=True)

    async def _quietly(self, what: str, work: Awaitable[Any]) -> None:
        try:
            await asyncio.wait_for(work, STOP_STAGE_TIMEOUT_S)
        except Exception as error:  # stopping goes on: the next part must stop too
            log.warning("stopping %s: %r", what, error)
            print(f"gx sandbox: stopping {what}: {error!r}", file=self.out, flush=True)


def _status_line(s: SandboxStatus, commands_per_s: float) -> str:
    return (
        f"orders {s.orders}  trades {s.trades}  deliveries {s.delivered} delivered, "
        f"{s.failed} failed, {s.interrupted} interrupted, {s.deliveries_open} open  "
        f"withdrawals {s.withdrawals_approved} paid, {s.withdrawals_rejected} rejected  "
        f"top-ups {s.topups}  disputes {s.disputes_resolved} resolved  "
        f"{commands_per_s:.0f} commands/s  audit {s.audit}"
    )


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Wait for a cancelled task to end."""
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _check_empty(dsn: str) -> None:
    """Refuse a database that holds another exchange's log positions or snapshots."""
    conn = await asyncpg.connect(dsn)
    try:
        for table in ("consumer_positions", "engine_snapshots"):
            exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
            if exists and await conn.fetchval(f"SELECT count(*) > 0 FROM {table}"):
                raise SandboxError(
                    f"GX_DATABASE_URL: table {table} is not empty, but the sandbox starts a "
                    "fresh broker, whose log would not match it: use an empty database, or "
                    "unset GX_DATABASE_URL for a private one"
                )
    finally:
        await conn.close()


async def run_sandbox(
    options: SandboxOptions,
    stop: asyncio.Event,
    *,
    settings: Settings | None = None,
    out: TextIO | None = None,
    ready: Callable[[Sandbox], None] | None = None,
) -> None:
    """Run the sandbox until `stop` is set, then stop everything; raise SandboxError on failure.

    `ready(sandbox)` is called once it serves, with the banner printed (tests read the URL and
    the keys from it). A `stop` set during start-up stops what has started and returns.
    """
    sandbox = Sandbox(options, settings or Settings(), out=out)
    try:
        starting = asyncio.create_task(sandbox.start(), name="sandbox-start")
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            return
        starting.result()
        print(sandbox.banner(), file=sandbox.out, flush=True)
        if ready is not None:
            ready(sandbox)
        await sandbox.supervise(stop)
    finally:
        await sandbox.stop()
