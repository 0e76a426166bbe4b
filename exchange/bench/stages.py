"""The stream processes of `gx bench pipeline`, each in a process of its own or on the bench's loop.

In production the engine runner, the settlement writer and the market-data process are separate
`gx` processes (docker-compose.yml); the benchmark runs them the same way by default, so the
pipeline uses both cores. `--one-process` puts them on the benchmark's own event loop instead
(how the first figures were measured, and handy under a profiler).

A stage publishes its counters through shared memory: a child process copies its stats struct
into an int64 array every `publish_every_s`, and the benchmark reads them back as the same
struct (`Stage.stats`), so the flow control and the report read one interface either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.sharedctypes
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, Literal, Protocol

import msgspec

from matching.engine import EngineConfig
from schemas.catalog import load_catalog
from streams.engine_runner import EngineRunner, RunnerStats
from streams.marketdata.process import MarketDataProcess, ProcessStats
from streams.process import lower_priority, run_loop
from streams.settings import Settings
from streams.settlement import SettlementStats, SettlementWriter

__all__ = ["Stage", "StageSpec", "start_stage", "wait_ready"]

publish_every_s = 0.002
start_timeout_s = 120.0  # a cold child compiles the engine's kernels before it is ready
stop_timeout_s = 15.0

_STATS: dict[str, type[msgspec.Struct]] = {
    "engine": RunnerStats,
    "settlement": SettlementStats,
    "marketdata": ProcessStats,
}
# Slots before the stats fields: ready (0/1), failed (0/1), newest settlement commit (ns).
_READY, _FAILED, _SETTLED_NS, _FIRST_FIELD = 0, 1, 2, 3


class StageSpec(msgspec.Struct, frozen=True):
    """Everything a stage needs to start, picklable for a child process."""

    kind: Literal["engine", "settlement", "marketdata"]
    settings: Settings
    dsn: str
    engine_config: EngineConfig | None = None
    snapshots: bool = False


class _Running:
    """A stage's process object, built from its spec (in whichever process runs it)."""

    def __init__(self, spec: StageSpec) -> None:
        self.settled_ns = 0
        settings = spec.settings
        assert settings.kafka_bootstrap is not None
        self.process: Any
        if spec.kind == "engine":
            assert spec.engine_config is not None
            self.process = EngineRunner(
                settings, 0, load_catalog(), spec.engine_config,
                mock_broker=True, snapshots=spec.snapshots,
            )  # fmt: skip
            self.stats_of: Callable[[], Any] = lambda: self.process.stats
        elif spec.kind == "settlement":
            self.process = SettlementWriter(
                settings, spec.dsn, settings.kafka_bootstrap, check_crcs=False,
                on_commit=self._committed,
            )  # fmt: skip
            self.stats_of = lambda: self.process.stats
        elif spec.kind == "marketdata":
            self.process = MarketDataProcess(settings, mock_broker=True)
            self.stats_of = lambda: self.process.stats
        else:
            raise ValueError(f"stage: unknown kind {spec.kind!r}")

    async def _committed(self, _connection: Any) -> None:
        self.settled_ns = time.time_ns()

    def ready(self) -> bool:
        ready = getattr(self.process, "ready", None)
        return True if ready is None else ready.is_set()

    async def stop(self) -> None:
        result = self.process.stop()
        if asyncio.iscoroutine(result):
            await result


class Stage(Protocol):
    """A running stage as the benchmark sees it: stats, readiness, failure, stop."""

    name: str

    @property
    def stats(self) -> Any: ...

    @property
    def settled_ns(self) -> int: ...

    @property
    def nice(self) -> int:
        """How much nicer than the benchmark's process the stage runs."""

    def ready(self) -> bool: ...

    def check(self) -> None:
        """Raise if the stage stopped by itself."""

    async def stop(self) -> None: ...


