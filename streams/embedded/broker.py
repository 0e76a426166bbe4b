"""Run librdkafka's mock Kafka cluster in-process as the embedded broker (ARCHITECTURE 7).

The confluent-kafka wheel bundles librdkafka, and librdkafka exports a mock cluster that
speaks the real Kafka protocol on localhost listeners. This module drives its C API with
ctypes, so aiokafka producers, consumers, groups and transactions (and faust workers) can
run with no pre-running services.

Known limits of the mock, which code and tests must respect:

- It answers no CreateTopics request: create topics with :meth:`EmbeddedBroker.create_topic`
  (faust needs ``topic_allow_declare=False`` and ``topic_disable_leader=True``).
- Auto-created topics get 4 partitions; create topics explicitly to choose the count.
- It keeps only about 5 MiB or 100k batches per partition; older data is silently dropped.
- Transaction semantics are not real: aborted data is visible, transactional offsets are not
  stored and producers are not fenced. Exactly-once is only tested for real against Kafka.
- Transaction markers carry CRC 0, so aiokafka consumers need ``check_crcs=False`` against
  the mock (and only against the mock).
- ``broker_down`` disconnects a broker but does not move partition leadership; call
  :meth:`EmbeddedBroker.set_partition_leader` to simulate a failover.
- The C API is marked experimental by librdkafka and carries no ABI guarantee, so the
  signatures below are pinned to the header of librdkafka 2.x (``src/rdkafka_mock.h``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import platform
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["API_KEY_FETCH", "API_KEY_PRODUCE", "EmbeddedBroker", "EmbeddedBrokerError"]

API_KEY_PRODUCE = 0
API_KEY_FETCH = 1

broker_count_max = 64
errors_pushed_max = 10_000
_rd_kafka_producer = 0  # rd_kafka_type_t RD_KAFKA_PRODUCER
_rd_kafka_conf_ok = 0  # rd_kafka_conf_res_t RD_KAFKA_CONF_OK
_errstr_size = 512
# Apple arm64 passes variadic arguments on the stack, so the fixed-int binding of the variadic
# rd_kafka_mock_broker_push_request_error_rtts would be read as garbage there.
_varargs_like_fixed = not (sys.platform == "darwin" and platform.machine() == "arm64")


class EmbeddedBrokerError(RuntimeError):
    """Raise when the mock cluster cannot be loaded, started or driven."""


def _find_librdkafka() -> str:
    """Return the path of the librdkafka shared library bundled in the confluent-kafka wheel."""
    try:
        files = importlib.metadata.files("confluent-kafka") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for entry in files:
        name = entry.name
        # Wheels vendor it as confluent_kafka.libs/librdkafka-<hash>.so.1 (Linux) or
        # confluent_kafka/.dylibs/librdkafka.1.dylib (macOS).
        if name.startswith("librdkafka") and (".so" in name or name.endswith(".dylib")):
            path = Path(str(entry.locate()))
            if path.exists():
                return str(path)
    # A confluent-kafka built from source links the system library instead.
    system = ctypes.util.find_library("rdkafka")
    if system is not None:
        return system
    raise EmbeddedBrokerError(
        "librdkafka not found: install the confluent-kafka wheel (pip install confluent-kafka) "
        "or a system librdkafka"
    )


def _bind(lib: ctypes.CDLL, name: str, restype: object, argtypes: list[object]) -> None:
    """Declare the exact C signature of one function; a wrong one corrupts memory silently."""
    try:
        fn = getattr(lib, name)
    except AttributeError as exc:
        raise EmbeddedBrokerError(
            f"librdkafka lacks {name}: upgrade confluent-kafka to 2.3 or newer"
        ) from exc
    fn.restype = restype
    fn.argtypes = argtypes


_lib_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    """Load librdkafka once and declare the signatures this module calls."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        lib = ctypes.CDLL(_find_librdkafka())
        vp, c_int, i16, i32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int16, ctypes.c_int32
        size_t, char_p = ctypes.c_size_t, ctypes.c_char_p
        _bind(lib, "rd_kafka_conf_new", vp, [])
        _bind(lib, "rd_kafka_conf_destroy", None, [vp])
        _bind(lib, "rd_kafka_conf_set", c_int, [vp, char_p, char_p, char_p, size_t])
        # rd_kafka_new takes ownership of conf only on success.
        _bind(lib, "rd_kafka_new", vp, [c_int, vp, char_p, size_t])
        _bind(lib, "rd_kafka_destroy", None, [vp])
        _bind(lib, "rd_kafka_err2str", char_p, [c_int])
        _bind(lib, "rd_kafka_mock_cluster_new", vp, [vp, c_int])
        _bind(lib, "rd_kafka_mock_cluster_destroy", None, [vp])
        _bind(lib, "rd_kafka_mock_cluster_bootstraps", char_p, [vp])
        _bind(lib, "rd_kafka_mock_topic_create", c_int, [vp, char_p, c_int, c_int])
        _bind(lib, "rd_kafka_mock_partition_set_leader", c_int, [vp, char_p, i32, i32])
        _bind(lib, "rd_kafka_mock_broker_set_down", c_int, [vp, i32])
        _bind(lib, "rd_kafka_mock_broker_set_up", c_int, [vp, i32])
        _bind(
            lib,
            "rd_kafka_mock_push_request_errors_array",
            None,
            [vp, i16, size_t, ctypes.POINTER(c_int)],
        )
        # The C function is variadic: (mcluster, broker_id, ApiKey, cnt, ...) followed by cnt
        # (rd_kafka_resp_err_t err, int rtt_ms) pairs. ctypes cannot describe varargs, so it is
        # always called with cnt=1 and the pair declared as two fixed ints: all six arguments
        # then travel in integer registers, where the x86-64 SysV and Linux AArch64 ABIs treat
        # variadic and fixed int arguments alike.
        _bind(
            lib,
            "rd_kafka_mock_broker_push_request_error_rtts",
            c_int,
            [vp, i32, i16, size_t, c_int, c_int],
        )
        _bind(lib, "rd_kafka_mock_group_initial_rebalance_delay_ms", None, [vp, i32])
        _lib = lib
        return lib


