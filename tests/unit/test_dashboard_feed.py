"""The dashboard feed over the real in-memory transport (same protocol as Kafka)."""

from __future__ import annotations

import logging
import time

import pytest

from dashboards.feed import FEED_TOPICS, Feed, FeedTopics
from dashboards.store import DashboardStore
from streamwatch.errors import ConfigError
from streamwatch.schema import DeadLetter, Health, encode
from streamwatch.transport import ALERTS, DEADLETTER, HEALTH, SCORES, MemoryTransport
from tests.unit.test_dashboard_store import alert, score


@pytest.fixture
def bus() -> MemoryTransport:
    transport = MemoryTransport(session_timeout_ms=1000)
    transport.create_topics({topic: 2 for topic in FEED_TOPICS})
    return transport


def drain(feed: Feed, expected: int) -> int:
    """Poll until ``expected`` records arrived (or 10 s passed), then once more for extras."""
    total, deadline = 0, time.monotonic() + 10
    while total < expected and time.monotonic() < deadline:
        total += feed.run_once()
    return total + feed.run_once()


def health(detector: str = "det-1") -> Health:
    return Health(detector_id=detector, ts=5.0, readings_per_s=250.0, consumer_lag=3,
                  training_loss=0.4, training_steps=12, dead_letters={"schema": 1},
                  open_alerts=1, streams=2)


def dead() -> DeadLetter:
    return DeadLetter(code="schema", reason="values.hr: Expected `float | null`, got `str`",
                      field="values.hr", topic="streamwatch.readings", partition=0, offset=7,
                      payload="{}", payload_encoding="utf-8", payload_size=2,
                      payload_truncated=False, ts=5.0)


def test_every_output_topic_lands_in_the_store(bus: MemoryTransport) -> None:
    producer = bus.producer()
    for i in range(10):
        producer.send(SCORES, encode(score("icu/bed-01", float(i))), key=b"icu/bed-01")
    producer.send(ALERTS, encode(alert("icu/bed-01", 5.0)), key=b"icu/bed-01")
    producer.send(HEALTH, encode(health()), key=b"det-1")
    producer.send(DEADLETTER, encode(dead()))
    producer.flush()
    store = DashboardStore()
    feed = Feed(bus, store, poll_timeout_s=0.05)
    assert drain(feed, 13) == 13
    series = store.series("icu/bed-01", 0.0)
    assert series is not None and series.ts.tolist() == [float(i) for i in range(10)]
    assert [a.alert_id for a in store.alerts()] == [alert("icu/bed-01", 5.0).alert_id]
    assert store.health()["det-1"][-1].readings_per_s == 250.0
    assert store.dead_letters() == {"schema": (1, dead().reason)}
    assert feed.consumed[SCORES] == 10
    feed.stop()


def test_undecodable_records_are_counted_and_logged_and_the_feed_goes_on(
        bus: MemoryTransport, caplog: pytest.LogCaptureFixture) -> None:
    producer = bus.producer()
    producer.send(SCORES, b"{not json", key=b"k")
    producer.send(SCORES, b'{"v":1,"stream_id":"s"}', key=b"k")
    producer.send(ALERTS, None, key=b"k")
    producer.send(SCORES, encode(score("s", 1.0)), key=b"k")
    producer.flush()
    store = DashboardStore()
    feed = Feed(bus, store, poll_timeout_s=0.05)
    with caplog.at_level(logging.WARNING, logger="dashboards.feed"):
        assert drain(feed, 4) == 4
    stats = store.stats()
    assert stats.undecodable == {SCORES: 2, ALERTS: 1}
    assert stats.streams == 1 and stats.last_undecodable is not None
    assert sum("undecodable record" in r.getMessage() for r in caplog.records) == 3
    assert "required field is missing" in caplog.text
    feed.stop()


def test_backfill_starts_each_partition_that_many_records_before_its_end(
        bus: MemoryTransport) -> None:
    producer = bus.producer()
    for i in range(50):
        producer.send(SCORES, encode(score("s", float(i))), key=b"s")
    producer.flush()
    store = DashboardStore()
    feed = Feed(bus, store, backfill=5, poll_timeout_s=0.05)
    assert drain(feed, 5) == 5
    series = store.series("s", 0.0)
    assert series is not None and series.ts.tolist() == [45.0, 46.0, 47.0, 48.0, 49.0]
    feed.stop()


def test_each_dashboard_gets_its_own_group_and_sees_every_partition(
        bus: MemoryTransport) -> None:
    producer = bus.producer()
    beds = [f"icu/bed-{i:02d}" for i in range(8)]
    for bed in beds:
        producer.send(SCORES, encode(score(bed, 1.0)), key=bed.encode())
    producer.flush()
    stores = [DashboardStore(), DashboardStore()]
    feeds = [Feed(bus, s, poll_timeout_s=0.05) for s in stores]
    assert feeds[0].group_id != feeds[1].group_id
    assert [drain(f, len(beds)) for f in feeds] == [len(beds), len(beds)]
    assert all(s.stats().streams == len(beds) for s in stores)
    for f in feeds:
        f.stop()


def test_background_thread_follows_new_records_until_stopped(bus: MemoryTransport) -> None:
    store = DashboardStore()
    feed = Feed(bus, store, poll_timeout_s=0.05).start()
    producer = bus.producer()
    deadline = time.monotonic() + 10
    i = 0
    while store.stats().points < 20 and time.monotonic() < deadline:
        producer.send(SCORES, encode(score("s", float(i))), key=b"s")
        producer.flush()
        i += 1
        time.sleep(0.01)
    assert store.stats().points >= 20
    assert feed.running
    feed.stop()
    assert not feed.running


def test_feed_arguments_name_the_allowed_range(bus: MemoryTransport) -> None:
    with pytest.raises(ConfigError, match=r"poll_timeout_s must be in \(0, 60\]"):
        Feed(bus, DashboardStore(), poll_timeout_s=0)
    with pytest.raises(ConfigError, match="backfill must be in"):
        Feed(bus, DashboardStore(), backfill=-1)


def test_topic_names_come_from_settings_and_must_differ() -> None:
    bus = MemoryTransport(session_timeout_ms=1000)
    topics = FeedTopics(scores="t.scores", alerts="t.alerts", health="t.health",
                        deadletter="t.dead")
    bus.create_topics({name: 1 for name in topics.names()})
    producer = bus.producer()
    producer.send("t.scores", encode(score("s", 1.0)), key=b"s")
    producer.send("t.dead", encode(dead()))
    producer.flush()
    store = DashboardStore()
    feed = Feed(bus, store, topics=topics, poll_timeout_s=0.05)
    assert drain(feed, 2) == 2
    assert store.stats().points == 1 and store.dead_letters()["schema"][0] == 1
    feed.stop()
    with pytest.raises(ConfigError, match="four topics must differ"):
        Feed(bus, store, topics=FeedTopics(scores="x", alerts="x"))
