"""The detector's Prometheus endpoint."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from streamwatch.errors import ConfigError
from streamwatch.metrics import ServiceMetrics


def test_endpoint_serves_the_counters_on_loopback() -> None:
    metrics = ServiceMetrics()
    metrics.count_dead_letter("not_json")
    server = metrics.serve(0)
    try:
        port = server.server_address[1]
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert 'code="not_json"' in body


def test_a_port_in_use_is_a_clear_error_saying_what_to_do() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="own --metrics-port"):
            ServiceMetrics().serve(port)


def test_a_fresh_endpoint_has_a_zero_sample_for_every_fixed_label_value() -> None:
    """Alert rules on rate() see 0 on an idle detector, not an absent series."""
    from typing import get_args

    from prometheus_client import generate_latest

    from streamwatch.schema import AlertEvent, DeadLetterCode

    body = generate_latest(ServiceMetrics().registry).decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in body.splitlines() if line and not line.startswith("#")}  # fmt: skip
    expected = [f'streamwatch_dead_letters_total{{code="{c}"}}' for c in get_args(DeadLetterCode)]
    expected += [f'streamwatch_alert_events_total{{event="{e}"}}' for e in get_args(AlertEvent)]
    expected += [f'streamwatch_checkpoint_seconds_count{{stage="{s}"}}'
                 for s in ("snapshot", "write")]  # the stages pipeline.py observes
    assert len(expected) == 10 + 3 + 2
    for name in expected:
        assert samples.get(name) == 0.0, name


def test_a_host_name_the_resolver_refuses_is_a_config_error_not_a_traceback() -> None:
    """A 64-character label is refused by the idna codec with a UnicodeError, which
    escaped as a traceback."""
    with pytest.raises(ConfigError, match="not a valid host name"):
        ServiceMetrics().serve(0, "a" * 64 + ".com")
