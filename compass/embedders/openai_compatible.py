"""A remote embedder: any server of the OpenAI-compatible ``POST /v1/embeddings`` API.

text-embeddings-inference, vLLM (``vllm serve MODEL --runner pooling``), Infinity, Ollama and
OpenAI itself answer the same request, so a deployment can move embedding onto GPU servers and
keep the stream app on small CPUs. Selected with ``COMPASS_EMBEDDER_ID=openai-compatible``;
its settings are the ``COMPASS_REMOTE_EMBEDDER_*`` variables (``compass/config.py``).

The request (OpenAI API reference, "Create embeddings")::

    POST {url}/v1/embeddings  {"model": M, "input": [t1, ...], "encoding_format": "float"}
    200 -> {"data": [{"index": i, "embedding": [f1, ...]}, ...], "model": M, ...}

Behaviour:

- **Batches** of at most ``batch_size`` texts per request (:meth:`Embedder.embed` splits them);
  the answer's ``index`` fields put the vectors back in input order.
- **Retries** with capped exponential back-off and full jitter (delay ``uniform(0, min(cap,
  base·2^attempt))``, the "full jitter" scheme of the AWS Architecture Blog, "Exponential
  Backoff and Jitter", 2015) on connection errors, timeouts and the statuses that mean "not now"
  (408, 425, 429, 500, 502, 503, 504); a ``Retry-After`` header in seconds is honoured up to
  the cap. When the retries are spent the call raises :class:`~compass.core.errors.TransientError`
  so the stream retries the batch later instead of dead-lettering it.
- **Clear errors**: 401/403 → :class:`ConfigError` (the API key); 404, or a model that the
  server's ``GET /v1/models`` does not list → :class:`ModelLoadError` naming the models it
  serves; a vector whose length differs from the first one or from ``dim`` (the expected
  dimension) → :class:`ModelLoadError`; any other 4xx → :class:`DataError` with the server's
  message (the stream then isolates and dead-letters the offending event). Once started, a
  server that changes under the client (model gone, key revoked, another dimension) raises
  :class:`EmbeddingServerChanged`, a ``ModelLoadError`` that is also transient: the stream
  keeps the events and retries instead of dead-lettering every one of them. A text longer than
  the model's context is a 400 on vLLM unless ``truncate_prompt_tokens`` is set
  (sentence-transformers truncates silently in-process).
- On construction one probe text is embedded: the dimension is learnt (or checked) and a wrong
  URL, key or model fails at start, not on the first event.

Vectors are L2-normalised by :meth:`Embedder.embed` like every other backend. e5 models expect
``query: ``/``passage: `` prefixes: they are added when the model name contains ``e5`` (as the
sentence-transformers backend does), or as set.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import structlog

from compass.core.errors import ConfigError, DataError, ModelLoadError, TransientError
from compass.ports.embedder import Embedder, EmbeddingKind

log = structlog.get_logger(__name__)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_PROBE_TEXT = "dimension probe"


class EmbeddingServerChanged(ModelLoadError, TransientError):
    """The server stopped serving what it served at start (the model is gone, the key was
    revoked, the dimension or the answer's shape changed). A :class:`ModelLoadError` for callers
    that embed once, and *transient* for the stream: not the events' fault, so they are retried
    (kept in the backlog) until an operator fixes the server, never dead-lettered."""


class OpenAICompatibleEmbedder(Embedder):
    """Texts → vectors from ``{url}/v1/embeddings`` serving ``model``.

    ``url``: the server's base URL (``http://host:8000``; a trailing ``/v1`` is accepted);
    ``api_key``: sent as ``Authorization: Bearer …`` when set; ``batch_size``: texts per request;
    ``timeout_s``: per request (connect and read); ``max_retries``: extra attempts after a
    transient failure; ``backoff_s`` / ``max_backoff_s``: base and cap of the back-off (seconds);
    ``dim``: the expected dimension (``None``: learnt from the probe); ``model_id``: the name
    embedding-cache keys use (default ``openai-compatible:<model>``; set it when two servers
    serve different weights under one name); ``truncate_prompt_tokens``: vLLM's extension field
    (``-1``: cut each text to the model's context; ``N``: to N tokens), left out when ``None``
    because strict servers reject unknown fields (TEI truncates with its ``--auto-truncate``
    flag instead). Raises :class:`ModelLoadError`,
    :class:`ConfigError` or :class:`TransientError` when the probe fails.
    """

    def __init__(
        self,
        url: str,
        model: str,
        *,
        api_key: str | None = None,
        batch_size: int = 64,
        timeout_s: float = 30.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        dim: int | None = None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        model_id: str | None = None,
        truncate_prompt_tokens: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import httpx

        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"remote embedder URL must start with http(s)://, not {url!r}")
        if not model.strip():
            raise ConfigError("remote embedder needs a model name (COMPASS_REMOTE_EMBEDDER_MODEL)")
        if batch_size < 1 or max_retries < 0 or timeout_s <= 0:
            raise ConfigError("remote embedder: batch_size ≥ 1, max_retries ≥ 0, timeout_s > 0")
        base = url.rstrip("/")
        self.endpoint = base + ("/embeddings" if base.endswith("/v1") else "/v1/embeddings")
        self.model = model
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.model_id = model_id or f"openai-compatible:{model}"
        self.truncate_prompt_tokens = truncate_prompt_tokens
        self.requests = 0  # HTTP requests sent, retries included (for tests and benchmarks)
        self.retries = 0
        self._sleep = sleep
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(headers=headers, timeout=timeout_s)
        is_e5 = "e5" in model.lower()
        self._prefixes: dict[str, str] = {
            "query": query_prefix if query_prefix is not None else ("query: " if is_e5 else ""),
            "passage": passage_prefix
            if passage_prefix is not None
            else ("passage: " if is_e5 else ""),
        }
        self.dim = dim or 0
        self._started = False
        served = self._served_models()
        if served and model not in served:  # servers that list their models (vLLM, OpenAI)
            self.close()
            raise ModelLoadError(
                f"remote embedder at {base} does not serve model {model!r}; it serves {served}"
            )
        try:
            probe = self._request([_PROBE_TEXT])
        except BaseException:
            self.close()
            raise
        if dim is not None and probe.shape[1] != dim:
            self.close()
            raise ModelLoadError(
                f"remote embedder {model!r} at {base} returns {probe.shape[1]}-d vectors, "
                f"expected {dim} (COMPASS_REMOTE_EMBEDDER_DIM)"
            )
        self.dim = int(probe.shape[1])
        self._started = True

    # ------------------------------------------------------------------ Embedder
    def _embed_batch(self, texts: list[str], kind: EmbeddingKind) -> np.ndarray:
        prefix = self._prefixes[kind]
        return self._request([prefix + t for t in texts] if prefix else texts)

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()

    # ------------------------------------------------------------------ HTTP
    def _request(self, texts: list[str]) -> np.ndarray:
        """One ``/v1/embeddings`` call for ``texts`` (retried when transient): float32
        ``(len(texts), dim)`` in input order."""
        payload: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.truncate_prompt_tokens is not None:
            payload["truncate_prompt_tokens"] = self.truncate_prompt_tokens
        attempt = 0
        while True:
            status, body, retry_after, failure = self._post(payload)
            self.requests += 1
            if status == 200:
                return self._vectors(body, len(texts))
            if failure is None and status not in RETRYABLE_STATUS:
                raise self._client_error(status, body)
            reason = failure or f"HTTP {status}: {_message(body)}"
            if attempt >= self.max_retries:
                raise TransientError(
                    f"remote embedder {self.endpoint} failed {attempt + 1} times; last: {reason}"
                )
            delay = self._delay(attempt, retry_after)
            log.warning(
                "remote_embedder.retry",
                endpoint=self.endpoint,
                attempt=attempt + 1,
                reason=reason[:200],
                sleep_s=round(delay, 3),
            )
            self.retries += 1
            attempt += 1
            self._sleep(delay)

    def _post(self, payload: dict[str, Any]) -> tuple[int, Any, float | None, str | None]:
        """``(status, JSON body or text, Retry-After seconds, transport failure)``."""
        import httpx

        try:
            response = self._client.post(self.endpoint, json=payload)
        except httpx.TimeoutException as exc:
            return 0, None, None, f"timeout: {type(exc).__name__}"
        except httpx.TransportError as exc:
            return 0, None, None, f"unreachable: {type(exc).__name__}: {exc}"
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return response.status_code, body, _retry_after(response.headers.get("retry-after")), None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Full-jitter exponential back-off, or the server's ``Retry-After`` (both capped)."""
        if retry_after is not None:
            return min(self.max_backoff_s, retry_after)
        return random.uniform(0.0, min(self.max_backoff_s, self.backoff_s * 2.0**attempt))

    def _client_error(self, status: int, body: Any) -> Exception:
        message = _message(body)
        where = f"remote embedder {self.endpoint}"
        if status in (401, 403):
            text = f"{where}: HTTP {status} {message} (check COMPASS_REMOTE_EMBEDDER_API_KEY)"
            return EmbeddingServerChanged(text) if self._started else ConfigError(text)
        if status == 404:
            served = self._served_models()
            listing = f"; the server serves {served}" if served else ""
            return self._server_error(
                f"{where}: model {self.model!r} not served (HTTP {status} {message}){listing}"
            )
        return DataError(f"{where}: HTTP {status} {message}")

    def _server_error(self, text: str) -> ModelLoadError:
        """A wrong server: fatal at start, :class:`EmbeddingServerChanged` once running."""
        return EmbeddingServerChanged(text) if self._started else ModelLoadError(text)

    def _served_models(self) -> list[str]:
        """The ids ``GET /v1/models`` lists ([] when the server has no such endpoint)."""
        try:
            response = self._client.get(self.endpoint.rsplit("/", 1)[0] + "/models")
            return sorted(str(m["id"]) for m in response.json().get("data", []))
        except Exception:  # only for the error message: never hide the real error
            return []

    def _vectors(self, body: Any, expected: int) -> np.ndarray:
        try:
            items = sorted(body["data"], key=lambda item: int(item["index"]))
            rows = [item["embedding"] for item in items]
        except (TypeError, KeyError, ValueError) as exc:
            raise self._server_error(
                f"remote embedder {self.endpoint}: not an embeddings response "
                f"({type(exc).__name__}: {exc}): {str(body)[:200]}"
            ) from None
        if len(rows) != expected:
            raise self._server_error(
                f"remote embedder {self.endpoint}: {len(rows)} vectors for {expected} texts"
            )
        lengths = {len(row) if isinstance(row, list) else -1 for row in rows}
        if len(lengths) != 1 or -1 in lengths:
            raise self._server_error(
                f"remote embedder {self.endpoint}: vectors of lengths {sorted(lengths)} in one "
                "answer (expected float lists of one dimension; encoding_format=float)"
            )
        (length,) = lengths
        if self.dim and length != self.dim:
            raise self._server_error(
                f"remote embedder {self.endpoint}: model {self.model!r} now returns "
                f"{length}-d vectors, expected {self.dim}"
            )
        out = np.asarray(rows, dtype=np.float32)
        if not np.isfinite(out).all():
            raise DataError(f"remote embedder {self.endpoint}: non-finite values in a vector")
        return out


def _message(body: Any) -> str:
    """The error text of an OpenAI-style ``{"error": {"message": …}}`` body (or the body)."""
    if isinstance(body, dict):
        error = body.get("error", body.get("message", body.get("detail", body)))
        if isinstance(error, dict):
            error = error.get("message", error)
        return str(error)[:300]
    return str(body or "")[:300]


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: fall back to the back-off
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
