"""Issue 14, part 3: bad files give clear errors; nothing is promoted or loaded; what was live
stays live.

* serving (the real PEFT engine on the shipped SmolLM2): an artifact with a changed or truncated
  file (checksum mismatch), one truncated *and* listed with its truncated checksum (a worker
  that wrote a short file), a corrupt ``adapter_config.json``, a missing file → each refused
  with its code; the previous adapter keeps serving and answering;
* a truncated or bit-flipped semantic map → :class:`DataError`, the active map unchanged;
* a base model id that does not exist offline → one :class:`ModelLoadError` line;
* the adapter worker with a base model that does not exist, or with a live artifact that is
  truncated → the job fails with that error, no version is written, the live one stays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compass.config import Settings
from compass.core.errors import DataError, ModelLoadError
from compass.core.events import AdapterUpdated, PeftInfo
from compass.core.semantic_map import SemanticMap
from compass.lab.usage_world import UsageWorld
from compass.lm.training.artifacts import read_metadata
from compass.lm.training.config import AdapterTrainingConfig
from compass.lm.training.service import train_to_folder
from compass.ports.storage import NewAdapterVersion
from compass.serving import ServeSync
from compass.serving.peft_engine import PeftEngine
from compass.sql.unit_of_work import open_store
from tests.integration.test_adapter_worker import _drift, _worker, world  # noqa: F401

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

BASE = "smollm2-135m"
PROMPT = "Bonjour, comment allez-vous ?"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def adapter(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (barely trained) French LoRA adapter of the shipped model."""
    config = AdapterTrainingConfig(r=4, alpha=8.0, steps=1, batch_size=2, max_length=16,
                                   target_modules=("q_proj", "v_proj"))  # fmt: skip
    texts = ["Bonjour, je voudrais imprimer un document.", "Où est la gare, s'il vous plaît ?"]
    out = tmp_path_factory.mktemp("adapters") / "fr-v1"
    return train_to_folder(
        texts, out, base_model_id=BASE, data_dir=cache_dir, config=config, progress=False
    ).path


def _message(
    folder: Path,
    version: int,
    manifest: dict[str, str] | None = None,
    *,
    meta_of: Path | None = None,
) -> AdapterUpdated:
    meta = read_metadata(meta_of or folder)  # a spoiled folder's own metadata would not verify
    if manifest is None:
        manifest = json.loads((folder / "manifest.json").read_text())
    return AdapterUpdated(
        message_id=uuid.uuid4(), language="fr", base_model=BASE,
        base_model_revision=meta["base_model_revision"], adapter_id=f"fr:{BASE}",
        version=version, adapter_name=f"fr-v{version}", artifact_uri=str(folder),
        manifest=manifest,
        peft=PeftInfo.model_validate(
            {k: v for k, v in meta["peft"].items() if k in PeftInfo.model_fields}
        ),
    )  # fmt: skip


@pytest.fixture(scope="module")
def serving(
    adapter: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeSync]:
    sync = ServeSync(PeftEngine(BASE, cache_dir), tmp_path_factory.mktemp("serve-cache"), grace_s=0)
    assert sync.handle(_message(adapter, 1)).status == "applied"
    try:
        yield sync
    finally:
        sync.close()


def _spoiled(adapter: Path, tmp_path: Path, name: str, how: str) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / name
    shutil.copytree(adapter, folder)
    manifest = json.loads((adapter / "manifest.json").read_text())
    weights = folder / "adapter_model.safetensors"
    config = folder / "adapter_config.json"
    if how == "flipped_byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "truncated_listed":  # the manifest agrees with the short file
        weights.write_bytes(weights.read_bytes()[:100])
        manifest["adapter_model.safetensors"] = _sha(weights)
    elif how == "corrupt_config_listed":
        config.write_text('{"peft_type": "LORA", "r": ')
        manifest["adapter_config.json"] = _sha(config)
    elif how == "missing":
        weights.unlink()
    return folder, manifest


@pytest.mark.parametrize(
    ("how", "code"),
    [
        ("flipped_byte", "artifact_corrupt"),
        ("truncated", "artifact_corrupt"),
        ("truncated_listed", "load_failed"),
        ("corrupt_config_listed", "load_failed"),
        ("missing", "artifact_missing"),
    ],
)
def test_a_bad_artifact_is_refused_and_the_previous_adapter_keeps_serving(
    serving: ServeSync, adapter: Path, tmp_path: Path, how: str, code: str
) -> None:
    version = 2 + len(serving.outcomes)
    folder, manifest = _spoiled(adapter, tmp_path, f"fr-v{version}", how)
    outcome = serving.handle(_message(folder, version, manifest, meta_of=adapter))
    assert (outcome.status, outcome.reason.split(":", 1)[0]) == ("refused", code), outcome
    assert serving.routes() == {"fr": "fr-v1"}
    assert f"fr-v{version}" not in serving.engine.loaded()
    assert not (serving.cache_dir / f"fr-v{version}").exists() or code == "load_failed"
    assert serving.answer("fr", PROMPT, max_new_tokens=4)  # still answering, with fr-v1


