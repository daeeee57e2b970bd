"""The composition root with fakes, the promotion gate, the artifact store and the PEFT settings
the training config produces (fast: no services, no models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compass.bootstrap import bootstrap, open_artifact_store
from compass.config import Settings, load_settings
from compass.core.errors import ConfigError, DataError
from compass.core.gate import PromotionGate
from compass.lm.artifact_store import LocalArtifactStore, read_training_texts, write_training_texts
from compass.lm.training.config import AdapterTrainingConfig
from compass.ports.embedder import Embedder, EmbeddingKind
from tests.fake_vector_store import MemoryVectorStore
from tests.fakes import MemoryStore


class ToyEmbedder(Embedder):
    model_id = "toy@1"
    dim = 3

    def _embed_batch(self, texts: list[str], kind: EmbeddingKind) -> np.ndarray:
        return np.ones((len(texts), 3), dtype=np.float32)


class FakePublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.closed = False

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))

    def flush(self, timeout_s: float = 30.0) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_bootstrap_takes_fakes_and_leaves_them_open(tmp_path: Path) -> None:
    store, vectors, publisher = MemoryStore(), MemoryVectorStore(3), FakePublisher()
    settings = Settings(data_dir=tmp_path, sampler="random")
    services = bootstrap(
        settings, uow_factory=store, embedder=ToyEmbedder(), vector_store=vectors,
        publisher=publisher,
    )  # fmt: skip
    assert services.sampler.name == "random" and services.can_publish
    assert services.artifacts.version_dir("fr", "x") == tmp_path / "adapters" / "fr" / "x"
    with store() as uow:
        uow.outbox.add_outbox("adapter-updated", "fr", {"a": 1})
        uow.commit()
    assert services.relay().drain() == 1 and publisher.sent[0][:2] == ("adapter-updated", b"fr")
    services.close()
    assert not vectors.closed and not publisher.closed


def test_bootstrap_without_a_broker_cannot_publish(tmp_path: Path) -> None:
    services = bootstrap(
        Settings(data_dir=tmp_path), uow_factory=MemoryStore(), embedder=ToyEmbedder()
    )
    assert services.vector_store.dim == 3  # the embedder's dimension, on Qdrant Edge
    assert not services.can_publish
    with pytest.raises(ConfigError):
        _ = services.publisher
    services.close()
    services.close()  # twice is fine


def test_unknown_sampler_setting_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"COMPASS_SAMPLER: .*unknown sampler 'nope'.*compass"):
        load_settings(sampler="nope")


def test_gate_numerics() -> None:
    class Losses:
        live_new_loss, live_old_loss = 3.0, 2.0
        candidate_new_loss, candidate_old_loss = 2.5, 2.04

    decision = PromotionGate().judge(Losses())
    assert decision.promote and decision.gain == pytest.approx(0.5)
    assert decision.reason == "gain +0.5000 nats on new usage, forgetting +0.0400 nats"
    assert not PromotionGate(min_gain=0.5).judge(Losses()).promote  # strictly more than min_gain
    assert not PromotionGate(max_forgetting=0.03).judge(Losses()).promote


def test_local_artifact_store_round_trip(tmp_path: Path) -> None:
    artifacts = open_artifact_store(Settings(data_dir=tmp_path, artifacts_dir=tmp_path / "a b"))
    folder = artifacts.version_dir("pt-BR", "k1")
    folder.mkdir(parents=True)
    write_training_texts(folder, ["olá", "mundo"])
    uri = artifacts.uri(folder)
    assert uri.startswith("file://") and artifacts.local_path(uri) == folder.resolve()
    assert read_training_texts(artifacts.local_path(uri)) == ["olá", "mundo"]
    assert read_training_texts(tmp_path) == []
    with pytest.raises(DataError):
        LocalArtifactStore(tmp_path).local_path("s3://bucket/adapter")


def test_peft_settings_come_from_the_training_config() -> None:
    peft = AdapterTrainingConfig(method="dora", r=4, alpha=8.0).peft_settings()
    assert peft.to_dict() == {
        "type": "LORA", "r": 4, "alpha": 8.0, "use_dora": True,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
        "modules_to_save": [], "dtype": None,
    }  # fmt: skip
    info = peft.to_info()
    assert info.use_dora and info.modules_to_save is None  # DoRA is announced (issue 11)
    assert (info.type, info.r, info.alpha, info.target_modules) == ("LORA", 4, 8.0, list(
        peft.target_modules))  # fmt: skip
