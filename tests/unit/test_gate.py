"""The promotion gate with non-finite metrics (issue 10, case 7): a diverged run fails the gate
with a clear reason, and nothing non-finite is ever stored or published."""

from __future__ import annotations

import math
import uuid

import numpy as np
import pytest

from compass.core.errors import InvalidEventError
from compass.core.events import AdapterUpdated, PeftInfo, decode, encode
from compass.core.gate import PromotionGate, finite_metrics
from workers.adapter_worker import Evaluation


def _evaluation(**overrides: float) -> Evaluation:
    values: dict[str, float] = dict(
        live_new_loss=3.0, live_old_loss=2.0, candidate_new_loss=2.5, candidate_old_loss=2.0,
        training_seconds=1.0, evaluation_seconds=1.0, train_final_loss=2.0, n_train_texts=4,
        n_eval_new=4, n_eval_old=4,
    )  # fmt: skip
    values.update(overrides)
    return Evaluation(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ["candidate_new_loss", "candidate_old_loss", "live_new_loss"])
def test_a_non_finite_loss_fails_the_gate_with_a_clear_reason(name: str, value: float) -> None:
    gate = PromotionGate(min_gain=-10.0, max_forgetting=10.0)  # would promote anything finite
    decision = gate.judge(_evaluation(**{name: value}))
    assert not decision.promote
    assert decision.reason.startswith("non-finite metrics") and name in decision.reason
    assert math.isnan(decision.gain) and math.isnan(decision.forgetting)


def test_non_finite_other_metrics_fail_the_gate_too() -> None:
    evaluation = _evaluation(train_final_loss=math.nan)
    gate = PromotionGate()
    assert gate.judge(evaluation).promote  # the held-out losses alone look fine
    decision = gate.judge(evaluation, others={"train_final_loss": math.nan})
    assert not decision.promote and "train_final_loss=nan" in decision.reason


def test_metrics_keep_only_finite_values() -> None:
    evaluation = _evaluation(candidate_new_loss=math.nan, train_final_loss=math.inf)
    metrics = evaluation.metrics()
    assert "candidate_new_loss" not in metrics and "train_final_loss" not in metrics
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["live_new_loss"] == 3.0
    assert evaluation.non_finite() == ["candidate_new_loss", "train_final_loss"]
    assert finite_metrics({"a": 1, "b": -math.inf}) == ({"a": 1.0}, ["b"])


def test_an_announcement_never_carries_a_non_finite_metric() -> None:
    fields = dict(
        message_id=uuid.uuid4(), language="fr", base_model="m", base_model_revision="r",
        adapter_id="fr:m", version=1, adapter_name="fr-v1", artifact_uri="file:///a",
        manifest={}, peft=PeftInfo(type="LORA", r=8, alpha=16.0, target_modules=["q_proj"]),
    )  # fmt: skip
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            AdapterUpdated(**fields, metrics={"candidate_new_loss": bad})
    good = AdapterUpdated(**fields, metrics={"candidate_new_loss": 2.5})
    assert decode(encode(good), AdapterUpdated) == good
    raw = encode(good).replace(b"2.5", b"NaN")
    with pytest.raises(InvalidEventError):
        decode(raw, AdapterUpdated)


def test_the_announcement_builder_leaves_non_finite_metrics_out_and_keeps_a_given_time() -> None:
    from datetime import UTC, datetime

    from compass.core.errors import DataError
    from compass.lifecycle import announcement
    from compass.ports.storage import AdapterVersionRecord

    fields = {name: None for name in AdapterVersionRecord.__dataclass_fields__}
    version = AdapterVersionRecord(**{
        **fields, "language": "fr", "base_model": "m", "number": 2, "artifact_uri": "file:///a",
        "artifact_sha256": "ab12" * 16, "base_model_revision": "r", "manifest": {},
        "metrics": {"candidate_new_loss": 2.5, "train_final_loss": math.inf},
        "peft_config": {"r": 8, "alpha": 16.0, "target_modules": ["q_proj"]},
    })  # type: ignore[arg-type]  # fmt: skip
    went_live = datetime(2026, 3, 1, 12, tzinfo=UTC)
    message = announcement(
        version, previous_version=None, action="promote", reason="", created_at=went_live
    )
    assert message.metrics == {"candidate_new_loss": 2.5}  # inf left out, not a refusal
    assert message.created_at == went_live and message.adapter_name == "fr-v2-ab12ab12"
    fresh = announcement(version, previous_version=1, action="rollback", reason="why")
    assert fresh.created_at > went_live and fresh.message_id != message.message_id
    with pytest.raises(DataError, match="PEFT settings are incomplete"):
        announcement(
            AdapterVersionRecord(**{**version.__dict__, "peft_config": {}}),
            previous_version=None, action="promote", reason="",
        )  # fmt: skip


