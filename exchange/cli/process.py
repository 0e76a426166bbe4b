"""What every `gx` command that runs a process shares: its options, its settings, its supervision.

A process command names its process and how to build it from `Settings`; `serve_command` reads
the `GX_*` settings with the command line's overrides, refuses a missing broker with the one
message every process gives (`streams.settings.NO_BROKER`), starts an embedded PostgreSQL where
the process may run on one, and runs the process under `streams.process.serve` (signals, exit
status, counters on exit).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from streams.embedded.postgres import open_database
from streams.logs import configure as configure_logging
from streams.logs import say
from streams.process import Process, lower_priority, serve
from streams.settings import Settings, load_settings

__all__ = ["add_bootstrap", "add_broker", "add_database", "load", "serve_command", "usage_error"]

_P = TypeVar("_P", bound=Process)


def add_bootstrap(parser: argparse.ArgumentParser) -> None:
    """Add `--bootstrap`, which `load` applies over GX_KAFKA_BOOTSTRAP."""
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: GX_KAFKA_BOOTSTRAP)")


def add_broker(parser: argparse.ArgumentParser, *, mock_help: str | None = None) -> None:
    """Add `--bootstrap` and `--mock-broker` (for the processes that read with CRC checks)."""
    add_bootstrap(parser)
    parser.add_argument(
        "--mock-broker",
        action="store_true",
        help=mock_help
        or "the broker is librdkafka's mock cluster: skip CRC checks (never on real Kafka)",
    )


def add_database(parser: argparse.ArgumentParser, help: str) -> None:
    """Add `--dsn` (also spelled `--database-url`), the PostgreSQL URL."""
    parser.add_argument("--dsn", "--database-url", dest="dsn", help=help)


def load(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The `GX_*` settings with `--bootstrap`, `--dsn` and `overrides` applied; logging set up.

    Raises ValueError naming the variable that is wrong.
    """
    settings = load_settings()
    if getattr(args, "bootstrap", None):
        overrides["kafka_bootstrap"] = args.bootstrap
    if getattr(args, "dsn", None):
        overrides["database_url"] = args.dsn
    settings = msgspec.structs.replace(settings, **overrides)
    configure_logging(settings.log_level, settings.log_format)
    return settings


def usage_error(name: str, error: BaseException) -> int:
    """Print `gx NAME: error` and return the usage exit status (2)."""
    say(name, str(error))
    return 2


def serve_command(
    name: str,
    args: argparse.Namespace,
    build: Callable[[Settings], _P],
    *,
    fatal: tuple[type[BaseException], ...] = (),
    stats: Callable[[_P], Any] | None = None,
    embedded_database: bool = False,
    nice: Callable[[Settings], int] | None = None,
    progress_s: float | None = None,
    **overrides: Any,
) -> int:
    """Run the process `build(settings)` as `gx NAME` until it stops or a signal arrives.

    `embedded_database`: with no `GX_DATABASE_URL` (or `--dsn`), run on a private PostgreSQL that
    is deleted on exit, and say so. `nice`: how many steps nicer the process runs. Returns 0, 2
    (usage: settings, a missing broker, a process that refuses its settings) or 3 (a `fatal`
    error while running).
    """
    try:
        settings = load(args, **overrides)
        settings.broker()
    except ValueError as error:
        return usage_error(name, error)
    with contextlib.ExitStack() as cleanup:
        if embedded_database and not settings.database_url:
            say(
                name,
                "GX_DATABASE_URL is not set: using an embedded PostgreSQL that is deleted on "
                "exit; set it to keep the data",
                level="WARNING",
            )
            dsn = cleanup.enter_context(open_database())
            settings = msgspec.structs.replace(settings, database_url=dsn)
        try:
            process = build(settings)
        except (ValueError, OSError, msgspec.ValidationError) as error:
            return usage_error(name, error)
        lower_priority(nice(settings) if nice else 0)
        report = None if stats is None else (lambda: stats(process))
        health = (settings.health_host, settings.health_port) if settings.health_port else None
        status = serve(
            process,
            name,
            fatal,
            report,
            progress_s=progress_s,
            health=health,
            broker_at=settings.kafka_bootstrap or "",
        )
    return status
