"""Atomic checkpoints and the forecast scorer's exact save/restore."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from streamwatch.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    plain_state,
    save_checkpoint,
)
from streamwatch.detect.base import KindBatch
from streamwatch.detect.forecast_scorer import ForecastScorer
from streamwatch.errors import CheckpointError
from streamwatch.kinds import get_kind
from streamwatch.model.config import Cell, ModelConfig

ICU = get_kind("icu_vitals")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(cell: Cell = "gru") -> ModelConfig:
    return ModelConfig(cell=cell, layers=2, dropout=0.2, hidden_size=8, window=8, burn_in=2,
                       batch_size=8, train_every=6, replay_every=2, warmup=3)


def run(scorer: ForecastScorer, start: int, stop: int, streams: int = 4) -> np.ndarray:
    """Test-then-train over seeded ICU-like waves; every 7th reading is 'anomalous'."""
    rng = np.random.default_rng(start)
    ids = [f"icu/bed-{i}" for i in range(streams)]
    scores = []
    for t in range(start, stop):
        values = 80 + 3 * rng.standard_normal((streams, len(ICU.channels)))
        values[rng.random(values.shape) < 0.1] = np.nan
        batch = KindBatch(ICU, ids, np.full(streams, float(t)), values)
        ok = (np.arange(streams) + t) % 7 != 0
        scores.append(scorer.score_many(batch).score)
        scorer.advance_many(batch, ok)
        scorer.learn_many(batch, ok)
    return np.array(scores)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_restored_scorer_continues_exactly_like_an_uninterrupted_one(
    tmp_path: Path, cell: Cell
) -> None:
    cfg = config(cell)
    original = ForecastScorer(ICU, cfg)
    run(original, 0, 40)
    path = save_checkpoint(tmp_path / "scorer.pt", original.state_dict(),
                           {"config": cfg.model_dump()})
    state, _ = load_checkpoint(path, expected_meta={"config": cfg.model_dump()})
    restored = ForecastScorer(ICU, cfg)
    restored.load_state_dict(state)
    assert restored.version == original.version > 0
    later_original, later_restored = run(original, 40, 80), run(restored, 40, 80)
    assert np.array_equal(later_original, later_restored)
    assert original.version == restored.version > 10
    for a, b in zip(original.model.parameters(), restored.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(original.trainer.optimizer.state_dict()["state"].values(),
                    restored.trainer.optimizer.state_dict()["state"].values(), strict=True):
        assert torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])


def test_checkpoint_file_loads_with_weights_only(tmp_path: Path) -> None:
    scorer = ForecastScorer(ICU, config())
    run(scorer, 0, 20)
    path = save_checkpoint(tmp_path / "s.pt", scorer.state_dict(), {})
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == CHECKPOINT_FORMAT
    assert payload["state"]["streams"]["stream_ids"] == [f"icu/bed-{i}" for i in range(4)]


def test_saving_replaces_atomically_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(target, {"n": 1}, {})
    save_checkpoint(target, {"n": 2}, {})
    assert load_checkpoint(target)[0] == {"n": 2}
    assert os.listdir(target.parent) == ["ckpt.pt"]


def test_a_failed_save_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = save_checkpoint(tmp_path / "ckpt.pt", {"n": torch.arange(3)}, {"v": 1})

    def dies_halfway(obj: object, handle: object) -> None:  # e.g. the disk fills up
        handle.write(b"PK\x03\x04 partial")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(target, {"n": torch.arange(5)}, {"v": 2})
    monkeypatch.undo()
    state, meta = load_checkpoint(target)
    assert state["n"].tolist() == [0, 1, 2] and meta == {"v": 1}
    assert os.listdir(tmp_path) == ["ckpt.pt"]


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "flipped-bit"])
def test_damaged_checkpoint_is_a_clear_error_saying_what_to_do(
    tmp_path: Path, damage: str
) -> None:
    path = save_checkpoint(tmp_path / "ckpt.pt", {"w": torch.randn(500)}, {})
    data = path.read_bytes()
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    elif damage == "garbage":
        data = b"not a checkpoint at all" * 20
    else:  # inside the tensor bytes: still unpickles, caught by the checksum
        i = data.index(torch.load(path, weights_only=True)["state"]["w"].numpy().tobytes()[:16])
        data = data[: i + 8] + bytes([data[i + 8] ^ 0x10]) + data[i + 9:]
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "--fresh-start" in str(info.value)


def test_missing_checkpoint_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nothing.pt")


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": 99, "meta": {}, "state": {}},
               path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)
    torch.save({"something": "else"}, path)
    with pytest.raises(CheckpointError, match="not a streamwatch checkpoint"):
        load_checkpoint(path)


def test_mismatched_settings_are_listed(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {}, {"kind": "icu_vitals", "hidden": 8})
    with pytest.raises(CheckpointError, match=r"hidden: saved 8, expected 16"):
        load_checkpoint(path, expected_meta={"kind": "icu_vitals", "hidden": 16})


def test_scorer_refuses_state_saved_with_another_config() -> None:
    scorer = ForecastScorer(ICU, config())
    other = ForecastScorer(ICU, config().model_copy(update={"hidden_size": 16}))
    with pytest.raises(CheckpointError, match="hidden_size: saved 8 vs now 16"):
        other.load_state_dict(scorer.state_dict())
    state = scorer.state_dict()
    state["format_version"] = 2
    with pytest.raises(CheckpointError, match="format version"):
        scorer.load_state_dict(state)


def test_a_failed_restore_leaves_the_scorer_untouched() -> None:
    scorer = ForecastScorer(ICU, config())
    run(scorer, 0, 20)
    before = scorer.score_many(
        KindBatch(ICU, ["icu/bed-0"], np.array([20.0]), np.full((1, 7), 80.0))).score
    state = scorer.state_dict()
    del state["trainer"]["replay"]
    with pytest.raises(CheckpointError, match="replay"):
        scorer.load_state_dict(state)
    after = scorer.score_many(
        KindBatch(ICU, ["icu/bed-0"], np.array([20.0]), np.full((1, 7), 80.0))).score
    assert np.array_equal(before, after) and before[0] != 0.0


def test_numpy_values_are_refused_on_save_unless_made_plain(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"\['state'\]\['x'\] is a numpy.ndarray"):
        save_checkpoint(tmp_path / "n.pt", {"x": np.zeros(3)}, {})
    assert not (tmp_path / "n.pt").exists()
    path = save_checkpoint(tmp_path / "n.pt", plain_state({"x": np.zeros(3), "k": np.int64(2)}),
                           {})
    state, _ = load_checkpoint(path)
    assert state["x"].tolist() == [0.0, 0.0, 0.0] and state["k"] == 2


def test_unusual_tensors_round_trip_and_are_checksummed(tmp_path: Path) -> None:
    state = {
        "empty": torch.zeros(3, 0),
        "expanded": torch.zeros(3).expand(4, 3),
        "transposed": torch.arange(12.0).reshape(3, 4).T,
        "bf16": torch.ones(3, dtype=torch.bfloat16),
        "flags": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
    }
    path = save_checkpoint(tmp_path / "odd.pt", state, {})
    loaded, _ = load_checkpoint(path)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def _sha256_era_file(path: Path, state: dict[str, object], meta: dict[str, object],
                     *, damage: bool = False) -> None:
    """A checkpoint as streamwatch wrote it before CRC-32C: a SHA-256 of the same content
    stream, and torch's zip CRC-32 on."""
    import hashlib

    from streamwatch.checkpoint import CHECKPOINT_VERSION, _feed

    hasher = hashlib.sha256()
    _feed(hasher, {"meta": meta, "state": state})
    digest = hasher.hexdigest()
    if damage:
        digest = ("0" if digest[0] != "0" else "1") + digest[1:]
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                "meta": meta, "state": state, "sha256": digest}, path)


