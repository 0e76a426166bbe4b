"""The embedded broker in a process of its own, as Kafka is a service of its own in production.

`gx sandbox` runs its broker this way, so the memory of each process is its own: the mock keeps
the newest few MiB of every partition (streams/embedded/broker.py), so the broker's memory grows
until every partition is full, and in one process with the exchange that growth would hide the
exchange's (or pass for a leak of it). It also keeps the broker's threads off the exchange's CPU
accounting, as a real cluster would be.

The child (`python -m streams.embedded.broker_process`) prints one JSON line with its bootstrap
servers, then answers one JSON request per line of stdin with one JSON line on stdout. It stops
when stdin closes, so it never outlives the process that started it, even one killed by SIGKILL.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import orjson

from streams.embedded.broker import EmbeddedBroker, EmbeddedBrokerError

__all__ = ["BrokerProcess"]

start_timeout_s = 30.0
stop_timeout_s = 5.0
# What a request may call: the broker's controls, nothing else of the object.
_CALLS = frozenset(
    {
        "create_topic",
        "broker_down",
        "broker_up",
        "set_partition_leader",
        "push_request_errors",
        "push_request_error_rtts",
        "group_initial_rebalance_delay_ms",
    }
)


class BrokerProcess:
    """An :class:`EmbeddedBroker` in a child process, with the same controls."""

    def __init__(self, broker_count: int = 1) -> None:
        self.broker_count = broker_count
        self._child: subprocess.Popen[bytes] | None = None
        self._bootstrap_servers = ""

    # Lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Start the child and wait for its bootstrap servers; return self."""
        if self._child is not None:
            return self
        child = subprocess.Popen(
            [sys.executable, "-m", "streams.embedded.broker_process", str(self.broker_count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._child = child
        try:
            hello = self._read()
        except EmbeddedBrokerError:
            self.stop()
            raise
        self._bootstrap_servers = str(hello["bootstrap"])
        return self

    def stop(self) -> None:
        """Close the child's stdin (it stops its cluster and exits); kill it if it hangs."""
        child, self._child = self._child, None
        self._bootstrap_servers = ""
        if child is None:
            return
        with contextlib.suppress(OSError):
            assert child.stdin is not None
            child.stdin.close()
        try:
            child.wait(stop_timeout_s)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # Queries ---------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        """The comma-separated ``host:port`` list clients bootstrap from."""
        if self._child is None:
            raise EmbeddedBrokerError("embedded broker is not running: call start() first")
        return self._bootstrap_servers

    @property
    def running(self) -> bool:
        """Whether the child runs."""
        return self._child is not None and self._child.poll() is None

    @property
    def pid(self) -> int | None:
        """The child's process id."""
        return None if self._child is None else self._child.pid

    # Controls (see EmbeddedBroker) -----------------------------------------------------

    def create_topic(self, name: str, partitions: int, replication_factor: int = 1) -> None:
        self._call("create_topic", name, partitions, replication_factor)

    def broker_down(self, broker_id: int) -> None:
        self._call("broker_down", broker_id)

    def broker_up(self, broker_id: int) -> None:
        self._call("broker_up", broker_id)

    def set_partition_leader(self, topic: str, partition: int, broker_id: int) -> None:
        self._call("set_partition_leader", topic, partition, broker_id)

    def push_request_errors(self, api_key: int, errors: Sequence[int]) -> None:
        self._call("push_request_errors", api_key, list(errors))

    def push_request_error_rtts(
        self, broker_id: int, api_key: int, errors: Sequence[tuple[int, int]]
    ) -> None:
        self._call("push_request_error_rtts", broker_id, api_key, [list(e) for e in errors])

    def group_initial_rebalance_delay_ms(self, ms: int) -> None:
        self._call("group_initial_rebalance_delay_ms", ms)

    # Internals -------------------------------------------------------------------------

    def _call(self, name: str, *args: Any) -> None:
        child = self._child
        if child is None or child.stdin is None:
            raise EmbeddedBrokerError("embedded broker is not running: call start() first")
        try:
            child.stdin.write(orjson.dumps({"call": name, "args": args}) + b"\n")
            child.stdin.flush()
        except OSError as error:
            raise EmbeddedBrokerError(f"embedded broker process is gone: {error}") from error
        answer = self._read()
        if "error" in answer:
            kind = ValueError if answer.get("kind") == "ValueError" else EmbeddedBrokerError
            raise kind(answer["error"])

    def _read(self) -> dict[str, Any]:
        child = self._child
        assert child is not None and child.stdout is not None
        line = child.stdout.readline()
        if not line:
            code = child.poll()
            raise EmbeddedBrokerError(
                f"embedded broker process exited (status {code}): see its error above"
            )
        answer: dict[str, Any] = orjson.loads(line)
        return answer


def _answer(broker: EmbeddedBroker, line: bytes) -> dict[str, Any]:
    try:
        request = orjson.loads(line)
        name, args = request["call"], request["args"]
        if name not in _CALLS:
            return {"error": f"unknown call {name!r}: expected one of {sorted(_CALLS)}"}
        getattr(broker, name)(*args)
    except ValueError as error:  # orjson.JSONDecodeError is one too
        return {"error": str(error), "kind": "ValueError"}
    except (EmbeddedBrokerError, KeyError, TypeError) as error:
        return {"error": f"{type(error).__name__}: {error}"}
    return {"ok": True}


def main(argv: Sequence[str]) -> int:
    """Run a cluster until stdin closes; answer one request per line."""
    # Ctrl-C reaches the whole process group: the parent stops its stages first, then this.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with EmbeddedBroker(broker_count=int(argv[0]) if argv else 1) as broker:
        out = sys.stdout.buffer
        out.write(orjson.dumps({"bootstrap": broker.bootstrap_servers}) + b"\n")
        out.flush()
        for line in sys.stdin.buffer:
            out.write(orjson.dumps(_answer(broker, line)) + b"\n")
            out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
