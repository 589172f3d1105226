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