def test_a_checkpoint_written_with_the_older_sha256_still_loads_and_is_checked(
    tmp_path: Path,
) -> None:
    state = {"w": torch.randn(50), "n": 3}
    _sha256_era_file(tmp_path / "old.pt", state, {"kind": "icu_vitals"})
    loaded, meta = load_checkpoint(tmp_path / "old.pt", expected_meta={"kind": "icu_vitals"})
    assert torch.equal(loaded["w"], state["w"]) and meta == {"kind": "icu_vitals"}
    _sha256_era_file(tmp_path / "bad.pt", state, {}, damage=True)
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_checkpoint(tmp_path / "bad.pt")


def test_a_checkpoint_without_any_checksum_is_refused(tmp_path: Path) -> None:
    from streamwatch.checkpoint import CHECKPOINT_VERSION

    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                "meta": {}, "state": {"w": torch.zeros(2)}}, tmp_path / "none.pt")
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_checkpoint(tmp_path / "none.pt")


@pytest.mark.parametrize("where", range(0, 4000, 397))
def test_any_flipped_bit_in_the_tensor_bytes_is_caught(tmp_path: Path, where: int) -> None:
    """With torch's own zip CRC off, the CRC-32C is what catches damage in tensor data."""
    weights = torch.randn(1000)
    path = save_checkpoint(tmp_path / "c.pt", {"w": weights}, {})
    data = bytearray(path.read_bytes())
    i = bytes(data).index(weights.numpy().tobytes()[:16]) + where
    data[i] ^= 1 << (where % 8)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        load_checkpoint(path)


