"""Unique serving names, the manifest hash, the announced PEFT block and the servability
check of the training config (issue 11)."""

from __future__ import annotations

import hashlib
import json

import pytest

from compass.core.errors import ConfigError
from compass.core.events import AdapterUpdated, PeftInfo
from compass.core.gate import PromotionGate
from compass.core.naming import adapter_name, manifest_sha256
from compass.lm.training.config import AdapterTrainingConfig

MANIFEST = {"adapter_model.safetensors": "aa" * 32, "adapter_config.json": "bb" * 32}


def test_manifest_hash_is_sha256_of_the_sorted_entries() -> None:
    expected = hashlib.sha256(
        json.dumps(dict(sorted(MANIFEST.items())), sort_keys=True).encode()
    ).hexdigest()
    assert manifest_sha256(MANIFEST) == expected
    assert manifest_sha256(dict(reversed(list(MANIFEST.items())))) == expected  # order-free
    changed = {**MANIFEST, "adapter_model.safetensors": "ab" * 32}
    assert manifest_sha256(changed) != expected


def test_adapter_name_carries_number_and_content() -> None:
    digest = manifest_sha256(MANIFEST)
    assert adapter_name("fr", 3, digest) == f"fr-v3-{digest[:8]}"
    assert adapter_name("pt-BR", 1, "ABCDEF0123456789") == "pt-BR-v1-abcdef01"
    other = manifest_sha256({**MANIFEST, "adapter_config.json": "cc" * 32})
    assert adapter_name("fr", 3, digest) != adapter_name("fr", 3, other)  # after a reset
    for number, bad in ((0, digest), (1, "abc"), (1, "zz" * 32)):
        with pytest.raises(ValueError):
            adapter_name("fr", number, bad)


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"serving_target": "vllm", "method": "dora"}, ["DoRA"]),
        ({"serving_target": "vllm", "r": 32}, ["r=32", "16"]),
        ({"serving_target": "vllm", "method": "dora", "r": 64}, ["DoRA", "r=64"]),
        ({"serving_target": "sglang", "method": "dora"}, ["DoRA"]),
    ],
)
def test_serving_target_refuses_what_the_engine_cannot_serve(
    options: dict[str, object], refused: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        AdapterTrainingConfig(**options)  # type: ignore[arg-type]
    message = str(caught.value)
    assert message.count("\n") == 0 and "not be servable by" in message
    assert all(part in message for part in refused)


def test_servable_configs_pass_and_old_files_still_load() -> None:
    AdapterTrainingConfig(serving_target="vllm", r=16)
    AdapterTrainingConfig(serving_target="sglang", r=64)
    AdapterTrainingConfig(method="dora", r=64)  # 'any' checks nothing
    with pytest.raises(ConfigError, match="serving_target"):
        AdapterTrainingConfig(serving_target="lorax")  # type: ignore[arg-type]
    old = AdapterTrainingConfig().to_dict()
    del old["fields"]["serving_target"]  # a config saved before issue 11
    assert AdapterTrainingConfig.from_dict(old).serving_target == "any"
    with pytest.raises(ConfigError, match="not be servable"):
        AdapterTrainingConfig().replace(serving_target="vllm", r=32)


def test_peft_block_announces_dora_and_dtype_and_old_messages_decode() -> None:
    info = AdapterTrainingConfig(method="dora", r=4).peft_settings(dtype="bfloat16").to_info()
    assert (info.type, info.use_dora, info.dtype, info.r) == ("LORA", True, "bfloat16", 4)
    old = PeftInfo.model_validate(
        {"type": "LORA", "r": 8, "alpha": 16.0, "target_modules": ["q_proj"]}
    )
    assert not old.use_dora and old.dtype is None and old.modules_to_save is None
    assert AdapterUpdated.model_fields["action"].default == "promote"
    assert AdapterUpdated.model_fields["reason"].default == ""


class _Losses:
    live_new_loss = 3.0
    live_old_loss = 2.0
    candidate_new_loss = 2.5
    candidate_old_loss = 2.0


def test_gate_refuses_a_passing_candidate_while_pinned_and_only_then() -> None:
    gate = PromotionGate()
    assert gate.judge(_Losses()).promote
    held = gate.judge(_Losses(), pinned=True)
    assert not held.promote and held.pinned and held.reason.startswith("pinned")
    worse = type("Worse", (_Losses,), {"candidate_new_loss": 3.5})()
    failed = gate.judge(worse, pinned=True)  # the rule rejects first: rejected, not held
    assert not failed.promote and not failed.pinned and "no gain" in failed.reason


def test_the_serving_target_setting_reaches_the_worker_training_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from compass.config import Settings
    from workers.runner import servable_training

    monkeypatch.setenv("COMPASS_SERVING_TARGET", "vllm")
    target = Settings().serving_target
    assert target == "vllm"
    bound = servable_training(AdapterTrainingConfig(r=8), target)
    assert bound.serving_target == "vllm" and bound.r == 8
    # an explicit target in the config wins; "any" leaves the config alone
    assert (
        servable_training(AdapterTrainingConfig(serving_target="sglang"), target).serving_target
        == "sglang"
    )
    assert servable_training(AdapterTrainingConfig(r=64), "any").serving_target == "any"
    # what vLLM would refuse fails when the worker is built, naming the reason
    with pytest.raises(ConfigError, match="r=32"):
        servable_training(AdapterTrainingConfig(r=32), target)
    with pytest.raises(ConfigError, match="DoRA"):
        servable_training(AdapterTrainingConfig(method="dora"), target)
    monkeypatch.setenv("COMPASS_SERVING_TARGET", "lorax")
    with pytest.raises(ValueError, match="serving_target"):
        Settings()
