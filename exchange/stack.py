"""The whole exchange in one process: every stage as an asyncio task over one broker and database.

    topics -> engine runner -> settlement writer, market data, provisioning -> gateway
              clock (optional: tests send their own ticks to stay deterministic)

Used by the gateway's integration tests and by `gx sandbox`. The embedded broker lives inside
the process that created it, so the stages share the process; on real Kafka each stage is its own
`gx` process (docker-compose.yml).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec

from exchange.gateway.app import WEBSOCKET_IMPL, GatewayServer
from exchange.gateway.ratelimit import RateLimits
from matching.state import EngineConfig
from schemas.catalog import Catalog, load_catalog
from streams.clock import Clock
from streams.embedded.broker import EmbeddedBroker, EmbeddedBrokerError
from streams.embedded.broker_process import BrokerProcess
from streams.engine_runner import EngineRunner
from streams.marketdata.process import MarketDataProcess
from streams.provisioning import ProvisioningProcess, changelog_topics
from streams.settings import Settings
from streams.settlement import SettlementWriter
from streams.topics import topics

__all__ = ["Stack", "StackOptions", "stack_engine_config"]

log = logging.getLogger("gx.stack")

# A sandbox-sized engine: about 100 MiB of arrays instead of the production default's.
stack_engine_config = EngineConfig(
    accounts_max=4096,
    instruments_max=4096,
    orders_max=1 << 17,
    levels_max=1 << 15,
    positions_max=1 << 15,
    capacity_rows_max=1 << 17,
    obligations_max=1 << 15,
)
engine_ready_wait_s = 120.0  # a cold Numba compile included


class StackOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Which stages run, and where the gateway listens."""

    clock: bool = False
    engine: bool = True  # False: the engine runs elsewhere (a benchmark's child process)
    marketdata: bool = True
    provisioning: bool = True
    settlement: bool = True
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 0  # 0: any free port (tests)
    limits: RateLimits | None = None
    gateway_websocket_impl: str = WEBSOCKET_IMPL  # uvicorn's `ws` option


class Stack:
    """Start the stages on the running loop; stop them in reverse order."""

    def __init__(
        self,
        broker: EmbeddedBroker | BrokerProcess,
        dsn: str,
        settings: Settings,
        *,
        options: StackOptions | None = None,
        catalog: Catalog | None = None,
        engine_config: EngineConfig = stack_engine_config,
        extra_handlers: list[Any] | None = None,
    ) -> None:
        self.options = options or StackOptions()
        self.broker = broker
        self.settings = msgspec.structs.replace(
            settings, kafka_bootstrap=broker.bootstrap_servers, database_url=dsn
        )
        self.dsn = dsn
        self.catalog = catalog or load_catalog()
        self.engine_config = engine_config
        self.extra_handlers = extra_handlers
        self.runner: EngineRunner | None = None
        self.gateway: GatewayServer | None = None
        self.marketdata: MarketDataProcess | None = None
        self.settlement: SettlementWriter | None = None
        self.provisioning: ProvisioningProcess | None = None
        self.clock: Clock | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    def create_topics(self) -> None:
        """Create every topic (and faust's changelog) in the embedded broker, once."""
        wanted = [(t.name, t.partitions) for t in topics(self.settings).values()]
        wanted += [(name, self.settings.provisioning_partitions) for name in changelog_topics()]
        for name, partitions in wanted:
            try:
                self.broker.create_topic(name, partitions)
            except EmbeddedBrokerError as error:
                if "already exists" not in str(error):
                    raise

    async def start(self) -> None:
        """Start every stage; return once the engine runs and the gateway serves."""
        self.create_topics()
        s, opts = self.settings, self.options
        if opts.engine:
            self.runner = EngineRunner(s, 0, self.catalog, self.engine_config, mock_broker=True)
            self._spawn("engine", self.runner.run())
        if opts.settlement:
            assert s.kafka_bootstrap is not None
            self.settlement = SettlementWriter(s, self.dsn, s.kafka_bootstrap, check_crcs=False)
            self._spawn("settlement", self.settlement.run())
        if opts.marketdata:
            self.marketdata = MarketDataProcess(s, mock_broker=True)
            self._spawn("marketdata", self.marketdata.run())
        if opts.provisioning:
            self.provisioning = ProvisioningProcess(s, mock_broker=True)
            self._spawn("provisioning", self.provisioning.run())
        if opts.engine:
            await self._wait_engine()
        if opts.clock:
            self.clock = Clock(s)
            self._spawn("clock", self.clock.run())
        self.gateway = GatewayServer(
            s,
            self.dsn,
            catalog=self.catalog,
            mock_broker=True,
            host=opts.gateway_host,
            port=opts.gateway_port,
            limits=opts.limits,
            extra_handlers=self.extra_handlers,
            websocket_impl=opts.gateway_websocket_impl,
        )
        await self.gateway.start()

    def _spawn(self, name: str, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    async def _wait_engine(self) -> None:
        assert self.runner is not None
        ready = asyncio.create_task(self.runner.ready.wait())
        done, _ = await asyncio.wait(
            [ready, *self._tasks], timeout=engine_ready_wait_s, return_when=asyncio.FIRST_COMPLETED
        )
        if ready not in done:
            ready.cancel()
            self.check()
            raise RuntimeError(f"the engine did not start within {engine_ready_wait_s:.0f} s")

    def check(self) -> None:
        """Raise the error of any stage that stopped by itself."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise RuntimeError(f"{task.get_name()} failed: {task.exception()!r}")

    async def stop(self) -> None:
        """Stop the gateway, then every stage, and wait for them."""
        if self.gateway is not None:
            await self.gateway.close()
        for stage in (self.clock, self.provisioning, self.marketdata, self.runner):
            if stage is not None:
                stage.stop()
        if self.settlement is not None:
            self.settlement.stop()
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        for task, result in zip(self._tasks, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.warning(
                    "%s stopped with %r; see the error above and restart it",
                    task.get_name(),
                    result,
                )
