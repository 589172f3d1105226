"""Build the Dash app over a ``DashboardStore`` and serve it (blocking or in a thread).

>>> from dashboards.store import DashboardStore
>>> app = create_app(DashboardStore())
>>> app.title
'streamwatch'
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import dash
from dash import html
from werkzeug.serving import BaseWSGIServer, make_server

from dashboards import layout
from dashboards.callbacks import DashboardCallbacks, ViewConfig
from dashboards.feed import Feed
from dashboards.store import DashboardStore
from streamwatch.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
ASSETS = Path(__file__).parent / "assets"


def create_app(
    store: DashboardStore,
    *,
    config: ViewConfig | None = None,
    feed: Feed | None = None,
    title: str = "streamwatch",
) -> dash.Dash:
    """The dashboard app reading ``store`` (filled by ``feed`` or by the caller).

    Pages: ``/`` overview (streams, KPIs, alert feed), ``/stream?id=<stream id>[&at=<ts>]``
    one stream's trends, ``/health`` model health. Everything is served locally (no CDN).
    """
    config = config or ViewConfig()
    if not (ASSETS / "dashboard.css").is_file():
        log.warning("dashboard styles missing at %s: the package was installed without "
                    "dashboards/assets (package-data); the pages work but look unstyled", ASSETS)
    app = dash.Dash(
        __name__,
        title=title,
        update_title=None,  # type: ignore[arg-type]  # documented: None disables it
        assets_folder=str(ASSETS),
        suppress_callback_exceptions=True,
        serve_locally=True,
    )
    app.layout = layout.app_shell(config.interval_ms)
    app.validation_layout = html.Div([  # type: ignore[assignment]
        layout.app_shell(config.interval_ms), layout.overview_page([]),
        layout.stream_page("validation", None), layout.health_page(),
    ])
    callbacks = DashboardCallbacks(store, config, feed)
    callbacks.register(app)
    app.server.config["streamwatch_callbacks"] = callbacks
    return app


def _check_address(host: str, port: int) -> None:
    if not host:
        raise ConfigError("host must be a non-empty address such as 127.0.0.1")
    if not 0 <= port <= 65_535:
        raise ConfigError(f"port must be in [0, 65535] (0 = any free port), got {port}")


@dataclass
class DashboardServer:
    """A running dashboard HTTP server (werkzeug, threaded) on its own thread."""

    server: BaseWSGIServer
    thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        host, port = self.server.host, self.server.port
        return f"http://{host}:{port}"

    def stop(self, timeout: float = 5.0) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout)


def serve_in_thread(app: dash.Dash, host: str = DEFAULT_HOST,
                    port: int = DEFAULT_PORT) -> DashboardServer:
    """Start serving ``app`` in a daemon thread (``port=0``: any free port); see ``url``."""
    _check_address(host, port)
    server = make_server(host, port, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="dashboard-http", daemon=True)
    thread.start()
    handle = DashboardServer(server, thread)
    log.info("dashboard serving url=%s", handle.url)
    return handle


def serve(app: dash.Dash, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve ``app`` until interrupted (binds 127.0.0.1 unless told otherwise)."""
    _check_address(host, port)
    server = make_server(host, port, app.server, threaded=True)
    log.info("dashboard serving url=http://%s:%d", host, server.server_address[1])
    try:
        server.serve_forever()  # returns on Ctrl-C (werkzeug handles KeyboardInterrupt)
    finally:
        server.server_close()
        log.info("dashboard stopped")
