"""Logging of every `gx` process, configured in one place (`configure`).

Quiet by default (GX_LOG_LEVEL=WARNING): INFO adds lifecycle lines only (start, recovery,
snapshots, progress every few seconds), never one line per order. With GX_LOG_FORMAT=json every
line on stderr is one JSON object, `{"ts", "level", "logger", "message"}` plus `error` (the
traceback) where there is one, so a log collector needs no parser of ours; `say` writes the
process's own stderr lines (usage errors, counters on exit) the same way.
"""

from __future__ import annotations

import logging
import sys
import time
import urllib.parse
from typing import Any

import orjson

__all__ = ["JsonFormatter", "configure", "database_at", "json_format", "say"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_json = False
_handler: logging.Handler | None = None


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def configure(level: str, log_format: str) -> None:
    """Send every logger's records to stderr, as text or JSON; `gx.*` at `level`, others WARNING."""
    global _json, _handler
    _json = log_format == "json"
    root = logging.getLogger()
    if _handler is not None:  # configured again (tests): replace ours, leave others' handlers
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(JsonFormatter() if _json else logging.Formatter(TEXT_FORMAT))
    root.addHandler(_handler)
    logging.getLogger("gx").setLevel(level.upper())


def json_format() -> bool:
    """Whether `configure` chose JSON lines."""
    return _json


def say(name: str, message: str, *, level: str = "ERROR", **fields: Any) -> None:
    """Write `gx NAME: message` on stderr, or one JSON object in the JSON format."""
    if not _json:
        print(f"gx {name}: {message}", file=sys.stderr)
        return
    line = {"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "level": level,
            "logger": f"gx.{name}", "message": message, **fields}  # fmt: skip
    print(orjson.dumps(line, default=str).decode(), file=sys.stderr)


def database_at(dsn: str) -> str:
    """`host:port/database` of a PostgreSQL URL, for log lines (never its user or password)."""
    parts = urllib.parse.urlsplit(dsn)
    host = parts.hostname or "localhost"
    port = parts.port or 5432
    return f"{host}:{port}{parts.path or '/'}"