def test_a_truncated_or_corrupt_semantic_map_is_refused_and_the_active_one_stays(
    pg_admin_url: str, tmp_path: Path
) -> None:
    """On its own database: activating a map there must not disturb the worker's world."""
    from compass.sql.migrate import upgrade
    from compass.sql.server import temporary_database

    with temporary_database(pg_admin_url) as url:
        upgrade(url)
        _semantic_map_case(url, tmp_path)


def _semantic_map_case(url: str, tmp_path: Path) -> None:
    from compass.bootstrap import ensure_semantic_map

    rng = np.random.default_rng(0)
    live = SemanticMap.fit(rng.normal(size=(60, 16)).astype(np.float32), k=3, seed=0)
    store = open_store(url)
    with store() as uow:
        before = uow.semantic_maps.save_semantic_map(live, activate=True).version
        uow.commit()
    good = SemanticMap.fit(rng.normal(size=(60, 16)).astype(np.float32), k=4, seed=1)
    data = good.save(tmp_path / "map.npz").read_bytes()
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    settings = Settings(data_dir=tmp_path, database_url=url)
    for name, body in [("empty", b""), ("100", data[:100]), ("half", data[: len(data) // 2]),
                       ("less-one", data[:-1]), ("flipped", bytes(flipped))]:  # fmt: skip
        path = tmp_path / f"{name}.npz"
        path.write_bytes(body)
        with pytest.raises(DataError, match=r"not a semantic map file|does not match"):
            ensure_semantic_map(settings, path)
        with store() as uow:
            active = uow.semantic_maps.active_semantic_map()
        assert active is not None and active.version == before, name
    store.dispose()


def test_a_base_model_that_does_not_exist_offline_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compass.lm.models import load_causal_lm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for model_id, says in [("no-such-org/no-such-model-14", "could not load model"),
                           ("./no/such/folder", "does not exist")]:  # fmt: skip
        with pytest.raises(ModelLoadError, match=says) as caught:
            load_causal_lm(model_id, tmp_path)
        assert "\n" not in str(caught.value)  # one line


def _versions(world_: UsageWorld) -> list[tuple[int, str]]:
    with world_.uow_factory() as uow:
        adapter = uow.adapters.get_adapter("fr", BASE)
        return (
            []
            if adapter is None
            else [(v.number, v.status) for v in uow.adapters.list_versions(adapter.adapter_id)]
        )


def test_the_worker_with_a_missing_base_model_fails_the_job_and_writes_nothing(
    world: UsageWorld,  # noqa: F811
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = _versions(world)
    worker = _worker(world, cache_dir)
    worker.settings = dataclasses.replace(worker.settings, base_model_id="no-such-org/model-14")
    outcome = worker.handle(_drift(world, shift=11))
    assert outcome.status == "failed" and "could not load model" in outcome.reason
    assert _versions(world) == before


def test_a_truncated_live_artifact_fails_the_job_and_the_live_version_stays(
    world: UsageWorld,  # noqa: F811
    adapter: Path,
    cache_dir: Path,
    tmp_path: Path,
) -> None:
    folder, _ = _spoiled(adapter, tmp_path, "fr-live", "truncated_listed")
    manifest = {n: _sha(folder / n) for n in ("adapter_config.json", "adapter_model.safetensors")}
    with world.uow_factory() as uow:
        record = uow.adapters.get_or_create_adapter("fr", BASE)
        live = uow.adapters.create_version(
            record.adapter_id,
            NewAdapterVersion(
                artifact_uri=folder.resolve().as_uri(), artifact_sha256="1" * 64,
                sampler="compass", manifest=manifest,
            ),
        )  # fmt: skip
        uow.adapters.activate_version(record.adapter_id, live.number)
        uow.commit()
    before = _versions(world)
    outcome = _worker(world, cache_dir).handle(_drift(world, shift=12))
    assert outcome.status == "failed", outcome
    assert _versions(world) == before
    with world.uow_factory() as uow:
        still = uow.adapters.active_version("fr", BASE)
    assert still is not None and still.number == live.number