class EmbeddedBroker:
    """A mock Kafka cluster with ``broker_count`` brokers (ids 1..broker_count) on localhost.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`. Clients connect with
    :attr:`bootstrap_servers`.
    """

    def __init__(self, broker_count: int = 3) -> None:
        """Describe a cluster of ``broker_count`` brokers; nothing runs until :meth:`start`."""
        if not 1 <= broker_count <= broker_count_max:
            raise ValueError(f"broker_count: expected 1..{broker_count_max}, found {broker_count}")
        self.broker_count = broker_count
        self._lock = threading.Lock()
        self._rk: int | None = None
        self._mcluster: int | None = None
        self._bootstrap_servers = ""

    # Lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Create the librdkafka handle and the mock cluster; return self."""
        lib = _load()
        with self._lock:
            if self._mcluster is not None:
                return self
            errstr = ctypes.create_string_buffer(_errstr_size)
            conf = lib.rd_kafka_conf_new()
            # The owning handle never produces; quiet its "no bootstrap.servers" warning.
            for key, value in ((b"log_level", b"3"), (b"client.id", b"gx-embedded-broker")):
                res = lib.rd_kafka_conf_set(conf, key, value, errstr, _errstr_size)
                if res != _rd_kafka_conf_ok:
                    lib.rd_kafka_conf_destroy(conf)
                    raise EmbeddedBrokerError(
                        f"rd_kafka_conf_set {key.decode()}: {errstr.value.decode()}"
                    )
            rk = lib.rd_kafka_new(_rd_kafka_producer, conf, errstr, _errstr_size)
            if not rk:
                lib.rd_kafka_conf_destroy(conf)
                raise EmbeddedBrokerError(f"rd_kafka_new failed: {errstr.value.decode()}")
            mcluster = lib.rd_kafka_mock_cluster_new(rk, self.broker_count)
            if not mcluster:
                lib.rd_kafka_destroy(rk)
                raise EmbeddedBrokerError(
                    "rd_kafka_mock_cluster_new failed: check that localhost ports can be bound"
                )
            self._rk = rk
            self._mcluster = mcluster
            self._bootstrap_servers = lib.rd_kafka_mock_cluster_bootstraps(mcluster).decode()
        return self

    def stop(self) -> None:
        """Destroy the mock cluster and its handle; clients still connected see disconnects."""
        with self._lock:
            mcluster, rk = self._mcluster, self._rk
            self._mcluster = self._rk = None
            self._bootstrap_servers = ""
        if mcluster is None:
            return
        lib = _load()
        # The cluster holds a reference to the handle, so it goes first.
        lib.rd_kafka_mock_cluster_destroy(mcluster)
        if rk is not None:
            lib.rd_kafka_destroy(rk)

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
        """Return the comma-separated ``host:port`` list clients bootstrap from."""
        self._cluster()
        return self._bootstrap_servers

    @property
    def running(self) -> bool:
        """Return whether the cluster is started."""
        return self._mcluster is not None

    # Controls --------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int, replication_factor: int = 1) -> None:
        """Create topic ``name``; the mock answers no CreateTopics, so this is the only way."""
        if partitions < 1:
            raise ValueError(f"partitions: expected >= 1, found {partitions}")
        if not 1 <= replication_factor <= self.broker_count:
            raise ValueError(
                f"replication_factor: expected 1..{self.broker_count} (the broker count), "
                f"found {replication_factor}"
            )
        err = _load().rd_kafka_mock_topic_create(
            self._cluster(), name.encode(), partitions, replication_factor
        )
        self._check(err, f"create topic {name!r}")

    def broker_down(self, broker_id: int) -> None:
        """Disconnect broker ``broker_id`` (-1: all) and refuse new connections to it."""
        self._check(
            _load().rd_kafka_mock_broker_set_down(self._cluster(), broker_id),
            f"set broker {broker_id} down",
        )

    def broker_up(self, broker_id: int) -> None:
        """Make broker ``broker_id`` (-1: all) accept connections again."""
        self._check(
            _load().rd_kafka_mock_broker_set_up(self._cluster(), broker_id),
            f"set broker {broker_id} up",
        )

    def set_partition_leader(self, topic: str, partition: int, broker_id: int) -> None:
        """Move the leader of ``topic``/``partition`` to ``broker_id`` (-1: leaderless)."""
        err = _load().rd_kafka_mock_partition_set_leader(
            self._cluster(), topic.encode(), partition, broker_id
        )
        self._check(err, f"set leader of {topic}[{partition}] to broker {broker_id}")

    def push_request_errors(self, api_key: int, errors: Sequence[int]) -> None:
        """Fail the next ``len(errors)`` requests of ``api_key`` cluster-wide, in order.

        Error codes are Kafka protocol codes (e.g. 6 NOT_LEADER_OR_FOLLOWER); 0 lets a
        request through. The failing request is answered without being applied.
        """
        _check_errors_len(len(errors))
        array = (ctypes.c_int * len(errors))(*errors)
        _load().rd_kafka_mock_push_request_errors_array(
            self._cluster(), api_key, len(errors), array
        )

    def push_request_error_rtts(
        self, broker_id: int, api_key: int, errors: Sequence[tuple[int, int]]
    ) -> None:
        """Answer the next requests of ``api_key`` on ``broker_id`` with (error, rtt_ms) pairs.

        Broker errors take precedence over cluster errors from :meth:`push_request_errors`.
        """
        if not _varargs_like_fixed:
            raise EmbeddedBrokerError(
                "push_request_error_rtts is unsupported on Apple arm64: use push_request_errors"
            )
        _check_errors_len(len(errors))
        lib, mcluster = _load(), self._cluster()
        # One pair per call keeps the variadic call inside the registers (see _load); the
        # mock appends to the broker's stack, so the order is the same as one call.
        for error, rtt_ms in errors:
            if rtt_ms < 0:
                raise ValueError(f"rtt_ms: expected >= 0, found {rtt_ms}")
            err = lib.rd_kafka_mock_broker_push_request_error_rtts(
                mcluster, broker_id, api_key, 1, error, rtt_ms
            )
            self._check(err, f"push error {error} to broker {broker_id}")

    def group_initial_rebalance_delay_ms(self, ms: int) -> None:
        """Set the group coordinator's initial rebalance delay (Kafka's default is 3000)."""
        if ms < 0:
            raise ValueError(f"ms: expected >= 0, found {ms}")
        _load().rd_kafka_mock_group_initial_rebalance_delay_ms(self._cluster(), ms)

    # Internals -------------------------------------------------------------------------

    def _cluster(self) -> int:
        mcluster = self._mcluster
        if mcluster is None:
            raise EmbeddedBrokerError("embedded broker is not running: call start() first")
        return mcluster

    @staticmethod
    def _check(err: int, action: str) -> None:
        if err != 0:
            reason = _load().rd_kafka_err2str(err).decode()
            raise EmbeddedBrokerError(f"{action}: librdkafka error {err} ({reason})")


def _check_errors_len(count: int) -> None:
    if count > errors_pushed_max:
        raise ValueError(f"errors: expected at most {errors_pushed_max}, found {count}")