# -- the encoding the Kafka state store sends (encode_checkpoint) ------------------------


def _encoded(state: dict[str, object], meta: dict[str, object] | None = None) -> bytes:
    from streamwatch.checkpoint import encode_checkpoint

    return b"".join(bytes(part) for part in encode_checkpoint(state, meta or {}))


def test_the_tensor_encoding_round_trips_every_plain_value_and_keeps_shared_tensors() -> None:
    from streamwatch.checkpoint import decode_checkpoint

    shared = torch.arange(6.0).reshape(2, 3)
    state = {
        "empty": torch.zeros(3, 0), "expanded": torch.zeros(3).expand(4, 3),
        "transposed": torch.arange(12.0).reshape(3, 4).T,
        "bf16": torch.ones(3, dtype=torch.bfloat16), "flags": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5), "f64": torch.randn(5, dtype=torch.float64),
        "i32": torch.arange(4, dtype=torch.int32), "nan": torch.tensor([float("nan"), 1.0]),
        "dtype": torch.float64, "size": torch.Size([2, 3]), 7: ("a", None, 1.5, True),
        "nested": {"a": [shared, {"b": shared}]}, "shared": shared,
    }
    loaded, meta = decode_checkpoint(_encoded(state, {"kind": "icu_vitals"}), "test",
                                     expected_meta={"kind": "icu_vitals"})
    assert meta == {"kind": "icu_vitals"} and loaded.keys() == state.keys()
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            got = loaded[key]
            assert got.dtype == value.dtype and got.shape == value.shape, key
            assert torch.equal(got.nan_to_num(), value.nan_to_num()), key
        elif key != "nested":
            assert loaded[key] == value and type(loaded[key]) is type(value), key
    assert loaded["nested"]["a"][0] is loaded["nested"]["a"][1]["b"] is loaded["shared"]
    loaded["shared"] += 1  # writable, and not the saved tensor's memory
    assert shared[0, 0] == 0


def test_the_tensor_encoding_loads_no_class_or_function_whatever_the_bytes_say() -> None:
    """A forged tree naming a global (here os.system) is refused, never called."""
    import pickle

    from streamwatch.checkpoint import TENSORS_MAGIC, decode_checkpoint

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned > /dev/null",))

    tree = pickle.dumps({"format": CHECKPOINT_FORMAT, "evil": Evil()})
    data = TENSORS_MAGIC + len(tree).to_bytes(8, "little") + tree
    with pytest.raises(CheckpointError, match=r"refuses.*global posix.system refused"):
        decode_checkpoint(data, "forged")


@pytest.mark.parametrize("damage", ["truncated", "extra bytes", "not ours", "tree cut",
                                    "meta differs"])
def test_a_damaged_tensor_encoding_is_a_clear_error(damage: str) -> None:
    from streamwatch.checkpoint import decode_checkpoint

    data = _encoded({"w": torch.randn(100)}, {"kind": "icu_vitals"})
    expected = {"kind": "icu_vitals"}
    if damage == "truncated":
        data = data[:-8]
    elif damage == "extra bytes":
        data += b"\0" * 8
    elif damage == "not ours":
        data = b"PK\x03\x04" + data[4:]
    elif damage == "tree cut":
        data = data[:40]
    else:
        expected = {"kind": "machine_sensors"}
    with pytest.raises(CheckpointError, match=r"checkpoint|streamwatch") as info:
        decode_checkpoint(data, "topic:one", expected_meta=expected)
    assert "topic:one" in str(info.value) and "--fresh-start" in str(info.value)


def test_the_tensor_encoding_refuses_what_cannot_be_saved() -> None:
    with pytest.raises(CheckpointError, match="numpy"):
        _encoded({"a": np.zeros(2)})
