"""Serving engines: what ``serve-sync`` keeps in step with the live adapters.

An engine is one small class registered with :func:`register_engine`; it declares its
:class:`EngineAbilities` (the largest rank it accepts, the layers it can adapt, DoRA and
``modules_to_save``) and the base model it serves, and it loads, unloads and (for the tests and the
demo) answers prompts by adapter name. :func:`compatibility` holds every check that runs before an
adapter reaches an engine, so an adapter that would fail or be served wrong is refused with one
reason and the previous version stays live.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from compass.core.errors import ConfigError
from compass.core.events import AdapterUpdated, PeftInfo

# The projections of a Llama-style decoder block that the fused LoRA kernels of vLLM and SGLang
# cover (their packed forms, qkv_proj and gate_up_proj, are named by these parts).
DECODER_LINEAR_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)


@dataclass(frozen=True)
class EngineAbilities:
    """What an engine can serve.

    ``max_rank``: the largest LoRA rank ``r`` (vLLM's ``--max-lora-rank``, SGLang's
    ``--max-lora-rank``); ``target_modules``: the layer names it can adapt (``None``: any);
    ``dora``: whether it serves DoRA (weight-decomposed) adapters; ``modules_to_save``: whether it
    loads fully trained extra modules (embeddings, head) shipped with an adapter."""

    max_rank: int
    target_modules: frozenset[str] | None
    dora: bool
    modules_to_save: bool


class ServingEngine(abc.ABC):
    """One serving engine. ``base_model`` and ``base_model_revision`` name the weights it serves
    (an empty revision means "not known": the revision check is then skipped and said so)."""

    name: ClassVar[str] = ""
    abilities: EngineAbilities
    base_model: str
    base_model_revision: str

    @abc.abstractmethod
    def load(self, adapter_name: str, path: Path) -> None:
        """Load the PEFT folder ``path`` under ``adapter_name``; raises
        :class:`EngineError` when the engine refuses or fails."""

    @abc.abstractmethod
    def unload(self, adapter_name: str) -> None:
        """Forget ``adapter_name``; unknown names are ignored."""

    @abc.abstractmethod
    def loaded(self) -> set[str]:
        """The adapter names this process has loaded (and not unloaded)."""

    def generate(self, prompt: str, adapter_name: str | None, max_new_tokens: int = 24) -> str:
        """A greedy completion of ``prompt`` by ``adapter_name`` (``None``: the base model)."""
        raise NotImplementedError(f"engine {self.name!r} does not answer prompts here")

    @property
    def tracks_requests(self) -> bool:
        """``True`` when every request goes through this process (in-process engines), so the
        grace period may end as soon as the old adapter has no request in flight."""
        return False

    def close(self) -> None:
        """Release what the engine holds (HTTP sessions, the model)."""
        return None  # an optional hook: most engines hold nothing


class EngineError(Exception):
    """An engine refused or failed to load/unload an adapter (the message says which)."""


EngineFactory = Callable[..., ServingEngine]
_REGISTRY: dict[str, tuple[EngineFactory, str]] = {}


def register_engine(name: str, description: str) -> Callable[[EngineFactory], EngineFactory]:
    """Decorator: make an engine class (or factory) available to :func:`build_engine`."""

    def decorate(factory: EngineFactory) -> EngineFactory:
        _REGISTRY[name] = (factory, description)
        if isinstance(factory, type) and issubclass(factory, ServingEngine):
            factory.name = name
        return factory

    return decorate


def available_engines() -> dict[str, str]:
    """``{name: description}`` of the registered engines (the built-in ones included)."""
    _register_builtins()
    return {name: description for name, (_, description) in sorted(_REGISTRY.items())}


def build_engine(name: str, **options: Any) -> ServingEngine:
    """The engine registered as ``name`` built with ``options``; raises :class:`ConfigError`
    for an unknown name (listing the registered ones) or options it does not take."""
    _register_builtins()
    try:
        factory, _ = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown serving engine {name!r}; choose from {sorted(_REGISTRY)}"
        ) from None
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"bad options for engine {name!r}: {exc}") from None


def _register_builtins() -> None:
    import compass.serving.http_engines  # (vllm, sglang)
    import compass.serving.peft_engine  # noqa: F401  (peft)


def peft_flags(peft: PeftInfo) -> tuple[bool, list[str]]:
    """``(uses DoRA, modules_to_save)`` of an announcement's PEFT block, reading the fields
    that newer announcements carry (``use_dora``) and the type (``dora``) of older ones."""
    dora = bool(getattr(peft, "use_dora", False)) or peft.type.lower() == "dora"
    return dora, list(peft.modules_to_save or [])


def compatibility(engine: ServingEngine, message: AdapterUpdated) -> str | None:
    """Why ``engine`` must not load ``message``'s adapter, or ``None`` when it may.

    Checks, in order: base model id, base model revision, rank against ``max_rank``, target
    modules against the supported ones, DoRA, ``modules_to_save``. The reason is one line that
    starts with a stable code (``base_model_mismatch``, ``revision_mismatch``, ``rank_too_high``,
    ``unsupported_target_modules``, ``dora_unsupported``, ``modules_to_save_unsupported``)."""
    abilities = engine.abilities
    if message.base_model != engine.base_model:
        return (
            f"base_model_mismatch: adapter is for {message.base_model!r}, "
            f"the engine serves {engine.base_model!r}"
        )
    if engine.base_model_revision and message.base_model_revision != engine.base_model_revision:
        return (
            f"revision_mismatch: adapter is for revision {message.base_model_revision[:16]!r}, "
            f"the engine serves {engine.base_model_revision[:16]!r}"
        )
    peft = message.peft
    if peft.r > abilities.max_rank:
        return f"rank_too_high: r={peft.r} > the engine's maximum {abilities.max_rank}"
    unsupported = _outside(peft.target_modules, abilities.target_modules)
    if unsupported:
        return (
            f"unsupported_target_modules: {unsupported} (the engine adapts "
            f"{sorted(abilities.target_modules or [])})"
        )
    dora, to_save = peft_flags(peft)
    if dora and not abilities.dora:
        return f"dora_unsupported: engine {engine.name!r} cannot serve DoRA adapters"
    if to_save and not abilities.modules_to_save:
        return f"modules_to_save_unsupported: {to_save} (engine {engine.name!r} cannot load them)"
    return None


def _outside(modules: Iterable[str], allowed: frozenset[str] | None) -> list[str]:
    if allowed is None:
        return []
    return sorted({m.rsplit(".", 1)[-1] for m in modules} - allowed)
