"""Options of ``streamwatch bench kafka`` (checked on construction, ranges in the errors).

>>> BenchOptions(clients=("confluent",), seconds=10).prefill_rate_for("confluent")
150000.0
>>> BenchOptions(clients=("kafka",))
Traceback (most recent call last):
...
streamwatch.errors.ConfigError: clients must be kafka-python and/or confluent, got 'kafka'
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streamwatch.bench.report import TARGETS
from streamwatch.errors import ConfigError

CLIENTS = ("kafka-python", "confluent")


@dataclass(frozen=True)
class BenchOptions:
    """What to run.

    Parameters
    ----------
    clients
        Kafka clients to measure, in order (``kafka-python``, ``confluent``).
    streams
        ICU beds sending 1 reading per simulated second each, 1-100,000.
    seconds
        Length of each measurement window (throughput and latency), > 0.
    warmup_s
        Time excluded before each window (after the first scored batch; after the start of
        the paced load), >= 0.
    rate
        Latency phase at this many readings/s; ``None`` = ``latency_rate_fraction`` times
        the sustained rate measured for the client, or times its throughput target if that
        is lower and ``latency_rate_cap`` (the latency target is stated at half the
        target rate: ``report.latency_rate_needed``).
    latency_rate_fraction
        In (0, 1].
    latency_rate_cap
        See ``rate``; False (``--max``): the fraction of the measured rate however high.
    train_every
        Overrides ``model.train_every`` (learned readings per optimiser step), >= 1.
    bootstrap_servers
        Kafka cluster to use; ``None`` starts a Tansu broker for the run.
    partitions
        Partitions of the bench topics; ``None`` = the settings' ``topics.partitions``.
    prefill_rate
        The throughput phase pre-fills ``prefill_rate * (warmup_s + seconds) * 1.1``
        readings; ``None`` = 1.5 x the client's target. Should exceed the real rate, or the
        window ends early (reported as ``drained_early``).
    seed
        Simulator seed.
    producer_client
        Client of the load process; ``None`` = confluent when installed (cheapest per
        record, leaves the most CPU to the detector), else kafka-python.
    profile
        Sample the detector thread with py-spy during the throughput window.
    profile_dir
        Keep py-spy's raw stacks (collapsed, for flame graphs) in this directory.
    progress
        tqdm progress bars.
    throughput_emit_scores
        ``all`` (a Score per reading, default) or ``alerts`` (Scores only around alerts) in
        the throughput phase.
    latency_emit_scores
        The same for the latency phase (default ``all``: every reading is joined to its
        Score). With ``alerts`` the percentiles cover the readings that got a Score (those
        around alerts, and every reading of the watched streams: ``latency_watch_every``),
        and ``missing`` counts the sent readings the detectors did not process.
    latency_watch_every
        With ``latency_emit_scores`` ``alerts``: every this-many-th stream of the load
        (the 1st, the (n+1)th, ...) is watched (``service.watch_streams``), so each of its
        readings gets a Score and must be joined to it (``watched_missing``). Those
        readings, spread over every partition and second, make a sample of the percentiles
        that does not hang on where alerts happen to be. 0: none watched.
    drain_timeout_s
        After the paced load, wait at most this long for every reading's Score, > 0.
    session_timeout_ms
        Consumer-group session timeout (group join takes about half of it on Tansu).
    fetch_max_wait_ms
        The detector consumer's fetch wait (``client_config['fetch_max_wait_ms']``), 0-60,000.
        Tansu answers a fetch only when this wait expires, not when data arrives (real
        Kafka answers at once): with the clients' 500 ms default that alone costs ~150 ms
        p50 / ~300 ms p99 of latency on Tansu.
    load_linger_ms
        The latency phase's load producer ``linger_ms`` (default 5, the product's), 0-1,000.
        Tansu's in-memory log costs more per request the more record batches a partition
        holds (docs/bench.md), and a paced load at 5 ms makes ~200 small batches per
        partition per second. The time waited counts in the measured latency.
    config_file
        Settings file (TOML/JSON) for model, detector and service settings.
    state_store
        ``kafka`` (the changelog topic) or ``directory``; ``None`` = the settings' (kafka
        unless the config file says otherwise).
    relay
        Before the detector phase, measure :class:`~streamwatch.bench.relay.Relay` (the
        transport alone: consume, decode, produce one record per reading) on the same
        pre-fill, in ``detectors`` processes: what this broker, client and machine carry
        with no detector, side by side with the detector's rate.
    detector_alone
        Before the clients, measure the detector alone with no Kafka
        (:func:`~streamwatch.bench.alone.detector_alone`: validate and process poll-sized
        batches of the same simulated readings, with one process's share of the streams):
        with the relay, the verdict's ``ceiling_readings_per_s``.
    repeat
        Rounds, 1-20: each runs every client's phases again, on a fresh broker when the
        bench starts its own. ``runs`` and ``verdict`` are then the median round's per
        client (by throughput), ``rounds`` holds every round, and the verdict says in how
        many rounds the targets were met (``met_in_rounds``): one run on a shared 2-core
        machine moved by 25 % from one minute to the next.
    detectors
        Detector processes in the consumer group, 1-16 (``bench.group``): 1 runs the service
        in a thread of the bench process (profiled with ``profile``), more run one process
        each and the figures are the group's.
    """

    clients: tuple[str, ...] = CLIENTS
    streams: int = 1000
    seconds: float = 30.0
    warmup_s: float = 5.0
    rate: float | None = None
    latency_rate_fraction: float = 0.5
    latency_rate_cap: bool = True
    train_every: int | None = None
    bootstrap_servers: str | None = None
    partitions: int | None = None
    prefill_rate: float | None = None
    seed: int = 1
    producer_client: str | None = None
    profile: bool = False
    profile_dir: Path | None = None
    progress: bool = True
    throughput_emit_scores: str = "all"
    latency_emit_scores: str = "all"
    latency_watch_every: int = 25
    drain_timeout_s: float = 60.0
    session_timeout_ms: int | None = None
    fetch_max_wait_ms: int | None = None
    load_linger_ms: int = 5
    config_file: Path | None = None
    detectors: int = 1
    state_store: str | None = None
    relay: bool = True
    detector_alone: bool = True
    repeat: int = 1

    def __post_init__(self) -> None:
        if not self.clients or any(c not in CLIENTS for c in self.clients):
            got = ",".join(self.clients) or "nothing"
            raise ConfigError(f"clients must be kafka-python and/or confluent, got {got!r}")
        if len(set(self.clients)) != len(self.clients):
            raise ConfigError(f"clients must not repeat, got {','.join(self.clients)}")
        if not 1 <= self.streams <= 100_000:
            raise ConfigError(f"streams must be in 1..100000, got {self.streams}")
        if not self.seconds > 0 or not self.warmup_s >= 0:
            raise ConfigError(f"seconds must be > 0 and warmup_s >= 0, got {self.seconds}, "
                              f"{self.warmup_s}")  # fmt: skip
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"rate must be > 0 readings/s, got {self.rate}")
        if not 0 < self.latency_rate_fraction <= 1:
            raise ConfigError(f"latency_rate_fraction must be in (0, 1], got "
                              f"{self.latency_rate_fraction}")  # fmt: skip
        if self.train_every is not None and self.train_every < 1:
            raise ConfigError(f"train_every must be >= 1, got {self.train_every}")
        if self.partitions is not None and not 1 <= self.partitions <= 10_000:
            raise ConfigError(f"partitions must be in 1..10000, got {self.partitions}")
        if self.prefill_rate is not None and not self.prefill_rate > 0:
            raise ConfigError(f"prefill_rate must be > 0 readings/s, got {self.prefill_rate}")
        if self.producer_client not in (None, *CLIENTS):
            raise ConfigError(f"producer_client must be one of {CLIENTS}, got "
                              f"{self.producer_client!r}")  # fmt: skip
        for name in ("throughput_emit_scores", "latency_emit_scores"):
            if getattr(self, name) not in ("all", "alerts"):
                raise ConfigError(f"{name} must be 'all' or 'alerts', got "
                                  f"{getattr(self, name)!r}")  # fmt: skip
        if self.latency_watch_every < 0:
            raise ConfigError(f"latency_watch_every must be >= 0 (0: no stream watched), got "
                              f"{self.latency_watch_every}")  # fmt: skip
        if not self.drain_timeout_s > 0:
            raise ConfigError(f"drain_timeout_s must be > 0, got {self.drain_timeout_s}")
        if self.fetch_max_wait_ms is not None and not 0 <= self.fetch_max_wait_ms <= 60_000:
            raise ConfigError(f"fetch_max_wait_ms must be in 0..60000, got {self.fetch_max_wait_ms}")
        if not 0 <= self.load_linger_ms <= 1000:
            raise ConfigError(f"load_linger_ms must be in 0..1000, got {self.load_linger_ms}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.state_store not in (None, "kafka", "directory"):
            raise ConfigError(f"state_store must be 'kafka' or 'directory', got "
                              f"{self.state_store!r}")  # fmt: skip
        if not 1 <= self.repeat <= 20:
            raise ConfigError(f"repeat must be in 1..20 rounds, got {self.repeat}")
        if not 1 <= self.detectors <= 16:
            raise ConfigError(f"detectors must be in 1..16, got {self.detectors}")
        if self.profile and self.detectors > 1:
            raise ConfigError("--profile samples the detector thread of the bench process: "
                              "use it with --detectors 1")

    def prefill_rate_for(self, client: str) -> float:
        return self.prefill_rate if self.prefill_rate is not None else 1.5 * TARGETS[client]

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["clients"] = list(self.clients)
        for key in ("config_file", "profile_dir"):
            out[key] = None if out[key] is None else str(out[key])
        return out
