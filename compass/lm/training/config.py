"""Adapter training configuration: one validated, versioned dataclass.

It is our own (not PEFT's ``LoraConfig``) because it also carries the optimisation settings and
the two continual-learning guards of COMPASS-ECDA, and because it is recorded with every adapter
version. Saved as sorted JSON with a type and a version; loading warns on unknown keys and fails
on missing ones, so an artifact written by a newer COMPASS is never misread silently.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import structlog

from compass.core.errors import ConfigError
from compass.core.events import PeftInfo

log = structlog.get_logger(__name__)

CONFIG_TYPE = "AdapterTrainingConfig"
CONFIG_VERSION = 1


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class PeftSettings:
    """The PEFT settings of an adapter, as recorded with its version (``peft_config``), in its
    metadata file and in the ``adapter-updated`` announcement (``peft``)."""

    type: str
    r: int
    alpha: float
    target_modules: tuple[str, ...]
    use_dora: bool
    modules_to_save: tuple[str, ...] = ()
    dtype: str | None = None
    """Dtype of the saved adapter weights (``"float32"``); ``None`` when unknown."""

    def to_dict(self) -> dict[str, Any]:
        """``{"type", "r", "alpha", "target_modules": [...], "use_dora", "modules_to_save":
        [...], "dtype"}`` (JSON-ready)."""
        return {
            "type": self.type,
            "r": self.r,
            "alpha": self.alpha,
            "target_modules": list(self.target_modules),
            "use_dora": self.use_dora,
            "modules_to_save": list(self.modules_to_save),
            "dtype": self.dtype,
        }

    def to_info(self) -> PeftInfo:
        """The announcement's ``peft`` field (DoRA: ``type="LORA"`` with ``use_dora=True``;
        ``modules_to_save`` is ``None`` when there are none)."""
        return PeftInfo(
            type=self.type,
            r=self.r,
            alpha=self.alpha,
            target_modules=list(self.target_modules),
            modules_to_save=list(self.modules_to_save) or None,
            use_dora=self.use_dora,
            dtype=self.dtype,
        )


@dataclass(frozen=True)
class ServingLimits:
    """What an engine serves with its default settings: the highest LoRA rank (``None``: no
    fixed default) and whether it serves DoRA."""

    max_rank: int | None
    dora: bool


SERVING_LIMITS: dict[str, ServingLimits] = {
    # vLLM: --max-lora-rank defaults to 16; DoRA adapters are not supported.
    "vllm": ServingLimits(max_rank=16, dora=False),
    # SGLang: the rank bound comes from --max-lora-rank or the first adapters; no DoRA.
    "sglang": ServingLimits(max_rank=None, dora=False),
}
"""Default limits per ``serving_target`` (``"any"`` has none)."""

OPTIONAL_FIELDS = frozenset({"serving_target", "fisher_normalisation"})
"""Fields added after version 1 of the saved config: a file without them gets the default —
except ``fisher_normalisation``, which gets ``"mean"``, what such a config was trained with."""


@dataclass(frozen=True)
class AdapterTrainingConfig:
    """Hyperparameters of one adapter training or continual update.

    Defaults are our choices for a 135M-270M model on CPU (the paper's values are unknown, see
    docs/training.md); ``ewc_lambda=2``, ``replay_weight=0.1`` (β) and ``replay_share=0.05``
    follow the paper's summary (PAPER.md), with the standard Fisher so λ means the paper's λ.
    """

    method: Literal["lora", "dora"] = field(
        default="lora", metadata=_help("'lora' or 'dora' (weight-decomposed LoRA).")
    )
    r: int = field(default=8, metadata=_help("LoRA rank."))
    alpha: float = field(default=16.0, metadata=_help("LoRA scaling numerator (scale=alpha/r)."))
    dropout: float = field(default=0.05, metadata=_help("Dropout on the LoRA input."))
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "k_proj", "v_proj", "o_proj"),
        metadata=_help("Names of the linear layers that get adapters."),
    )
    learning_rate: float = field(default=5e-4, metadata=_help("AdamW learning rate."))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay."))
    steps: int | None = field(
        default=60, metadata=_help("Optimizer steps; wins over epochs when set.")
    )
    epochs: float | None = field(default=None, metadata=_help("Passes over the data (no steps)."))
    batch_size: int = field(default=8, metadata=_help("Texts per optimizer step."))
    max_length: int = field(default=96, metadata=_help("Tokens per text (longer is truncated)."))
    grad_clip: float = field(default=1.0, metadata=_help("Max gradient norm (0 disables)."))
    seed: int = field(default=0, metadata=_help("Seeds init, dropout and data order."))
    replay: bool = field(default=True, metadata=_help("Continual guard: replay earlier data."))
    replay_share: float = field(
        default=0.05,
        metadata=_help("Share of the earlier training data kept in the replay buffer."),
    )
    replay_batch_size: int = field(
        default=2, metadata=_help("Replay texts added to every batch of new texts.")
    )
    replay_weight: float = field(
        default=0.1,
        metadata=_help("beta: weight of the replay loss next to the task loss (paper: 0.1)."),
    )
    ewc: bool = field(default=True, metadata=_help("Continual guard: EWC penalty."))
    ewc_lambda: float = field(
        default=2.0, metadata=_help("lambda: weight of the EWC penalty (paper: 2).")
    )
    fisher_normalisation: Literal["none", "mean"] = field(
        default="none",
        metadata=_help(
            "'none': the empirical Fisher of Kirkpatrick et al. (2017) — the mean over earlier "
            "texts of the squared gradient of each text's log-likelihood — so lambda is the "
            "paper's lambda; 'mean': that Fisher rescaled to mean 1 (scale-free lambda, the "
            "behaviour of configs saved before this field existed)."
        ),
    )
    fisher_samples: int = field(
        default=32, metadata=_help("Earlier texts used to estimate the diagonal Fisher.")
    )
    serving_target: Literal["any", "vllm", "sglang"] = field(
        default="any",
        metadata=_help(
            "Engine the adapters must stay servable by with its default limits: 'vllm' "
            "refuses DoRA and r > 16, 'sglang' refuses DoRA; 'any' checks nothing."
        ),
    )

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.method not in ("lora", "dora"):
            problems.append(f"method must be 'lora' or 'dora', got {self.method!r}")
        if self.r < 1:
            problems.append(f"r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            problems.append(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules or not all(isinstance(m, str) for m in self.target_modules):
            problems.append("target_modules must be a non-empty list of layer names")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if (self.steps is None) == (self.epochs is None):
            problems.append("set exactly one of steps and epochs")
        if self.steps is not None and self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            problems.append(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length < 2:
            problems.append(f"max_length must be >= 2, got {self.max_length}")
        if self.grad_clip < 0:
            problems.append(f"grad_clip must be >= 0, got {self.grad_clip}")
        if not 0.0 < self.replay_share <= 1.0:
            problems.append(f"replay_share must be in (0, 1], got {self.replay_share}")
        if self.replay_batch_size < 1:
            problems.append(f"replay_batch_size must be >= 1, got {self.replay_batch_size}")
        if self.replay_weight < 0:
            problems.append(f"replay_weight must be >= 0, got {self.replay_weight}")
        if self.ewc_lambda < 0:
            problems.append(f"ewc_lambda must be >= 0, got {self.ewc_lambda}")
        if self.fisher_normalisation not in ("none", "mean"):
            problems.append(
                f"fisher_normalisation must be 'none' or 'mean', got {self.fisher_normalisation!r}"
            )
        if self.fisher_samples < 1:
            problems.append(f"fisher_samples must be >= 1, got {self.fisher_samples}")
        if problems:
            raise ConfigError("invalid AdapterTrainingConfig: " + "; ".join(problems))
        self.check_servable()
        # Accept lists (from JSON or the CLI) but store a tuple so the config stays hashable.
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def check_servable(self) -> None:
        """Raise one :class:`ConfigError` naming every reason the ``serving_target`` engine
        would refuse adapters trained with this config (its default limits,
        :data:`SERVING_LIMITS`); nothing for ``"any"``."""
        if self.serving_target == "any":
            return
        limits = SERVING_LIMITS.get(self.serving_target)
        if limits is None:
            raise ConfigError(
                f"serving_target must be 'any', 'vllm' or 'sglang', got {self.serving_target!r}"
            )
        refused: list[str] = []
        if self.method == "dora" and not limits.dora:
            refused.append("it cannot serve DoRA (use method='lora')")
        if limits.max_rank is not None and self.r > limits.max_rank:
            refused.append(f"r={self.r} is above its default maximum rank {limits.max_rank}")
        if refused:
            raise ConfigError(
                f"adapters would not be servable by {self.serving_target}: "
                + "; ".join(refused)
                + " (or set serving_target='any')"
            )

    def total_steps(self, n_texts: int) -> int:
        """Optimizer steps for ``n_texts`` training texts."""
        if self.steps is not None:
            return self.steps
        assert self.epochs is not None
        return max(1, round(self.epochs * n_texts / self.batch_size))

    def peft_settings(self, dtype: str | None = None) -> PeftSettings:
        """The PEFT settings an adapter trained with this config carries (LoRA; DoRA is LoRA
        with ``use_dora``; no ``modules_to_save``); ``dtype`` is the saved weights' dtype
        (``"float32"``), ``None`` when unknown."""
        return PeftSettings(
            type="LORA",
            r=self.r,
            alpha=self.alpha,
            target_modules=tuple(self.target_modules),
            use_dora=self.method == "dora",
            modules_to_save=(),
            dtype=dtype,
        )

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["target_modules"] = list(self.target_modules)
        return {"type": CONFIG_TYPE, "version": CONFIG_VERSION, "fields": values}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterTrainingConfig:
        if data.get("type") != CONFIG_TYPE:
            raise ConfigError(f"not an {CONFIG_TYPE}: type={data.get('type')!r}")
        if data.get("version") != CONFIG_VERSION:
            raise ConfigError(
                f"{CONFIG_TYPE} version {data.get('version')!r} is not supported "
                f"(this COMPASS reads version {CONFIG_VERSION})"
            )
        values = dict(data.get("fields") or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            log.warning("unknown_config_keys_ignored", keys=unknown)
        missing = sorted(known - set(values) - OPTIONAL_FIELDS)
        if missing:
            raise ConfigError(f"{CONFIG_TYPE} is missing fields: {', '.join(missing)}")
        values = {k: v for k, v in values.items() if k in known}
        values.setdefault("fisher_normalisation", "mean")  # saved before the field existed
        values["target_modules"] = tuple(values["target_modules"])
        return cls(**values)

    @classmethod
    def load(cls, path: Path) -> AdapterTrainingConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> AdapterTrainingConfig:
        values = asdict(self)
        values.update(changes)
        return AdapterTrainingConfig(**values)
