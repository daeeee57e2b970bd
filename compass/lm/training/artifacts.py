"""Adapter artifacts on disk: PEFT format plus COMPASS metadata and a manifest.

A folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (what PEFT, vLLM and
LoRAX read), ``compass_adapter.json`` (base model id and revision, sampler, budget, data hashes,
hyperparameters, metrics) and ``manifest.json`` ({file: sha256}). Loading verifies the manifest
and refuses a base model other than the one the adapter was trained on.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from compass import __version__
from compass.core.errors import ModelLoadError
from compass.lm.models import LoadedModel, sha256_file
from compass.lm.training.config import AdapterTrainingConfig
from compass.lm.training.trainer import TrainedAdapter, TrainingMetrics, has_adapter

METADATA_FILE = "compass_adapter.json"
MANIFEST_FILE = "manifest.json"
METADATA_TYPE = "CompassAdapter"
METADATA_VERSION = 1
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


def adapter_metadata(adapter: TrainedAdapter) -> dict[str, Any]:
    return {
        "type": METADATA_TYPE,
        "version": METADATA_VERSION,
        "compass_version": __version__,
        "created_at": datetime.now(UTC).isoformat(),
        "base_model_id": adapter.base.model_id,
        "base_model_revision": adapter.base.revision,
        "base_model_family": adapter.base.family,
        "peft": adapter.config.peft_settings().to_dict(),
        "training_config": adapter.config.to_dict(),
        "provenance": adapter.provenance,
        "data_hashes": adapter.data_hashes,
        "metrics": adapter.metrics.to_dict(),
        "parent": adapter.parent,
    }


def save_adapter(adapter: TrainedAdapter, path: Path | str) -> dict[str, str]:
    """Write the adapter folder (replacing one that exists) and return its manifest."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    adapter.model.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / METADATA_FILE).write_text(
        json.dumps(adapter_metadata(adapter), indent=2, sort_keys=True) + "\n"
    )
    manifest = {name: sha256_file(tmp / name) for name in [*sorted(PEFT_FILES), METADATA_FILE]}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)
    return manifest


def read_metadata(path: Path | str) -> dict[str, Any]:
    """Verify the manifest and return the metadata (no model needed)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"adapter folder {path} does not exist")
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"adapter {path} has no {MANIFEST_FILE}") from None
    except ValueError as exc:
        raise ModelLoadError(f"adapter {path}: {MANIFEST_FILE} is not valid JSON") from exc
    for name in sorted(set(PEFT_FILES) | {METADATA_FILE}):
        if name not in manifest:
            raise ModelLoadError(f"adapter {path}: manifest does not list {name}")
    for name, expected in sorted(manifest.items()):
        file = path / name
        if not file.exists():
            raise ModelLoadError(f"adapter {path}: {name} is missing")
        if sha256_file(file) != expected:
            raise ModelLoadError(f"adapter {path}: {name} is corrupt (sha256 mismatch)")
    meta: dict[str, Any] = json.loads((path / METADATA_FILE).read_text())
    if meta.get("type") != METADATA_TYPE or meta.get("version") != METADATA_VERSION:
        raise ModelLoadError(
            f"adapter {path}: unsupported metadata {meta.get('type')} v{meta.get('version')}"
        )
    return meta


def load_adapter(path: Path | str, base: LoadedModel, trainable: bool = False) -> TrainedAdapter:
    """Attach a saved adapter to ``base`` after checking files and base-model identity."""
    from peft import PeftModel

    path = Path(path)
    meta = read_metadata(path)
    if meta["base_model_id"] != base.model_id or meta["base_model_revision"] != base.revision:
        raise ModelLoadError(
            f"adapter {path} was trained on {meta['base_model_id']} "
            f"(revision {str(meta['base_model_revision'])[:12]}), not on {base.model_id} "
            f"(revision {base.revision[:12]})"
        )
    if has_adapter(base.model):
        raise ModelLoadError("the base model already carries an adapter; detach it first")
    try:
        model = PeftModel.from_pretrained(base.model, str(path), is_trainable=trainable)
    except Exception as exc:  # PEFT raises plain errors for shape mismatches
        raise ModelLoadError(f"could not load adapter {path}: {type(exc).__name__}: {exc}") from exc
    model.to(base.device)
    model.eval()
    return TrainedAdapter(
        base=base,
        model=model,
        config=AdapterTrainingConfig.from_dict(meta["training_config"]),
        metrics=TrainingMetrics.from_dict(meta["metrics"]),
        data_hashes=dict(meta["data_hashes"]),
        provenance=dict(meta.get("provenance") or {}),
        parent=meta.get("parent"),
    )
