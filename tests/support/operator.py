"""The operator's `gx funds` as a separate process against a test's embedded broker."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import orjson

from streams.embedded.broker import EmbeddedBroker


async def gx_funds(broker: EmbeddedBroker, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run `gx funds ARGS` on the broker; return its exit status, its JSON answer, its stderr.

    A subprocess, not a call: the command line runs its own event loop, and the exchange under
    test runs on the caller's.
    """
    return await gx("funds", *args, "--bootstrap", broker.bootstrap_servers, "--mock-broker")


async def gx_admin(broker: EmbeddedBroker, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run a `gx admin` market control on the broker, as `gx_funds` does."""
    return await gx("admin", *args, "--bootstrap", broker.bootstrap_servers, "--mock-broker")


async def gx(*args: str) -> tuple[int, dict[str, Any], str]:
    """Run `gx ARGS` without the caller's GX_* variables; return status, JSON answer, stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GX_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exchange.cli.gx", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await process.communicate()
    answer = orjson.loads(out) if out.strip() else {}
    assert process.returncode is not None
    return process.returncode, answer, err.decode()
