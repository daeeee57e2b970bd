"""Train an adapter, or continue one, and save it: the service behind ``compass train``.

:func:`training_config` builds the configuration from an optional JSON file and overrides;
:func:`train_to_folder` loads the base model, trains a fresh adapter or continues a saved one
(COMPASS-ECDA: replay and EWC against the earlier texts) and writes it in PEFT format with its
metadata and manifest (:mod:`.artifacts`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compass.lm.models import load_causal_lm
from compass.lm.training.artifacts import load_adapter, save_adapter
from compass.lm.training.config import AdapterTrainingConfig
from compass.lm.training.trainer import TrainingMetrics, continue_adapter, train_adapter


@dataclass(frozen=True)
class SavedAdapter:
    """An adapter written to ``path``: its manifest ({file: sha256}), its training metrics and
    the adapter it continued (``None`` for a fresh one)."""

    path: Path
    manifest: dict[str, str]
    metrics: TrainingMetrics
    continued_from: Path | None = None


def training_config(path: Path | None = None, **overrides: Any) -> AdapterTrainingConfig:
    """The configuration in ``path`` (an :class:`AdapterTrainingConfig` JSON; default: the
    defaults) with every override that is not ``None`` applied. Raises
    :class:`~compass.core.errors.ConfigError` for an unreadable file or invalid values."""
    base = AdapterTrainingConfig.load(path) if path else AdapterTrainingConfig()
    return base.replace(**{key: value for key, value in overrides.items() if value is not None})


def train_to_folder(
    texts: Sequence[str],
    out: Path,
    *,
    base_model_id: str,
    data_dir: Path,
    config: AdapterTrainingConfig,
    continue_from: Path | None = None,
    earlier_texts: Sequence[str] = (),
    progress: bool = True,
    provenance: Mapping[str, Any] | None = None,
) -> SavedAdapter:
    """Train an adapter of ``base_model_id`` on ``texts`` and save it to ``out`` (replacing a
    folder that exists).

    With ``continue_from`` (a saved adapter folder of the same base model), that adapter is
    continued instead, guarded by ``earlier_texts`` as the config says (replay, EWC), and its
    path is recorded in the provenance as ``parent_path``. ``provenance`` (language, sampler,
    budget ...) is stored verbatim in the metadata. Raises
    :class:`~compass.core.errors.ModelLoadError` for a model or adapter that cannot be loaded
    and :class:`~compass.core.errors.DataError` for missing texts.
    """
    base = load_causal_lm(base_model_id, data_dir)
    recorded = dict(provenance or {})
    if continue_from is not None:
        previous = load_adapter(continue_from, base, trainable=True)
        adapter = continue_adapter(
            previous, texts, earlier_texts, config, progress=progress,
            provenance={**recorded, "parent_path": str(continue_from)},
        )  # fmt: skip
    else:
        adapter = train_adapter(base, texts, config, progress, recorded)
    manifest = save_adapter(adapter, out)
    return SavedAdapter(out, manifest, adapter.metrics, continue_from)
