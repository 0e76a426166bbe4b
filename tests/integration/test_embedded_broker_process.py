"""The embedded broker in a child process: the sandbox's broker, with the same controls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from aiokafka import AIOKafkaProducer

from streams.embedded.broker import EmbeddedBrokerError
from streams.embedded.broker_process import BrokerProcess

from .conftest import consume, run


@pytest.mark.timeout(60)
def test_a_broker_process_serves_clients_and_reports_control_errors() -> None:
    with BrokerProcess() as broker:
        assert broker.pid is not None and broker.pid != os.getpid()
        broker.create_topic("t", 2)
        with pytest.raises(EmbeddedBrokerError, match="already exists"):
            broker.create_topic("t", 2)
        with pytest.raises(ValueError, match="replication_factor"):
            broker.create_topic("u", 1, replication_factor=2)
        with pytest.raises(EmbeddedBrokerError, match="broker 99"):
            broker.broker_down(99)
        broker.group_initial_rebalance_delay_ms(0)

        async def round_trip() -> list[bytes]:
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all")
            await producer.start()
            try:
                for i in range(3):
                    await producer.send_and_wait("t", f"m{i}".encode(), partition=1)
            finally:
                await producer.stop()
            got = await consume(broker.bootstrap_servers, "t", 2, expected=3)
            return [value for _, value in got[1]]

        assert run(round_trip()) == [b"m0", b"m1", b"m2"]
    assert not broker.running
    with pytest.raises(EmbeddedBrokerError, match="start"):
        broker.create_topic("late", 1)


@pytest.mark.timeout(60)
def test_the_broker_process_does_not_outlive_a_parent_killed_by_sigkill() -> None:
    # The parent holds the broker's stdin; SIGKILL closes it, and the broker stops on EOF.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from streams.embedded.broker_process import BrokerProcess\n"
            "b = BrokerProcess().start()\n"
            "print(b.pid, flush=True)\n"
            "time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{child}/stat") as stat:  # a reaped-by-init zombie counts as gone
            if stat.read().split(")")[-1].split()[0] == "Z":
                return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail(f"broker process {child} still runs 20 s after its parent was killed")
