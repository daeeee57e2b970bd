"""Serving: keep an engine (PEFT in-process, vLLM, SGLang) in step with the live adapters.

``compass serve-sync`` (:mod:`compass.cli.serving`) subscribes to ``adapter-updated`` and drives
:class:`~compass.serving.sync.ServeSync`; engines are a registry (:func:`register_engine`). Nothing
in the loop imports this package. See ``docs/serving.md``.
"""

from compass.serving.engines import (
    EngineAbilities,
    EngineError,
    ServingEngine,
    available_engines,
    build_engine,
    compatibility,
    register_engine,
)
from compass.serving.fetch import ArtifactError, fetch_artifact, verify_folder
from compass.serving.sync import EngineUnavailable, ServeSync, SyncOutcome

__all__ = [
    "ArtifactError",
    "EngineAbilities",
    "EngineError",
    "EngineUnavailable",
    "ServeSync",
    "ServingEngine",
    "SyncOutcome",
    "available_engines",
    "build_engine",
    "compatibility",
    "fetch_artifact",
    "register_engine",
    "verify_folder",
]