def _paired(gain: float, spread: float, n: int = 64, forgetting: float = 0.0, seed: int = 0):
    from compass.core.gate import PairedLosses

    rng = np.random.default_rng(seed)
    live_new = 3.0 + rng.normal(0, 0.5, n)
    live_old = 2.0 + rng.normal(0, 0.5, n)
    return PairedLosses(
        new_live=live_new,
        new_candidate=live_new - gain + rng.normal(0, spread, n),
        old_live=live_old,
        old_candidate=live_old + forgetting + rng.normal(0, spread, n),
    )


def test_a_noisy_gain_is_not_promoted_where_the_point_rule_would_promote() -> None:
    """Issue 15: the point rule promotes any positive mean gain; with a paired bootstrap the
    lower bound of a small, noisy gain does not clear the margin."""
    paired = _paired(gain=0.01, spread=0.3)
    point = float(np.mean(paired.new_live - paired.new_candidate))
    assert point > 0  # what the old rule looked at
    gate = PromotionGate(min_gain=0.0, max_forgetting=0.05)
    decision = gate.judge(_evaluation(), paired=paired)
    assert not decision.promote and decision.reason.startswith("gain not shown")
    assert decision.gain_interval is not None
    assert decision.gain_interval.low <= 0.0 < decision.gain_interval.high
    assert decision.gain == pytest.approx(point)


def test_a_clear_gain_is_promoted_and_its_intervals_are_recorded() -> None:
    paired = _paired(gain=0.2, spread=0.05)
    decision = PromotionGate(min_gain=0.05, max_forgetting=0.05).judge(_evaluation(), paired=paired)
    assert decision.promote, decision.reason
    metrics = decision.interval_metrics()
    assert set(metrics) == {
        "gate_gain", "gate_gain_low", "gate_gain_high", "gate_forgetting",
        "gate_forgetting_low", "gate_forgetting_high", "gate_confidence",
    }  # fmt: skip
    assert metrics["gate_gain_low"] > 0.05 and metrics["gate_confidence"] == 0.95
    assert metrics["gate_gain_low"] <= metrics["gate_gain"] <= metrics["gate_gain_high"]
    again = PromotionGate(min_gain=0.05, max_forgetting=0.05).judge(_evaluation(), paired=paired)
    assert again.interval_metrics() == metrics  # seeded: the same texts, the same interval


def test_forgetting_is_judged_by_its_upper_bound() -> None:
    """Mean forgetting 0.03 < bound 0.05, but its upper bound is above it: rejected."""
    paired = _paired(gain=0.3, spread=0.2, forgetting=0.03, n=40)
    decision = PromotionGate(min_gain=0.0, max_forgetting=0.05).judge(_evaluation(), paired=paired)
    assert decision.forgetting < 0.05
    assert decision.forgetting_interval is not None
    assert decision.forgetting_interval.high >= 0.05
    assert not decision.promote and decision.reason.startswith("forgets")


def test_too_few_held_out_texts_reject_and_bad_settings_fail() -> None:
    decision = PromotionGate().judge(_evaluation(), paired=_paired(gain=1.0, spread=0.01, n=5))
    assert not decision.promote and "too few" in decision.reason
    with pytest.raises(ValueError):
        PromotionGate(confidence=1.0)
