"""The promotion gate: may a candidate adapter replace the live one?

The rule is ours (the paper's gate is not published): the candidate must lower the held-out loss
on the new usage by more than ``min_gain`` nats, and may raise the loss on the earlier usage by
at most ``max_forgetting`` nats. Losses are mean token negative log-likelihoods in nats. A
candidate that fails is still recorded (as ``rejected``) with the decision's reason.

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
from dataclasses import dataclass
from typing import Protocol

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
class GateDecision:
    """``promote`` or not, why (one line), and the two numbers the rule compared; ``pinned``:
    the candidate passed the rule but its language is pinned (so it is held, not rejected)."""

    promote: bool
    reason: str
    gain: float
    forgetting: float
    pinned: bool = False


@dataclass(frozen=True)
class PromotionGate:
    """``min_gain``: nats the new-usage loss must drop by (strictly more); ``max_forgetting``:
    nats the earlier-usage loss may rise by."""

    min_gain: float = 0.0
    max_forgetting: float = 0.05

    def judge(
        self,
        losses: HeldOutLosses,
        *,
        others: Mapping[str, float] | None = None,
        pinned: bool = False,
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
