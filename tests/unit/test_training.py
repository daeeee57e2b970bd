"""Adapter training on the real shipped SmolLM2-135M, with real text from chatterbot-corpus.

The dequantised model is cached under ``<repo>/.data/models`` by the first run (about 30 s);
later loads take well under a second, so every test gets a fresh, adapter-free base model.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from compass.core.errors import CompassError, ConfigError, DataError, ModelLoadError
from compass.lm.evaluation import text_nll
from compass.lm.models import LoadedModel, load_causal_lm
from compass.lm.training import (
    AdapterTrainingConfig,
    continue_adapter,
    estimate_fisher,
    load_adapter,
    read_metadata,
    replay_buffer,
    save_adapter,
    train_adapter,
)

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = ROOT / ".data"


def chatterbot_lines(language: str, topic: str) -> list[str]:
    spec = importlib.util.find_spec("chatterbot_corpus")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / language / f"{topic}.yml"
    lines: list[str] = []
    for conversation in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
        lines.extend(str(x) for x in conversation if str(x).strip())
    return lines


@pytest.fixture()
def base() -> LoadedModel:
    return load_causal_lm("smollm2-135m", DATA_DIR, device="cpu")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return chatterbot_lines("english", "food")[:16]


SMALL = AdapterTrainingConfig(steps=8, batch_size=4, max_length=32, seed=3)


def test_config_validates_and_round_trips(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="r must be"):
        AdapterTrainingConfig(r=0)
    with pytest.raises(ConfigError, match="exactly one of steps and epochs"):
        AdapterTrainingConfig(steps=None, epochs=None)
    with pytest.raises(ConfigError, match="method"):
        AdapterTrainingConfig(method="ia3")  # type: ignore[arg-type]
    config = SMALL.replace(method="dora", target_modules=["q_proj", "v_proj"])
    config.save(tmp_path / "c.json")
    raw = json.loads((tmp_path / "c.json").read_text())
    assert raw["type"] == "AdapterTrainingConfig" and raw["version"] == 1
    assert list(raw["fields"]) == sorted(raw["fields"])
    assert AdapterTrainingConfig.load(tmp_path / "c.json") == config
    del raw["fields"]["r"]
    with pytest.raises(ConfigError, match="missing fields: r"):
        AdapterTrainingConfig.from_dict(raw)


def test_few_steps_lower_loss_on_training_texts(base: LoadedModel, texts: list[str]) -> None:
    before = text_nll(base.model, base.tokenizer, texts, max_length=32).mean_loss
    seen: list[tuple[int, int, float]] = []
    adapter = train_adapter(
        base, texts, SMALL.replace(steps=8), progress=False,
        on_step=lambda step, steps, loss: seen.append((step, steps, loss)),
    )  # fmt: skip
    after = text_nll(adapter.model, base.tokenizer, texts, max_length=32).mean_loss
    assert after < before - 0.3, (before, after)
    assert adapter.metrics.steps == 8 and adapter.metrics.samples == 32
    # the progress callback (the worker's step/loss metrics) sees every step's task loss
    assert [(step, steps) for step, steps, _ in seen] == [(i, 8) for i in range(1, 9)]
    assert tuple(round(loss, 5) for _, _, loss in seen) == adapter.metrics.losses
    assert adapter.metrics.samples_per_second > 0


def test_training_is_deterministic_under_a_seed(base: LoadedModel, texts: list[str]) -> None:
    first = train_adapter(base, texts, SMALL.replace(steps=2, batch_size=2), progress=False)
    state = first.state()
    first.detach()
    second = train_adapter(base, texts, SMALL.replace(steps=2, batch_size=2), progress=False)
    assert first.metrics.losses == second.metrics.losses
    assert all(torch.equal(state[k], v) for k, v in second.state().items())
    second.detach()
    other = train_adapter(base, texts, SMALL.replace(steps=2, batch_size=2, seed=4), progress=False)
    assert other.metrics.losses != first.metrics.losses


def test_save_load_gives_identical_logits(
    base: LoadedModel, texts: list[str], tmp_path: Path
) -> None:
    adapter = train_adapter(
        base,
        texts,
        SMALL.replace(steps=2, batch_size=2),
        progress=False,
        provenance={"sampler": "random"},
    )
    probe = base.tokenizer(texts[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = adapter.model(**probe).logits
    manifest = save_adapter(adapter, tmp_path / "a")
    adapter.detach()
    with torch.no_grad():
        plain = base.model(**probe).logits
    assert not torch.equal(plain, expected)  # the adapter did change the model
    assert set(manifest) == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "compass_adapter.json",
    }
    meta = read_metadata(tmp_path / "a")
    assert meta["base_model_id"] == "smollm2-135m" and meta["base_model_revision"] == base.revision
    assert meta["provenance"] == {"sampler": "random"}
    assert meta["metrics"]["steps"] == 2 and len(meta["data_hashes"]["train"]) == 64
    loaded = load_adapter(tmp_path / "a", base)
    with torch.no_grad():
        assert torch.equal(loaded.model(**probe).logits, expected)
    assert loaded.config == adapter.config


def test_broken_adapters_and_mismatched_base_fail_clearly(
    base: LoadedModel, texts: list[str], tmp_path: Path
) -> None:
    adapter = train_adapter(base, texts, SMALL.replace(steps=1), progress=False)
    save_adapter(adapter, tmp_path / "a")
    adapter.detach()
    other_base = dataclasses.replace(base, revision="0" * 64)
    with pytest.raises(ModelLoadError, match="was trained on smollm2-135m"):
        load_adapter(tmp_path / "a", other_base)
    weights = tmp_path / "a" / "adapter_model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_adapter(tmp_path / "a", base)
    weights.unlink()
    with pytest.raises(ModelLoadError, match="missing"):
        load_adapter(tmp_path / "a", base)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_adapter(tmp_path / "nothing", base)


def test_missing_and_corrupt_model_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_lm(str(tmp_path / "absent.gguf"), tmp_path, device="cpu")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_causal_lm(str(bad), tmp_path, device="cpu")
    folder = tmp_path / "folder"
    folder.mkdir()
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_causal_lm(str(folder), tmp_path, device="cpu")


@pytest.mark.slow
def test_corrupt_model_cache_is_rebuilt_not_trusted(tmp_path: Path, base: LoadedModel) -> None:
    # A cache whose weights were damaged is detected and rebuilt from the GGUF source.
    import shutil

    cache = tmp_path / "models" / "smollm2-135m"
    shutil.copytree(DATA_DIR / "models" / "smollm2-135m", cache)
    (cache / "model.safetensors").write_bytes(b"garbage")
    reloaded = load_causal_lm("smollm2-135m", tmp_path, device="cpu")
    assert reloaded.revision == base.revision
    probe = base.tokenizer(["Hello there"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(reloaded.model(**probe).logits, base.model(**probe).logits)


def test_ewc_with_large_lambda_stays_near_previous_weights(
    base: LoadedModel, texts: list[str]
) -> None:
    """EWC holds the parameters that matter for the earlier data (high Fisher), so the
    Fisher-weighted distance to the previous adapter is what a large lambda keeps small."""
    earlier = texts[:4]
    new_texts = chatterbot_lines("english", "sports")[:8]
    start = train_adapter(base, texts, SMALL.replace(steps=2, batch_size=2), progress=False)
    anchor = start.state()
    fisher = estimate_fisher(start.model, base.tokenizer, earlier, 32, "cpu")

    def weighted_drift(ewc_lambda: float) -> float:
        for name, param in start.model.named_parameters():
            if name in anchor:
                param.data.copy_(anchor[name])
        config = SMALL.replace(
            steps=6, batch_size=2, replay=False, ewc_lambda=ewc_lambda, fisher_samples=4,
            fisher_normalisation="mean",  # a scale-free lambda for this comparison
        )  # fmt: skip
        state = continue_adapter(start, new_texts, earlier, config, progress=False).state()
        return float(sum((fisher[k] * (state[k] - anchor[k]) ** 2).sum() for k in anchor))

    free = weighted_drift(0.0)
    held = weighted_drift(1e4)
    assert held < 0.25 * free, (held, free)


def test_replay_mixes_the_stated_share(base: LoadedModel, texts: list[str]) -> None:
    earlier = chatterbot_lines("english", "history") + chatterbot_lines("english", "science")
    clusters = [0] * len(chatterbot_lines("english", "history")) + [1] * len(
        chatterbot_lines("english", "science")
    )
    buffer = replay_buffer(earlier, 0.1, seed=0, clusters=clusters)
    assert len(buffer) == round(0.1 * len(earlier))
    from_first = sum(1 for t in buffer if t in set(earlier[: clusters.count(0)]))
    assert abs(from_first - 0.1 * clusters.count(0)) <= 1  # the cluster mix is kept
    start = train_adapter(base, texts, SMALL.replace(steps=1, batch_size=2), progress=False)
    config = SMALL.replace(steps=2, batch_size=2, ewc=False, replay_share=0.1, replay_batch_size=1)
    updated = continue_adapter(start, texts, earlier, config, clusters, progress=False)
    assert updated.metrics.replay_size == len(buffer)
    assert updated.metrics.samples == 2 * (2 + 1)
    assert updated.metrics.final_replay_loss is not None
    assert "replay" in updated.data_hashes
    with pytest.raises(DataError, match="earlier training texts"):
        continue_adapter(start, texts, [], config, progress=False)


def test_dora_trains_and_bad_targets_are_refused(base: LoadedModel, texts: list[str]) -> None:
    with pytest.raises(CompassError, match="do not exist"):
        train_adapter(base, texts, SMALL.replace(target_modules=("nope",)), progress=False)
    adapter = train_adapter(
        base, texts, SMALL.replace(method="dora", steps=1, batch_size=2), progress=False
    )
    assert any("magnitude" in name for name in adapter.state())
    with pytest.raises(DataError):
        train_adapter(base, [], SMALL, progress=False)


def test_continual_defaults_are_the_papers() -> None:
    """Issue 15: beta = 0.1 (the replay weight was 1.0) and lambda = 2 on the standard Fisher
    (it was rescaled to mean 1, so lambda = 2 was not the paper's lambda)."""
    config = AdapterTrainingConfig()
    assert config.replay_weight == 0.1 and config.ewc_lambda == 2.0
    assert config.fisher_normalisation == "none" and config.replay_share == 0.05
    saved_before = config.to_dict()
    del saved_before["fields"]["fisher_normalisation"]
    assert AdapterTrainingConfig.from_dict(saved_before).fisher_normalisation == "mean"
    with pytest.raises(ConfigError, match="fisher_normalisation"):
        AdapterTrainingConfig(fisher_normalisation="max")  # type: ignore[arg-type]


def test_fisher_is_the_mean_squared_gradient_of_each_texts_log_likelihood(
    base: LoadedModel, texts: list[str]
) -> None:
    """F_i = mean_n (d log p(x_n) / d theta_i)^2 (Kirkpatrick et al., 2017), computed by hand
    for two texts; ``"mean"`` is the same Fisher rescaled to mean 1."""
    from compass.lm.training.data import collate, encode_texts, token_losses

    adapter = train_adapter(base, texts, SMALL.replace(steps=1, batch_size=2), progress=False)
    model = adapter.model
    sample = texts[:2]
    fisher = estimate_fisher(model, base.tokenizer, sample, 32, "cpu")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    by_hand = {n: torch.zeros_like(p) for n, p in params.items()}
    model.eval()
    for ids in encode_texts(base.tokenizer, sample, 32):
        batch = collate([ids], base.tokenizer.pad_token_id)
        model.zero_grad()
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        token_losses(logits, batch.labels)[0].sum().backward()
        for n, p in params.items():
            by_hand[n] += p.grad.detach() ** 2 / len(sample)  # type: ignore[union-attr]
    for name in params:
        torch.testing.assert_close(fisher[name], by_hand[name], rtol=1e-4, atol=1e-12)
    scaled = estimate_fisher(model, base.tokenizer, sample, 32, "cpu", normalisation="mean")
    total = sum(float(f.sum()) for f in scaled.values())
    assert total / sum(f.numel() for f in scaled.values()) == pytest.approx(1.0, rel=1e-4)


def test_replay_strata_follow_the_parents_reference_distribution() -> None:
    """Issue 15: the buffer follows the distribution the previous adapter was built for (its
    reference distribution), not the cluster mix of whatever texts it happened to train on."""
    earlier = [f"text {i}" for i in range(200)]
    clusters = [0] * 150 + [1] * 50  # the earlier texts: 75 % cluster 0
    buffer = replay_buffer(
        earlier, 0.2, seed=0, clusters=clusters, reference_shares={0: 0.25, 1: 0.75}
    )
    assert len(buffer) == 40
    in_one = sum(1 for t in buffer if int(t.split()[1]) >= 150)
    assert in_one == 30  # 75 % of the buffer, as the reference says
    # a cluster with too few earlier texts passes its remainder to the others
    short = replay_buffer(earlier, 0.5, seed=0, clusters=clusters, reference_shares={1: 1.0})
    assert len(short) == 100 and sum(1 for t in short if int(t.split()[1]) >= 150) == 50
