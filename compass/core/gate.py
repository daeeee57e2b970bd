"""The promotion gate: may a candidate adapter replace the live one?

The rule is ours (the paper's gate is not published): the candidate must lower the held-out loss
on the new usage by more than ``min_gain`` nats (the margin), and may raise the loss on the
earlier usage by at most ``max_forgetting`` nats (the bound). Losses are mean token negative
log-likelihoods in nats. A candidate that fails is still recorded (as ``rejected``) with the
decision's reason.

**Deciding with confidence (issue 15).** A difference of two means over 64 texts is mostly
noise at the sizes that matter (a few hundredths of a nat). Given per-text losses of both
adapters on the same held-out texts (:class:`PairedLosses` — texts the selection never saw),
the gate computes a **paired bootstrap** interval (Efron & Tibshirani, 1993, ch. 13: percentile
interval; resampling texts, each resample keeping the pairing) for

- the gain on the new usage, ``mean_n(live_n − candidate_n)``, and
- the forgetting on the reference usage, ``mean_n(candidate_n − live_n)``,

at ``confidence`` (two-sided; each decision uses one end, so each is a one-sided test at level
``(1 − confidence) / 2``), and promotes only if the **lower** bound of the gain exceeds
``min_gain`` and the **upper** bound of the forgetting stays under ``max_forgetting``. Per-text
losses are mean token NLLs, so every text weighs the same. The resampling is a seeded numpy
bootstrap (``n_resamples`` draws, ``seed``), deterministic for the same texts. Fewer than
``min_texts`` paired new-usage texts reject (no decision can be made with confidence). The
intervals are returned in :class:`GateDecision` and stored with the version's metrics
(:meth:`GateDecision.interval_metrics`).

A *pinned* language (``compass adapters pin``) promotes nothing automatically: a candidate that
passes the rule is refused with a reason starting ``pinned`` and ``GateDecision.pinned`` set, so
the worker records it as a ``candidate`` (not ``rejected``) that a person may activate later.

A loss that is not a finite number (a diverged run gives NaN or ∞) fails the gate before any
comparison — NaN compares false with everything, so ``gain <= min_gain`` alone would let it
through — and :func:`finite_metrics` is the one filter that keeps such values out of what is
stored (``jsonb`` rejects NaN) and published.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

LOSS_NAMES = ("live_new_loss", "live_old_loss", "candidate_new_loss", "candidate_old_loss")


def finite_metrics(metrics: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
    """Split ``metrics`` into the finite values (as floats) and the names of the others (NaN,
    ±∞), sorted: what may be stored and published, and what must be reported instead."""
    kept: dict[str, float] = {}
    dropped: list[str] = []
    for name, value in metrics.items():
        number = float(value)
        if math.isfinite(number):
            kept[name] = number
        else:
            dropped.append(name)
    return kept, sorted(dropped)


class HeldOutLosses(Protocol):
    """The four held-out losses the gate reads (nats per token)."""

    @property
    def live_new_loss(self) -> float: ...

    @property
    def live_old_loss(self) -> float: ...

    @property
    def candidate_new_loss(self) -> float: ...

    @property
    def candidate_old_loss(self) -> float: ...


@dataclass(frozen=True)
class PairedLosses:
    """Per-text losses (mean token NLL, nats) of the live adapter and the candidate on the
    same held-out texts: ``new_*`` on the new usage, ``old_*`` on the reference usage (may be
    empty). Arrays of equal length per pair, text ``n`` at index ``n``."""

    new_live: np.ndarray
    new_candidate: np.ndarray
    old_live: np.ndarray = field(default_factory=lambda: np.zeros(0))
    old_candidate: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        for name in ("new_live", "new_candidate", "old_live", "old_candidate"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.float64))
        if self.new_live.shape != self.new_candidate.shape or self.new_live.ndim != 1:
            raise ValueError("new_live and new_candidate must be 1-d and of equal length")
        if self.old_live.shape != self.old_candidate.shape or self.old_live.ndim != 1:
            raise ValueError("old_live and old_candidate must be 1-d and of equal length")

    def finite(self) -> bool:
        return all(
            bool(np.isfinite(getattr(self, n)).all())
            for n in ("new_live", "new_candidate", "old_live", "old_candidate")
        )


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval of a mean difference (nats): point estimate and bounds."""

    estimate: float
    low: float
    high: float


