"""The in-process ``peft`` engine: the base model in this process, adapters loaded with PEFT.

What the tests and the demo use: every adapter is loaded onto one base model under its name,
``generate`` switches to the requested adapter (or disables adapters for the base model) under a
lock, so answers never mix adapters. Serves any rank, any linear layer, DoRA and
``modules_to_save`` (PEFT trained them, PEFT serves them); ``max_rank`` is a setting.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import structlog

from compass.serving.engines import EngineAbilities, EngineError, ServingEngine, register_engine

log = structlog.get_logger(__name__)


@register_engine("peft", "in-process: the base model plus PEFT adapters (tests, demo, CPU)")
class PeftEngine(ServingEngine):
    """``base_model``: a model id of :func:`compass.lm.models.load_causal_lm` (a shipped id such
    as ``smollm2-135m``, a hub id or a folder), loaded from ``data_dir``; ``max_rank``: the
    largest rank accepted (default 64); ``device``: default CUDA when visible, else CPU."""

    def __init__(
        self,
        base_model: str,
        data_dir: Path,
        *,
        max_rank: int = 64,
        device: str | None = None,
        **_ignored: Any,
    ) -> None:
        from compass.lm.models import load_causal_lm

        self._base = load_causal_lm(base_model, Path(data_dir), device=device)
        self.base_model = self._base.model_id
        self.base_model_revision = self._base.revision
        self.abilities = EngineAbilities(
            max_rank=max_rank, target_modules=None, dora=True, modules_to_save=True
        )
        self._model: Any = None  # the PeftModel once the first adapter is loaded
        self._names: set[str] = set()
        self._lock = threading.RLock()

    @property
    def tracks_requests(self) -> bool:
        return True

    def load(self, adapter_name: str, path: Path) -> None:
        from peft import PeftModel

        with self._lock:
            if adapter_name in self._names:
                return
            try:
                if self._model is None:
                    self._model = PeftModel.from_pretrained(
                        self._base.model, str(path), adapter_name=adapter_name
                    )
                else:
                    self._model.load_adapter(str(path), adapter_name=adapter_name)
            except Exception as exc:  # PEFT raises plain errors for bad folders and shapes
                raise EngineError(
                    f"could not load {adapter_name} from {path}: {type(exc).__name__}: {exc}"
                ) from exc
            self._model.to(self._base.device)
            self._model.eval()
            self._names.add(adapter_name)

    def unload(self, adapter_name: str) -> None:
        with self._lock:
            if adapter_name not in self._names or self._model is None:
                return
            others = sorted(self._names - {adapter_name})
            try:
                if others and adapter_name in _active(self._model):
                    self._model.set_adapter(others[0])  # PEFT refuses to delete the active one
                self._model.delete_adapter(adapter_name)
            except Exception as exc:  # PEFT raises plain errors
                raise EngineError(
                    f"could not unload {adapter_name}: {type(exc).__name__}: {exc}"
                ) from exc
            self._names.discard(adapter_name)

    def loaded(self) -> set[str]:
        with self._lock:
            return set(self._names)

    def generate(self, prompt: str, adapter_name: str | None, max_new_tokens: int = 24) -> str:
        """Greedy decoding of ``max_new_tokens`` tokens; the prompt is not repeated."""
        import contextlib

        import torch

        tokenizer = self._base.tokenizer
        with self._lock:
            if adapter_name is not None and adapter_name not in self._names:
                raise EngineError(f"adapter {adapter_name!r} is not loaded")
            inputs = tokenizer(prompt, return_tensors="pt").to(self._base.device)
            model: Any = self._model if self._model is not None else self._base.model
            if adapter_name is None:
                scope: Any = (
                    self._model.disable_adapter()
                    if self._model is not None
                    else contextlib.nullcontext()
                )
            else:
                self._model.set_adapter(adapter_name)
                scope = contextlib.nullcontext()
            with scope, torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        return str(tokenizer.decode(new_tokens, skip_special_tokens=True))

    def close(self) -> None:
        with self._lock:
            self._model = None
            self._names.clear()


def _active(model: Any) -> set[str]:
    active = model.active_adapter
    return {active} if isinstance(active, str) else set(active or [])
