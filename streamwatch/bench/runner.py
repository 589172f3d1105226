"""The two phases of ``streamwatch bench kafka`` for one client (see ``streamwatch.bench``)."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from tqdm import tqdm

from streamwatch.bench.group import GroupRun
from streamwatch.bench.load import LoadProcess, LoadSpec, simulated_stream_ids
from streamwatch.bench.measure import (
    Sample,
    Sampled,
    ServiceRun,
    latency_stats,
    load_average,
    per_second,
    window_figures,
)
from streamwatch.bench.options import BenchOptions
from streamwatch.bench.report import PACE_DECIMALS, TARGETS
from streamwatch.errors import StreamwatchError

log = logging.getLogger(__name__)

#: Stream time starts this long before now, so no reading is ever "in the future".
HISTORY_S = 30 * 86_400


class _Key(msgspec.Struct):
    stream_id: str
    ts: float


_key_decoder = msgspec.json.Decoder(_Key)


def latency_phase_rate(opts: BenchOptions, client: str, sustained: float) -> float:
    """The latency phase's pace: ``opts.rate``, else ``latency_rate_fraction`` x the sustained
    rate, or x the client's throughput target when lower (``latency_rate_cap``).

    >>> latency_phase_rate(BenchOptions(), "confluent", 114_000.0)
    50000.0
    >>> latency_phase_rate(BenchOptions(latency_rate_cap=False), "confluent", 114_000.0)
    57000.0
    >>> latency_phase_rate(BenchOptions(), "confluent", 44_000.0)
    22000.0
    >>> latency_phase_rate(BenchOptions(rate=30_000.0), "confluent", 114_000.0)
    30000.0
    """
    if opts.rate is not None:
        return opts.rate
    cap = TARGETS.get(client, math.inf) if opts.latency_rate_cap else math.inf
    return opts.latency_rate_fraction * min(sustained, cap)


@dataclass(frozen=True)
class Phase1:
    """What the latency phase needs from the throughput phase."""

    checkpoint_dir: Path
    state_store: str  # kafka | directory
    state_topic: str
    instance: str
    readings_topic: str
    partitions: int
    next_ts: float  # after every reading of the pre-fill (scored or not)
    readings_per_s: float


class ClientBench:
    """Both phases for one Kafka client, sharing one broker and one work directory."""

    def __init__(self, opts: BenchOptions, client: str, bootstrap: str, workdir: Path,
                 broker_pid: int | None, producer_client: str) -> None:  # fmt: skip
        self.opts = opts
        self.client = client
        self.bootstrap = bootstrap
        self.workdir = workdir
        self.broker_pid = broker_pid
        self.producer_client = producer_client
        self.start_ts = float(math.floor(time.time()) - HISTORY_S)

    # -- settings and plumbing -------------------------------------------------------
    def settings(self, suffix: str, emit_scores: str = "all",
                 watch_streams: Sequence[str] = ()) -> Any:  # fmt: skip
        from streamwatch.config import load_settings

        o = self.opts
        names = ("readings", "scores", "alerts", "deadletter", "health")
        overrides: dict[str, Any] = {
            "kafka": {"bootstrap_servers": self.bootstrap, "client": self.client,
                      "session_timeout_ms": o.session_timeout_ms,
                      "client_config": {"fetch_max_wait_ms": o.fetch_max_wait_ms}},
            "topics": {**{n: f"bench-{suffix}.{n}" for n in names}, "partitions": o.partitions,
                       "state": f"bench-{suffix}.state"},
            "service": {"group_id": f"bench-{suffix}", "metrics_port": 0, "emit_scores": emit_scores,
                        "watch_streams": tuple(watch_streams) or None,
                        "checkpoint_dir": self.workdir / suffix, "state_store": o.state_store},
            "model": {"train_every": o.train_every},
        }  # fmt: skip
        return load_settings(o.config_file, _without_none(overrides))

    def watched_streams(self) -> list[str]:
        """The latency phase's watched streams: with Scores only around alerts, every
        ``latency_watch_every``-th stream of the load (none with a Score per reading)."""
        o = self.opts
        if o.latency_emit_scores == "all" or not o.latency_watch_every:
            return []
        return simulated_stream_ids(o.streams, o.seed)[::o.latency_watch_every]

    def transport(self, settings: Any) -> Any:
        from streamwatch.commands.detect import open_kafka

        return open_kafka(settings)

    def _bar(self, total: float, desc: str, unit: str) -> tqdm:  # type: ignore[type-arg]
        return tqdm(total=total, desc=f"{self.client}: {desc}", unit=unit, leave=False,
                    disable=not self.opts.progress, dynamic_ncols=True, mininterval=0.5)  # fmt: skip

    def _broker_cpu(self) -> float | None:
        if self.broker_pid is None:
            return None
        import psutil

        try:
            t = psutil.Process(self.broker_pid).cpu_times()
        except psutil.Error as exc:
            log.warning("cannot read the broker's CPU time: %s", exc)
            return None
        return float(t.user + t.system)

    def _wait_load(self, load: LoadProcess, until: str, bar: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = load.next_message(timeout=0.2)
            if msg is None:
                continue
            kind, payload = msg
            if kind == "progress" and bar is not None:
                bar.n = payload
                bar.refresh()
            elif kind == until:
                return payload
        raise StreamwatchError(f"the load process did not report {until!r} within {timeout:.0f} s")

    # -- phase 1 ---------------------------------------------------------------------
    def throughput(self) -> tuple[dict[str, Any], Phase1]:
        from streamwatch.commands.detect import build_service

        o = self.opts
        suffix = f"{self.client}-tp-{uuid.uuid4().hex[:8]}"
        settings = self.settings(suffix, o.throughput_emit_scores)
        transport = self.transport(settings)
        try:
            topic, parts = settings.topics.readings, settings.topics.partitions
            transport.create_topics({topic: parts})
            steps = math.ceil(o.prefill_rate_for(self.client) * (o.warmup_s + o.seconds) * 1.1
                              / o.streams)  # fmt: skip
            spec = LoadSpec(self.bootstrap, self.producer_client, topic, o.streams, o.seed,
                            self.start_ts, steps)  # fmt: skip
            load = LoadProcess(spec).start()
            with self._bar(spec.readings, "pre-fill", "rd") as bar:
                prefill = self._wait_load(load, "done", bar, timeout=3600)
            load.stop()
            relay = self._relay(settings, transport, spec.readings) if o.relay else None
            instance = f"bench-{suffix}"
            run: Sampled
            if o.detectors > 1:
                run = GroupRun(settings, [f"{instance}-{i}" for i in range(o.detectors)])
            else:
                run = ServiceRun(build_service(settings, transport, instance=instance))
            figures = self._measure_throughput(run, spec.readings)
        finally:
            transport.close()
        figures.update(prefill={k: round(v, 3) if isinstance(v, float) else v
                                for k, v in prefill.items()}, topic=topic,
                       scores_topic=settings.topics.scores, partitions=parts)  # fmt: skip
        if relay is not None:
            figures["relay"] = relay
        phase1 = Phase1(settings.service.checkpoint_dir, settings.service.state_store,
                        settings.topics.state, instance, topic, parts,
                        # past every step pre-filled: the detector goes on reading after
                        # `scored_total` is sampled, and its checkpointed training tick too; a
                        # latency phase starting behind that tick would never train (its
                        # staged windows grew to ~200 MB, and each checkpoint's snapshot to
                        # 0.6 s, the p99 latency's cause on 4 December)
                        self.start_ts + steps + 1,
                        figures["readings_per_s"] or 0.0)  # fmt: skip
        return figures, phase1

    def _relay(self, settings: Any, transport: Any, prefilled: int) -> dict[str, Any]:
        """The transport alone on the pre-filled topic (``bench.relay``), in as many
        processes as the detector phase, before the detectors read the same topic."""
        from streamwatch.bench.relay import relay_for

        o = self.opts
        out_topic = f"{settings.topics.readings.rsplit('.', 1)[0]}.relay"
        transport.create_topics({out_topic: settings.topics.partitions})
        run: Sampled
        if o.detectors > 1:
            names = [f"bench-relay-{i}" for i in range(o.detectors)]
            run = GroupRun(settings, names, relay_topic=out_topic)
        else:
            run = ServiceRun(relay_for(settings, transport, out_topic))
        figures = _windowed(run, self._relay_window, prefilled)
        figures.update(relayed_total=run.sample().readings, out_topic=out_topic,
                       processes=o.detectors)  # fmt: skip
        if isinstance(run, GroupRun):
            figures["per_process_relayed"] = run.per_member()
        return figures

    def _relay_window(self, run: Sampled, prefilled: int) -> dict[str, Any]:
        """As the throughput window; a relay that empties the pre-fill within its warm-up
        is measured from its first batch (``warmup_included``) rather than refused."""
        o = self.opts
        first, start, drained = self._warm_up(run, prefilled, "the relay")
        warmup_included = drained(start)
        if warmup_included:
            start = first
        broker0 = None if warmup_included else self._broker_cpu()  # not for a past window
        with self._bar(o.seconds, "relay (transport alone)", "s") as bar:
            end = run.wait_until(
                lambda s: s.t >= start.t + o.seconds or drained(s), o.seconds + 120,
                "the end of the relay's window",
                lambda s: setattr(bar, "n", round(min(s.t - start.t, o.seconds), 1)))  # fmt: skip
        figures = window_figures(start, end)
        for key in ("training_steps", "checkpoints"):
            figures.pop(key)
        figures.update(drained_early=drained(end), warmup_included=warmup_included,
                       broker_cpu_s=_cpu_between(broker0, self._broker_cpu()))  # fmt: skip
        if figures["drained_early"]:
            log.warning("%s: the relay emptied the pre-fill after %.1f s: its rate is a lower "
                        "bound; raise --prefill-rate for a full window", self.client,
                        figures["elapsed_s"])  # fmt: skip
        return figures

    def _measure_throughput(self, run: Any, prefilled: int) -> dict[str, Any]:
        figures = _windowed(run, self._throughput_window, prefilled)
        figures["scored_total"] = run.sample().readings
        if isinstance(run, GroupRun):
            figures["per_detector_scored"] = run.per_member()
        return figures

    def _warm_up(self, run: Sampled, prefilled: int, who: str
                 ) -> tuple[Sample, Sample, Callable[[Sample], bool]]:  # fmt: skip
        """Samples at the first batch and at the end of the warm-up after it (or when the
        pre-fill ran out, if sooner), and the test for "the pre-fill ran out"."""
        o = self.opts

        def drained(s: Sample) -> bool:
            return s.readings + s.dead_letters >= prefilled

        first = run.wait_until(lambda s: s.batches > 0, 120, f"{who}'s first batch")
        start = run.wait_until(lambda s: s.t >= first.t + o.warmup_s or drained(s),
                               o.warmup_s + 120, f"the end of {who}'s warm-up")  # fmt: skip
        return first, start, drained

    def _throughput_window(self, run: Sampled, prefilled: int) -> dict[str, Any]:
        o = self.opts
        first, start, drained = self._warm_up(run, prefilled, "the detector")
        if drained(start):
            raise StreamwatchError(
                f"{self.client}: the detector consumed the whole pre-fill ({prefilled} readings) "
                "within the warm-up: raise --prefill-rate so the measurement has data")
        load_start, broker0 = load_average(), self._broker_cpu()
        spy = self._start_profile(o.seconds, "throughput")
        samples = [start]
        with self._bar(o.seconds, "throughput", "s") as bar:

            def tick(s: Sample) -> None:
                samples.append(s)
                bar.n = round(min(s.t - start.t, o.seconds), 1)
                rate = (s.readings - start.readings) / max(s.t - start.t, 1e-9)
                bar.set_postfix(rd_s=f"{rate:,.0f}")

            end = run.wait_until(lambda s: s.t >= start.t + o.seconds or drained(s),
                                 o.seconds + 120, "the end of the measurement", tick)  # fmt: skip
        broker1 = self._broker_cpu()
        figures = window_figures(start, end)
        figures.update(
            warmup_s=round(start.t - first.t, 3), drained_early=drained(end),
            per_second=per_second(samples),
            merge_held_max=max(s.held for s in samples),
            paused_partitions_max=max(s.paused for s in samples),
            broker_cpu_s=_cpu_between(broker0, broker1),
            load_average_start=load_start, load_average_end=load_average())  # fmt: skip
        if figures["drained_early"]:
            log.warning("%s: the pre-fill ran out after %.1f s of measurement; raise "
                        "--prefill-rate for a full window", self.client, figures["elapsed_s"])  # fmt: skip
        if spy is not None:
            figures["profile"] = self._finish_profile(spy, figures["readings"],
                                                      figures["detector_thread_cpu_s"])
        if not figures["readings"]:  # counted when a batch ends: none ended in the window
            raise StreamwatchError(
                f"{self.client}: no batch finished within the {o.seconds:g} s measurement "
                f"(training steps in it: {figures['training_steps']}): a batch took longer "
                "than the window; raise --seconds, or --train-every for fewer optimiser steps "
                "per batch")
        return figures

    # -- phase 2 ---------------------------------------------------------------------
    def latency(self, phase1: Phase1) -> dict[str, Any]:
        from streamwatch.commands.detect import build_service

        o = self.opts
        rate = latency_phase_rate(o, self.client, phase1.readings_per_s)
        if rate <= 0:
            raise StreamwatchError(f"{self.client}: no latency rate (measured 0 readings/s)")
        suffix = f"{self.client}-lat-{uuid.uuid4().hex[:8]}"
        watched = self.watched_streams()
        settings = self.settings(suffix, o.latency_emit_scores, watched)
        transport = self.transport(settings)
        try:
            topic, parts = settings.topics.readings, settings.topics.partitions
            transport.create_topics({topic: parts})
            steps = 1 + math.ceil(rate * (o.warmup_s + o.seconds) / o.streams)
            spec = LoadSpec(self.bootstrap, self.producer_client, topic, o.streams, o.seed,
                            phase1.next_ts, steps, rate=rate, primer_steps=1,
                            linger_ms=o.load_linger_ms)  # fmt: skip
            load = LoadProcess(spec).start()
            run: Any = None
            try:
                self._wait_load(load, "primed", None, timeout=1800)
                if o.detectors > 1:
                    run = GroupRun(settings, [f"bench-{suffix}-{i}" for i in range(o.detectors)],
                                   restore=phase1).start()  # fmt: skip
                else:
                    service = build_service(settings, transport, instance=f"bench-{suffix}")
                    service.detector_factory = _restore_factory(settings, phase1)
                    run = ServiceRun(service).start()
                # every member in the group, holding partitions, before the paced load: a
                # member joining late would rebalance the group mid-measurement
                members = min(o.detectors, parts)
                primed = run.wait_until(
                    lambda s: s.readings >= o.streams and s.members_assigned >= members, 120,
                    f"the primer step's scores and {members} detectors holding partitions")
                sent = self._paced(run, load, rate)
                load.stop()
                drained = self._drain(run, sent["sent"])
                # training on during the latency phase too (it was not, unseen, while the
                # phase's readings were behind the restored training tick)
                after = run.sample().training_steps
                trained = (None if after is None or primed.training_steps is None
                           else after - primed.training_steps)  # fmt: skip
            finally:
                load.stop()
                if run is not None:
                    run.stop()
            readings = _keys(transport, topic, parts)
            scores = _keys(transport, settings.topics.scores, parts)
        finally:
            transport.close()
        measure_from = int((sent["paced_start_epoch"] + o.warmup_s) * 1000)
        every = o.latency_emit_scores == "all"
        stats = latency_stats(readings, scores, measure_from, every_reading=every,
                              watched=watched)  # fmt: skip
        final = run.sample()
        if not every:  # a reading without a Score is expected: was each one processed?
            stats["missing"] = max(0, stats["readings"] - final.readings - final.dead_letters)
        stats["emit_scores"] = o.latency_emit_scores
        stats["watched_streams"] = len(watched)
        broker_cpu = sent.pop("broker_cpu_s", None)  # over the paced load
        stats["broker_cpu_share_of_one_core"] = (
            None if broker_cpu is None or not sent["elapsed_s"]
            else round(broker_cpu / sent["elapsed_s"], 3))
        stats.update(rate=round(rate, PACE_DECIMALS), measure_from_ms=measure_from, topic=topic,
                     scores_topic=settings.topics.scores,
                     producer={k: round(v, 3) if isinstance(v, float) else v for k, v in sent.items()},
                     drained_within_s=drained, dead_letters=final.dead_letters,
                     training_steps=trained)  # fmt: skip
        if isinstance(run, GroupRun):
            stats["per_detector_scored"] = run.per_member()
        if stats["missing"] or stats["watched_missing"]:
            log.warning("%s: %d readings not processed, %d of the watched streams' without "
                        "a Score (examples %s)", self.client, stats["missing"],
                        stats["watched_missing"], stats["missing_examples"])  # fmt: skip
        return stats

    def _paced(self, run: Sampled, load: LoadProcess, rate: float) -> dict[str, Any]:
        o = self.opts
        load.go()
        t0, total, broker0 = time.monotonic(), o.warmup_s + o.seconds, self._broker_cpu()
        with self._bar(total, f"latency @ {rate:,.0f} rd/s", "s") as bar:
            while True:
                run.check()
                msg = load.next_message(timeout=0.2)
                bar.n = round(min(time.monotonic() - t0, total), 1)
                bar.refresh()
                if msg is not None and msg[0] == "done":
                    broker1 = self._broker_cpu()
                    return {**msg[1], "broker_cpu_s": None if broker0 is None or broker1 is None
                            else round(broker1 - broker0, 3)}
                if time.monotonic() - t0 > total * 3 + 120:
                    raise StreamwatchError("the paced load did not finish in time")

    def _drain(self, run: Sampled, sent: int) -> float | None:
        """Seconds until every sent reading is scored, or None after the drain timeout."""
        t0 = time.monotonic()
        try:
            run.wait_until(lambda s: s.readings + s.dead_letters >= sent,
                           self.opts.drain_timeout_s, "every reading to be scored")  # fmt: skip
        except StreamwatchError as exc:
            run.check()
            log.warning("%s: %s; the missing readings are reported", self.client, exc)
            return None
        return round(time.monotonic() - t0, 3)

    # -- profile ---------------------------------------------------------------------
    def _start_profile(self, seconds: float, phase: str) -> tuple[Any, Path] | None:
        if not self.opts.profile:
            return None
        import os

        from streamwatch.bench.profile import start_py_spy

        out = self.workdir / f"py-spy-{self.client}-{phase}.txt"
        return start_py_spy(os.getpid(), seconds, out), out

    def _finish_profile(self, spy: tuple[Any, Path], readings: int, cpu_s: float) -> dict[str, Any]:
        from streamwatch.bench.profile import parse_raw, summarise

        proc, out = spy
        try:
            text, _ = proc.communicate(timeout=60)
        except Exception:
            proc.kill()
            raise
        if proc.returncode != 0 or not out.exists():
            raise StreamwatchError(f"py-spy failed (code {proc.returncode}): "
                                   f"{text.decode(errors='replace')[-500:]}")  # fmt: skip
        with out.open() as f:
            counts = parse_raw(f, "streamwatch-bench-detector")
        summary = summarise(counts, readings, cpu_s)
        if self.opts.profile_dir is not None:
            self.opts.profile_dir.mkdir(parents=True, exist_ok=True)
            kept, n = self.opts.profile_dir / out.name, 1
            while kept.exists():  # another round's (--repeat): keep both
                n += 1
                kept = self.opts.profile_dir / f"{out.stem}-{n}{out.suffix}"
            shutil.copyfile(out, kept)
            summary["stacks_file"] = str(kept)
            log.info("py-spy stacks kept", extra={"path": str(kept)})
        return summary


def _windowed(run: Any, window: Callable[[Any, int], dict[str, Any]], prefilled: int
              ) -> dict[str, Any]:  # fmt: skip
    """Start ``run``, measure its window, stop it (also when the measurement fails)."""
    run.start()
    try:
        figures = window(run, prefilled)
    except BaseException:
        run.stop()
        raise
    run.stop()
    return figures


def _cpu_between(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(after - before, 3)


def _without_none(tree: dict[str, Any]) -> dict[str, Any]:
    """Overrides minus unset (None) values: ``load_settings`` takes a missing section whole."""
    return {k: _without_none(v) if isinstance(v, dict) else v for k, v in tree.items()
            if v is not None}  # fmt: skip


def _restore_factory(settings: Any, phase1: Phase1) -> Callable[[], Any]:
    """A detector factory that starts from phase 1's final checkpoint (warm model, warm
    thresholds and per-stream state), as a restarted detector would."""
    from streamwatch.commands.detect import build_detector, open_kafka
    from streamwatch.state_store import FileStateStore, KafkaStateStore
    from streamwatch.transport.base import TopicPartition

    def load(wanted: set[TopicPartition]) -> Any:
        if phase1.state_store == "directory":
            return FileStateStore(phase1.checkpoint_dir, phase1.instance).load(wanted)
        transport = open_kafka(settings)
        store = KafkaStateStore(transport, phase1.state_topic, "bench-restore")
        try:
            return store.load(wanted)
        finally:
            store.close()
            transport.close()

    def factory() -> Any:
        detector = build_detector(settings)
        wanted = {TopicPartition(phase1.readings_topic, p) for p in range(phase1.partitions)}
        snap = load(wanted)
        where = phase1.checkpoint_dir if phase1.state_store == "directory" else phase1.state_topic
        if snap.global_state is None:
            raise StreamwatchError(f"the throughput phase left no checkpoint in {where}")
        detector.load_global_state(snap.global_state)
        for state in snap.partitions.values():
            detector.import_streams(state.streams)
        return detector

    return factory


def _keys(transport: Any, topic: str, partitions: int) -> list[tuple[str, float, int]]:
    """``(stream_id, ts, CreateTime ms)`` of every record of ``topic``."""
    from streamwatch.transport.base import TopicPartition

    consumer = transport.consumer(None)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        want = sum(consumer.end_offsets(tps).values())
        out: list[tuple[str, float, int]] = []
        stall = time.monotonic() + 30
        while len(out) < want and time.monotonic() < stall:
            batch = consumer.poll(0.5, 100_000)
            if batch:
                stall = time.monotonic() + 30
            for m in batch:
                k = _key_decoder.decode(m.value)
                out.append((k.stream_id, k.ts, m.timestamp_ms))
        if len(out) < want:
            raise StreamwatchError(f"read {len(out)} of {want} records of {topic} back")
        return out
    finally:
        consumer.close()


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="streamwatch-bench-"))