class _LocalStage:
    """A stage as a task on the benchmark's own loop."""

    def __init__(self, spec: StageSpec) -> None:
        self.name: str = spec.kind
        self._running = _Running(spec)
        self._task = asyncio.create_task(self._running.process.run(), name=spec.kind)

    @property
    def stats(self) -> Any:
        return self._running.stats_of()

    @property
    def settled_ns(self) -> int:
        return self._running.settled_ns

    @property
    def nice(self) -> int:
        return 0  # the benchmark's own process

    def ready(self) -> bool:
        return self._running.ready()

    def check(self) -> None:
        if self._task.done() and self._task.exception() is not None:
            raise RuntimeError(f"{self.name} failed: {self._task.exception()!r}")

    async def stop(self) -> None:
        await self._running.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class _ProcessStage:
    """A stage in a child process (spawned: no inherited loop, broker threads or sockets)."""

    def __init__(self, spec: StageSpec) -> None:
        self.name: str = spec.kind
        self._type = _STATS[spec.kind]
        width = _FIRST_FIELD + len(self._type.__struct_fields__)
        context = multiprocessing.get_context("spawn")
        self._slots = context.Array("q", width, lock=False)
        self._stopping = context.Event()
        self._process = context.Process(
            target=_child, args=(spec, self._slots, self._stopping), name=f"gx-bench-{spec.kind}"
        )
        self._process.start()

    @property
    def stats(self) -> Any:
        values = self._slots[_FIRST_FIELD:]
        return self._type(**dict(zip(self._type.__struct_fields__, values, strict=True)))

    @property
    def settled_ns(self) -> int:
        return int(self._slots[_SETTLED_NS])

    @property
    def nice(self) -> int:
        pid = self._process.pid
        assert pid is not None, "started in __init__"
        return os.getpriority(os.PRIO_PROCESS, pid) - os.getpriority(os.PRIO_PROCESS, 0)

    def ready(self) -> bool:
        return bool(self._slots[_READY])

    def check(self) -> None:
        if self._slots[_FAILED] or (not self._process.is_alive() and not self._stopping.is_set()):
            raise RuntimeError(
                f"{self.name} process failed (exit code {self._process.exitcode}); "
                "its traceback is on stderr"
            )

    async def stop(self) -> None:
        self._stopping.set()
        deadline = time.monotonic() + stop_timeout_s
        while self._process.is_alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._process.is_alive():
            self._process.terminate()
        self._process.join(stop_timeout_s)


def start_stage(spec: StageSpec, *, in_process: bool) -> Stage:
    """Start a stage on this loop (`in_process`) or in a child process."""
    return _LocalStage(spec) if in_process else _ProcessStage(spec)


async def wait_ready(stages: list[Stage], check: Callable[[], None]) -> None:
    """Return once every stage is ready; raise if one fails or the start takes too long."""
    deadline = time.monotonic() + start_timeout_s
    while not all(s.ready() for s in stages):
        check()
        if time.monotonic() > deadline:
            late = [s.name for s in stages if not s.ready()]
            raise RuntimeError(f"stages not ready after {start_timeout_s:.0f} s: {late}")
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------------- the child process


def _child(spec: StageSpec, slots: Any, stopping: Any) -> None:
    """Run one stage until the parent sets `stopping`; publish its counters meanwhile."""
    if spec.kind == "settlement":
        lower_priority(spec.settings.settle_nice)  # as `gx settle` does
    try:
        run_loop(_child_main(spec, slots, stopping))
    except BaseException:
        slots[_FAILED] = 1
        traceback.print_exc(file=sys.stderr)
        raise


async def _child_main(spec: StageSpec, slots: Any, stopping: Any) -> None:
    running = _Running(spec)
    task = asyncio.create_task(running.process.run(), name=spec.kind)
    stopped = False

    def publish() -> None:
        values = msgspec.structs.astuple(running.stats_of())
        slots[_FIRST_FIELD:] = list(values)
        slots[_SETTLED_NS] = running.settled_ns
        slots[_READY] = int(running.ready())

    while not task.done():
        publish()
        if stopping.is_set() and not stopped:
            stopped = True
            await running.stop()
        await asyncio.wait([task], timeout=publish_every_s)
    publish()
    task.result()  # raise the stage's own error, if any
