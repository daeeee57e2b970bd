"""The promotion gate with non-finite metrics (issue 10, case 7): a diverged run fails the gate
with a clear reason, and nothing non-finite is ever stored or published."""

from __future__ import annotations

import math
import uuid

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
