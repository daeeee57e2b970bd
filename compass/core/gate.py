"""The promotion gate: may a candidate adapter replace the live one?

The rule is ours (the paper's gate is not published): the candidate must lower the held-out loss
on the new usage by more than ``min_gain`` nats, and may raise the loss on the earlier usage by
at most ``max_forgetting`` nats. Losses are mean token negative log-likelihoods in nats. A
candidate that fails is still recorded (as ``rejected``) with the decision's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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
    """``promote`` or not, why (one line), and the two numbers the rule compared."""

    promote: bool
    reason: str
    gain: float
    forgetting: float


@dataclass(frozen=True)
class PromotionGate:
    """``min_gain``: nats the new-usage loss must drop by (strictly more); ``max_forgetting``:
    nats the earlier-usage loss may rise by."""

    min_gain: float = 0.0
    max_forgetting: float = 0.05

    def judge(self, losses: HeldOutLosses) -> GateDecision:
        """Promote only if better on the new usage and not worse (beyond the tolerance) on the
        old; ``gain = live_new - candidate_new``, ``forgetting = candidate_old - live_old``."""
        gain = losses.live_new_loss - losses.candidate_new_loss
        forgetting = losses.candidate_old_loss - losses.live_old_loss
        if gain <= self.min_gain:
            reason = f"no gain on the new usage ({gain:+.4f} nats, need > {self.min_gain})"
            return GateDecision(False, reason, gain, forgetting)
        if forgetting > self.max_forgetting:
            reason = f"forgets the earlier usage ({forgetting:+.4f} nats > {self.max_forgetting})"
            return GateDecision(False, reason, gain, forgetting)
        reason = f"gain {gain:+.4f} nats on new usage, forgetting {forgetting:+.4f} nats"
        return GateDecision(True, reason, gain, forgetting)
