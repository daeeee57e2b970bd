"""The HTTP endpoint of a long-running process: ``/metrics``, ``/healthz`` and ``/readyz``.

``/healthz`` answers 200 while the process is alive (its liveness check passes: e.g. the stream
app's event loop ticked recently), 503 otherwise, so an orchestrator restarts it. ``/readyz``
answers 200 once the process is connected and consuming (its readiness check), 503 before.
``/metrics`` is the Prometheus text format of :data:`compass.metrics.REGISTRY`. The server
runs on a daemon thread; ``COMPASS_METRICS_PORT=0`` (the default) starts none.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from compass.config import Settings
from compass.metrics import REGISTRY

log = structlog.get_logger(__name__)

Check = Callable[[], bool]
EXIT_AGENT_DIED = 70  # EX_SOFTWARE: a consumer loop died; the orchestrator restarts the process


class Heartbeat:
    """Liveness from a loop that calls :meth:`beat`: alive while the last beat is recent."""

    def __init__(self, max_silence_s: float = 60.0) -> None:
        self.max_silence_s = max_silence_s
        self._last = time.monotonic()
        self.dead = False

    def beat(self) -> None:
        self._last = time.monotonic()

    def __call__(self) -> bool:
        return not self.dead and time.monotonic() - self._last <= self.max_silence_s


Page = Callable[[], tuple[bytes, str]]  # → (body, content type)


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` (port 0: any free port), plus
    any ``pages`` (``{path: page}``, e.g. serve-sync's ``/routes``), on a daemon thread."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        alive: Check,
        ready: Check,
        pages: Mapping[str, Page] | None = None,
        name: str = "compass-health",
    ) -> None:
        self.alive = alive
        self.ready = ready
        server = self
        extra = dict(pages or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in extra:
                    body, kind = extra[path]()
                    self._send(200, body, kind)
                elif path == "/metrics":
                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok = _safe(server.alive)
                    self._send(200 if ok else 503, b"ok\n" if ok else b"dead\n")
                elif path == "/readyz":
                    ok = _safe(server.ready)
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, kind: str = "text/plain") -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the scraper gave up (timeout): nothing to answer, nothing to log

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds would flood the log

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health.serving", port=self.port)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _safe(check: Check) -> bool:
    try:
        return bool(check())
    except Exception:
        return False


def serve(settings: Settings, *, alive: Check, ready: Check) -> HealthServer | None:
    """Start the endpoint on ``COMPASS_METRICS_PORT`` (``None`` when it is 0)."""
    if settings.metrics_port == 0:
        return None
    return HealthServer(
        settings.metrics_host, settings.metrics_port, alive=alive, ready=ready
    ).start()


def exit_process(code: int, reason: str, cleanup: Callable[[], None] | None = None) -> None:
    """Leave the process now with ``code`` after a best-effort ``cleanup``: for a consumer loop
    that died while the process around it would stay up (faust-streaming restarts or forgets a
    crashed agent while its commits stall). Safe because offsets are committed only after a
    batch's effects are durable: what was in flight is redelivered."""
    log.critical("process.exit", code=code, reason=reason[:300])
    if cleanup is not None:
        done = threading.Thread(target=cleanup, daemon=True)
        done.start()
        done.join(timeout=10.0)
    os._exit(code)
