"""The changelog state store against the real broker, across the two Kafka clients: a
checkpoint larger than Kafka's 1 MB record limit goes out in chunks with one client and
comes back whole with the other."""

from __future__ import annotations

import uuid

import pytest
import torch

from streamwatch.state_store import KafkaStateStore, PartitionState
from streamwatch.transport import open_transport
from streamwatch.transport.base import TopicPartition

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize(("writer", "reader"), [("kafka-python", "confluent"),
                                                ("confluent", "kafka-python")])
def test_a_checkpoint_of_several_megabytes_written_by_one_client_is_restored_by_the_other(
    kafka_bootstrap: str, writer: str, reader: str
) -> None:
    topic = f"sw-{uuid.uuid4().hex[:10]}.state"
    tp = TopicPartition("readings", 0)
    replay = torch.randn(1500, 32, 15)  # ~2.9 MB, like a detector's replay buffer
    streams = {"stream_ids": ["icu/bed-001"], "h": torch.randn(1, 32)}
    out = open_transport(kafka_bootstrap, writer, session_timeout_ms=2000)  # type: ignore[arg-type]
    back = open_transport(kafka_bootstrap, reader, session_timeout_ms=2000)  # type: ignore[arg-type]
    try:
        store = KafkaStateStore(out, topic, "writer")  # default chunks: 512 KiB
        store.save({"replay": torch.zeros(1)}, {tp: PartitionState(10, streams)})
        store.save({"replay": replay}, {tp: PartitionState(20, streams)})
        store.close()
        snap = KafkaStateStore(back, topic, "reader").load({tp})
    finally:
        out.close()
        back.close()
    assert snap.partitions[tp].offset == 20
    assert torch.equal(snap.partitions[tp].streams["h"], streams["h"])
    assert snap.global_state is not None and torch.equal(snap.global_state["replay"], replay)
