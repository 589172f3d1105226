"""A TLS listener in front of a plaintext broker, for tests of the clients' TLS settings.

Tansu 0.6 (the test broker) has a ``--cert`` option, but its listener still spoke
plaintext (``openssl s_client`` saw no handshake). So the test broker advertises this
proxy's address, and the proxy terminates TLS (Python's ``ssl``, a test CA from
``trustme``) and relays the bytes: every client connection, bootstrap and the broker
connections its metadata names, is then TLS, as it would be to a TLS listener.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from types import TracebackType

log = logging.getLogger(__name__)


class TlsProxy:
    """``start()`` listens on a loopback port (``address``); set ``upstream`` (the
    broker's ``host:port``) before the first client connects."""

    def __init__(self, context: ssl.SSLContext, host: str = "127.0.0.1") -> None:
        self.context = context
        self.host = host
        self.port = 0  # bound in start()
        self.upstream: str | None = None
        self.handshakes = 0  # TLS connections accepted (the handshake succeeded)
        self.errors: list[str] = []  # connections dropped on an error, and why
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy",
                                        daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> TlsProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(asyncio.start_server(
            self._handle, self.host, 0, ssl=self.context), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        if self.upstream is None:
            writer.close()
            return
        host, port = self.upstream.rsplit(":", 1)
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError as exc:
            self._broken(f"upstream {self.upstream} refused: {exc}")
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError) as exc:  # a peer went away: this connection ends
            self._broken(f"connection ended: {exc!r}")
        finally:
            writer.close()

    def _broken(self, what: str) -> None:
        """Count and log a connection the proxy had to drop (a test can check ``errors``)."""
        self.errors.append(what)
        log.info("tls proxy: %s", what)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> TlsProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()

