"""The exchange as in production, one `gx` process per stage, over a broker and PostgreSQL held
by the test: start, kill -9 and restart any stage, and wait for its /readyz.

The embedded broker listens on TCP, so each child connects to it as to a real cluster; the test
keeps the broker's fault API and the PostgreSQL server (stop, start, SIGSTOP) in its hands.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from streams.embedded.broker import EmbeddedBroker
from streams.embedded.postgres import EmbeddedPostgres

__all__ = ["Cluster", "Stage", "STAGES", "READY_WAIT_S"]

REPO = Path(__file__).resolve().parents[2]
READY_WAIT_S = 90.0  # a cold start loads the engine's kernels from Numba's cache
STOP_WAIT_S = 20.0
# Every long-running stage, in the order data flows through them.
STAGES = ("engine", "settle", "marketdata", "provision", "clock", "gateway")


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, timeout_s: float = 2.0) -> int:
    """The status of `GET url`; 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            status: int = answer.status
            return status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


class Stage:
    """One `gx` subcommand run as a child process, its stdout and stderr appended to one log
    across restarts (`log_size` and `log_since` read what a scenario added)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.health_port = free_port()
        self.env = {**env, "GX_HEALTH_PORT": str(self.health_port)}
        self.log_path = log_path
        self.child: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert not self.alive(), f"{self.name} already runs"
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts + 1} ---\n".encode())
            log.flush()
            self.child = subprocess.Popen(
                [sys.executable, "-m", "exchange.cli.gx", *self.args],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        self.starts += 1

    def alive(self) -> bool:
        return self.child is not None and self.child.poll() is None

    def ready(self) -> bool:
        return self.alive() and http_get(f"http://127.0.0.1:{self.health_port}/readyz") == 200

    def wait_ready(self, timeout_s: float = READY_WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if not self.alive():
                raise AssertionError(f"gx {self.name} exited: {self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"gx {self.name} not ready in {timeout_s:.0f} s: {self.tail()}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        """kill -9, and reap it."""
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGKILL)
            self.child.wait()

    def terminate(self) -> int | None:
        if self.child is None:
            return None
        if self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)
            try:
                self.child.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                self.child.kill()
                self.child.wait()
        return self.child.returncode

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def log_text(self) -> str:
        return self.tail(10_000_000)

    def log_size(self) -> int:
        """How many bytes its log holds now: a mark for `log_since`."""
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, mark: int) -> str:
        """What it has logged (stdout and stderr, every start) since `log_size()` gave `mark`."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(mark)
                return log.read().decode(errors="replace")
        except OSError:
            return ""


class Cluster:
    """The broker and PostgreSQL given by the test, and one child process per stage."""

    def __init__(
        self,
        broker: EmbeddedBroker,
        postgres: EmbeddedPostgres,
        dsn: str,
        log_dir: Path,
        master_key: str,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.broker = broker
        self.postgres = postgres
        self.dsn = dsn
        self.master_key = master_key
        self.gateway_port = free_port()
        # Only the settings given here: the GX_* settings refuse unknown names such as the
        # fault suite's own GX_FAULT_* knobs.
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GX_")},
            "PYTHONPATH": str(REPO),
            "GX_KAFKA_BOOTSTRAP": broker.bootstrap_servers,
            "GX_DATABASE_URL": dsn,
            "GX_GATEWAY_MASTER_KEY": master_key,
            "GX_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }
        mock = ["--mock-broker"]
        args = {
            "engine": ["engine", "--shard", "0", *mock],
            "settle": ["settle"],
            "marketdata": ["marketdata", *mock],
            "provision": ["provision", *mock],
            "clock": ["clock"],
            "gateway": ["gateway", *mock, "--port", str(self.gateway_port)],
        }
        self.stages = {
            name: Stage(name, args[name], self.env, log_dir / f"{name}.log") for name in STAGES
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    def start(self) -> None:
        for stage in self.stages.values():
            stage.start()
        self.wait_ready()

    def wait_ready(self, names: tuple[str, ...] = STAGES, timeout_s: float = READY_WAIT_S) -> None:
        for name in names:
            self.stages[name].wait_ready(timeout_s)

    def kill(self, *names: str) -> None:
        for name in names:
            self.stages[name].kill()

    def restart(self, *names: str) -> None:
        for name in names:
            self.stages[name].start()
        self.wait_ready(names)

    def dead(self) -> list[str]:
        """The stages that exited by themselves."""
        return [name for name, stage in self.stages.items() if not stage.alive()]

    def stop(self) -> dict[str, int | None]:
        return {name: stage.terminate() for name, stage in reversed(self.stages.items())}

    cwd = REPO

    @staticmethod
    def gx_argv() -> list[str]:
        return [sys.executable, "-m", "exchange.cli.gx"]

    def gx(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a one-shot `gx` command (audit, keys, funds) against the cluster."""
        return subprocess.run(
            [sys.executable, "-m", "exchange.cli.gx", *args],
            cwd=REPO,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
