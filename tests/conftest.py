"""Shared fixtures: the packaged catalog, a small engine, a fixed start time."""

from __future__ import annotations

import pytest

from matching.engine import Engine, EngineConfig
from schemas import commands as c
from schemas.catalog import Catalog, load_catalog
from schemas.symbols import parse_symbol
from tests.support.fuzz import COVERED, summary_lines

# 2026-12-01T00:00Z minus 3 hours: hourly instruments from 03:00 on are listed at the first tick.
T0_NS = 1_796_083_200_000_000_000 - 3 * 3_600_000_000_000
HOUR_NS = 3_600_000_000_000

SMALL = EngineConfig(
    accounts_max=64,
    instruments_max=2048,
    orders_max=4096,
    levels_max=1024,
    positions_max=1024,
    capacity_rows_max=8192,
    obligations_max=1024,
    orders_open_max=8,
)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog()


def started_engine(catalog: Catalog, config: EngineConfig = SMALL) -> Engine:
    """An engine after its first clock tick (so the calendar's instruments are listed)."""
    engine = Engine(catalog, config)
    engine.apply([c.ClockTick(ts_ns=T0_NS)])
    return engine


def first_hourly(engine: Engine, gpu: str = "H100-SXM", region: str = "us-east") -> str:
    """The first listed hourly instrument of a GPU model and region."""
    for symbol in engine.open_symbols():
        key = parse_symbol(symbol)
        if key.product == "1h" and key.gpu == gpu and key.region == region:
            return symbol
    raise LookupError("no hourly instrument listed")


def capacity_for(account: int, symbol: str, gpus: int) -> c.CapacityUpdate:
    """Capacity covering exactly the delivery window of `symbol`."""
    key = parse_symbol(symbol)
    return c.CapacityUpdate(
        account=account,
        gpu=key.gpu,
        region=key.region,
        start_ns=key.start_ns,
        end_ns=key.end_ns,
        gpus=gpus,
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_CoveredFromWorkers())


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand what it covered to the controller
        workeroutput["covered"] = {target: dict(n) for target, n in COVERED.items()}


class _CoveredFromWorkers:
    """With `make test`'s workers (pytest-xdist) the fuzzers run in them: add up their counts."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: object, error: object) -> None:
        covered = getattr(node, "workeroutput", {}).get("covered", {})
        for target, outcomes in covered.items():
            COVERED[target].update(outcomes)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the fuzzers covered (tests/support/fuzz.py): examples per target."""
    lines = summary_lines()
    if lines:
        terminalreporter.section("fuzz coverage")
        for line in lines:
            terminalreporter.write_line(line)