def paired_bootstrap(
    differences: np.ndarray, confidence: float, n_resamples: int, seed: int
) -> Interval:
    """Percentile interval of ``mean(differences)`` from resampling the paired differences with
    replacement (seeded numpy; resample means in blocks to bound memory)."""
    values = np.asarray(differences, dtype=np.float64)
    n = len(values)
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    block = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_resamples, block):
        size = min(block, n_resamples - start)
        means[start : start + size] = values[rng.integers(0, n, size=(size, n))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(float(values.mean()), float(low), float(high))


@dataclass(frozen=True)
class GateDecision:
    """``promote`` or not, why (one line), and the two numbers the rule compared; ``pinned``:
    the candidate passed the rule but its language is pinned (so it is held, not rejected).
    With paired per-text losses, ``gain``/``forgetting`` are the bootstrap point estimates and
    ``gain_interval``/``forgetting_interval`` their intervals at ``confidence``."""

    promote: bool
    reason: str
    gain: float
    forgetting: float
    pinned: bool = False
    gain_interval: Interval | None = None
    forgetting_interval: Interval | None = None
    confidence: float | None = None

    def interval_metrics(self) -> dict[str, float]:
        """``gate_*`` values for the version's metrics (floats only; empty without intervals):
        ``gate_gain``, ``gate_gain_low``, ``gate_gain_high``, ``gate_forgetting``,
        ``gate_forgetting_low``, ``gate_forgetting_high``, ``gate_confidence``."""
        out: dict[str, float] = {}
        for name, interval in (
            ("gain", self.gain_interval),
            ("forgetting", self.forgetting_interval),
        ):
            if interval is not None:
                out[f"gate_{name}"] = interval.estimate
                out[f"gate_{name}_low"] = interval.low
                out[f"gate_{name}_high"] = interval.high
        if out and self.confidence is not None:
            out["gate_confidence"] = self.confidence
        return out


@dataclass(frozen=True)
class PromotionGate:
    """``min_gain``: nats the new-usage loss must drop by (strictly more; with paired losses,
    its interval's lower bound); ``max_forgetting``: nats the earlier-usage loss may rise by
    (with paired losses, its interval's upper bound); ``confidence``, ``n_resamples``,
    ``seed``, ``min_texts``: the paired bootstrap (module docstring)."""

    min_gain: float = 0.0
    max_forgetting: float = 0.05
    confidence: float = 0.95
    n_resamples: int = 2000
    seed: int = 0
    min_texts: int = 8

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1.0:
            raise ValueError(f"confidence must be in [0.5, 1), got {self.confidence}")
        if self.n_resamples < 100:
            raise ValueError(f"n_resamples must be at least 100, got {self.n_resamples}")
        if self.min_texts < 2:
            raise ValueError(f"min_texts must be at least 2, got {self.min_texts}")

    def judge(
        self,
        losses: HeldOutLosses,
        *,
        others: Mapping[str, float] | None = None,
        pinned: bool = False,
        paired: PairedLosses | None = None,
    ) -> GateDecision:
        """Promote only if better on the new usage and not worse (beyond the tolerance) on the
        old; ``gain = live_new - candidate_new``, ``forgetting = candidate_old - live_old``.
        Any non-finite loss, or non-finite value among ``others`` (the run's other metrics,
        e.g. the final training loss), rejects, naming them (``gain``/``forgetting`` are then
        NaN). ``pinned``: a candidate that passes is refused anyway, reason ``pinned: …``."""
        values = {name: float(value) for name, value in (others or {}).items()}
        values.update({name: float(getattr(losses, name)) for name in LOSS_NAMES})
        bad = sorted(name for name, value in values.items() if not math.isfinite(value))
        if bad:
            listed = ", ".join(f"{name}={values[name]}" for name in bad)
            reason = f"non-finite metrics ({listed}): the run diverged or its evaluation failed"
            return GateDecision(False, reason, math.nan, math.nan)
        if paired is not None:
            return self._judge_paired(paired, pinned)
        gain = losses.live_new_loss - losses.candidate_new_loss
        forgetting = losses.candidate_old_loss - losses.live_old_loss
        if gain <= self.min_gain:
            reason = f"no gain on the new usage ({gain:+.4f} nats, need > {self.min_gain})"
            return GateDecision(False, reason, gain, forgetting)
        if forgetting > self.max_forgetting:
            reason = f"forgets the earlier usage ({forgetting:+.4f} nats > {self.max_forgetting})"
            return GateDecision(False, reason, gain, forgetting)
        reason = f"gain {gain:+.4f} nats on new usage, forgetting {forgetting:+.4f} nats"
        if pinned:
            reason = f"pinned: automatic promotion is paused for this language ({reason})"
            return GateDecision(False, reason, gain, forgetting, pinned=True)
        return GateDecision(True, reason, gain, forgetting)

    def _judge_paired(self, paired: PairedLosses, pinned: bool) -> GateDecision:
        """The confidence rule of the module docstring."""
        n_new, n_old = len(paired.new_live), len(paired.old_live)
        if not paired.finite():
            reason = "non-finite per-text losses: the run diverged or its evaluation failed"
            return GateDecision(False, reason, math.nan, math.nan)
        if n_new < self.min_texts:
            reason = (
                f"too few held-out new-usage texts ({n_new} < {self.min_texts}) to decide "
                "with confidence"
            )
            return GateDecision(False, reason, math.nan, math.nan)
        level = f"{self.confidence:.0%}"
        gain = paired_bootstrap(
            paired.new_live - paired.new_candidate, self.confidence, self.n_resamples, self.seed
        )
        forgetting = (
            paired_bootstrap(
                paired.old_candidate - paired.old_live,
                self.confidence,
                self.n_resamples,
                self.seed + 1,
            )
            if n_old
            else None
        )
        decided = {
            "gain_interval": gain,
            "forgetting_interval": forgetting,
            "confidence": self.confidence,
        }
        shown_f = forgetting.estimate if forgetting is not None else 0.0
        gain_text = (
            f"gain {gain.estimate:+.4f} nats [{gain.low:+.4f}, {gain.high:+.4f}] ({level}, "
            f"{n_new} texts)"
        )
        if gain.low <= self.min_gain:
            reason = f"gain not shown: {gain_text}; lower bound must exceed {self.min_gain}"
            return GateDecision(False, reason, gain.estimate, shown_f, **decided)  # type: ignore[arg-type]
        forget_text = "no reference texts"
        if forgetting is not None:
            forget_text = (
                f"forgetting {forgetting.estimate:+.4f} nats [{forgetting.low:+.4f}, "
                f"{forgetting.high:+.4f}] ({n_old} texts)"
            )
            if forgetting.high >= self.max_forgetting:
                reason = (
                    f"forgets the earlier usage: {forget_text}; upper bound must stay under "
                    f"{self.max_forgetting}; {gain_text}"
                )
                return GateDecision(False, reason, gain.estimate, shown_f, **decided)  # type: ignore[arg-type]
        reason = f"{gain_text}; {forget_text}"
        if pinned:
            reason = f"pinned: automatic promotion is paused for this language ({reason})"
            return GateDecision(False, reason, gain.estimate, shown_f, True, **decided)  # type: ignore[arg-type]
        return GateDecision(True, reason, gain.estimate, shown_f, **decided)  # type: ignore[arg-type]
