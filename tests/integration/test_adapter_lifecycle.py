"""The adapter lifecycle (issue 11) on a real PostgreSQL: rollback announces the earlier version
through the outbox with its reason, a pin makes the worker's gate refuse with ``pinned`` and
unpin lets it promote again, retire, the history in ``adapter_events`` and the views, and
serving names that stay unique across a database reset.

The worker is the real :class:`~workers.adapter_worker.AdapterWorker` (claim, lease, pin check,
gate, version + outbox + event in one transaction); only selection and training are replaced by
a fixed candidate, so the test runs in seconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from compass.core.errors import DataError
from compass.core.events import AdapterUpdated, DriftEvent
from compass.core.gate import PairedLosses
from compass.core.naming import manifest_sha256
from compass.lifecycle import AdapterLifecycle
from compass.lm.training.config import AdapterTrainingConfig
from compass.ports.storage import AdapterVersionRecord, NewAdapterVersion, UnitOfWork
from compass.serving.live import read_live_adapters
from compass.sql.migrate import downgrade, upgrade
from compass.sql.server import temporary_database
from compass.sql.unit_of_work import SqlStore, open_store
from tests.integration.storage_support import (
    BASE,
    drift,
    store_fixture,  # noqa: F401 (a fixture)
)
from workers.adapter_worker import (
    AdapterWorker,
    Evaluation,
    SelectedData,
    TrainingOutcome,
    WorkerSettings,
)

pytestmark = pytest.mark.integration

PEFT = {
    "type": "LORA",
    "r": 8,
    "alpha": 16.0,
    "target_modules": ["q_proj", "v_proj"],
    "use_dora": True,
    "modules_to_save": [],
    "dtype": "float32",
}


class _Stub:
    name = "test"

    def uri(self, folder: Path) -> str:
        return f"file://{folder}"

    def texts(self, *args: Any, **kwargs: Any) -> list[str]:
        return ["bonjour"]

    def items(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []  # no held-out usage texts: the candidate's paired losses are given below


class FixedCandidateWorker(AdapterWorker):
    """The real worker, with selection and training replaced by a candidate that beats the
    live adapter (so only a pin can stop its promotion); ``salt`` changes its files."""

    def __init__(self, store: SqlStore, salt: str = "") -> None:
        self._uow_factory = store
        self._usage = _Stub()
        self._sampler = _Stub()  # type: ignore[assignment]
        self._artifacts = _Stub()  # type: ignore[assignment]
        self.salt = salt
        self.settings = WorkerSettings(
            base_model_id=BASE, data_dir=Path("/nonexistent"), worker_name="test-worker",
            lease=timedelta(minutes=5),
        )  # fmt: skip

    def select(self, drift: DriftEvent, held_out: Any = None) -> SelectedData:
        with self._uow_factory() as uow:
            adapter = uow.adapters.get_or_create_adapter(drift.language, BASE)
            live = uow.adapters.active_version(drift.language, BASE)
            uow.commit()
        return SelectedData(adapter, live, np.array([3.0, 1.0]), ["salut"], {})

    def _train_and_evaluate(
        self, drift: DriftEvent, live: Any, texts: Sequence[str], *args: Any
    ) -> TrainingOutcome:
        manifest = {
            "adapter_config.json": uuid.uuid5(uuid.NAMESPACE_URL, f"c{self.salt}").hex * 2,
            "adapter_model.safetensors": uuid.uuid4().hex * 2,
        }
        return TrainingOutcome(
            folder=Path("/adapters") / drift.language / str(drift.drift_id),
            manifest=manifest,
            manifest_sha256=manifest_sha256(manifest),
            base_model_revision="rev-1",
            peft=AdapterTrainingConfig(method="dora").peft_settings(dtype="float32"),
            evaluation=Evaluation(
                live_new_loss=3.0, live_old_loss=2.0, candidate_new_loss=2.5,
                candidate_old_loss=2.0, training_seconds=0.1, evaluation_seconds=0.1,
                train_final_loss=2.4, n_train_texts=1, n_eval_new=16, n_eval_old=16,
            ),
            # 16 held-out texts per usage: clearly better on the new, the same on the old
            paired=PairedLosses(
                new_live=np.full(16, 3.0) + np.linspace(0, 0.1, 16),
                new_candidate=np.full(16, 2.5) + np.linspace(0, 0.1, 16),
                old_live=np.full(16, 2.0), old_candidate=np.full(16, 2.0),
            ),
        )  # fmt: skip


def _versions(uow: UnitOfWork, language: str, n: int) -> list[AdapterVersionRecord]:
    adapter = uow.adapters.get_or_create_adapter(language, BASE)
    made = []
    for i in range(n):
        manifest = {"adapter_model.safetensors": uuid.uuid4().hex * 2}
        made.append(
            uow.adapters.create_version(
                adapter.adapter_id,
                NewAdapterVersion(
                    artifact_uri=f"file:///adapters/{language}/v{i + 1}",
                    artifact_sha256=manifest_sha256(manifest),
                    sampler="compass",
                    manifest=manifest,
                    peft_config=PEFT,
                    base_model_revision="rev-1",
                    metrics={"candidate_new_loss": 2.0 + i},
                ),
            )
        )
    return made


def _announcements(store: SqlStore, language: str) -> list[AdapterUpdated]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT payload FROM outbox WHERE topic = 'adapter-updated' AND key = :k "
                "ORDER BY id"
            ),
            {"k": language},
        ).scalars()
        return [AdapterUpdated.model_validate(row) for row in rows]


def test_rollback_reactivates_and_announces_the_earlier_version(store: SqlStore) -> None:
    with store() as uow:
        v1, v2, v3 = _versions(uow, "ro", 3)
        uow.adapters.activate_version(v1.adapter_id, 1)
        uow.adapters.activate_version(v1.adapter_id, 2)
        uow.commit()
    lifecycle = AdapterLifecycle(store, BASE, actor="ana@test")
    done = lifecycle.rollback("ro", "v2 answers in Spanish")  # default: the version live before
    assert done.version.number == 1 and done.replaced == 2
    with store() as uow:
        live = uow.adapters.active_version("ro", BASE)
        assert live is not None and live.number == 1
        assert uow.adapters.get_version(v1.adapter_id, 2).status == "retired"  # type: ignore[union-attr]
    [message] = _announcements(store, "ro")
    assert message == done.message
    assert (message.version, message.previous_version, message.action) == (1, 2, "rollback")
    assert message.adapter_name == v1.adapter_name and message.adapter_name.startswith("ro-v1-")
    assert message.reason == "rollback to v1: v2 answers in Spanish"
    assert message.manifest == v1.manifest and message.artifact_uri == v1.artifact_uri
    assert message.peft.use_dora and message.peft.dtype == "float32" and message.peft.r == 8
    # an explicit target works too; a rejected or live one writes nothing
    lifecycle.rollback("ro", "", to=3)
    assert [m.version for m in _announcements(store, "ro")] == [1, 3]
    assert _announcements(store, "ro")[1].reason == "rollback to v3"
    with pytest.raises(DataError, match="already live"):
        lifecycle.rollback("ro", "again", to=3)
    with pytest.raises(DataError, match="no version 9"):
        lifecycle.rollback("ro", "missing", to=9)
    assert len(_announcements(store, "ro")) == 2
    with store.engine.connect() as conn:
        history = conn.execute(
            text(
                "SELECT version, adapter_name, status, last_action, last_action_reason "
                "FROM adapter_history WHERE language = 'ro' ORDER BY version"
            )
        ).all()
        events = conn.execute(
            text(
                "SELECT e.action, e.version, e.actor FROM adapter_events e "
                "JOIN adapters a ON a.id = e.adapter_id WHERE a.language = 'ro' ORDER BY e.id"
            )
        ).all()
        live_name = conn.execute(
            text("SELECT adapter_name FROM live_adapters WHERE language = 'ro'")
        ).scalar_one()
    assert [tuple(r) for r in history] == [
        (1, v1.adapter_name, "retired", "rollback", "rollback to v1: v2 answers in Spanish"),
        (2, v2.adapter_name, "retired", None, None),
        (3, v3.adapter_name, "active", "rollback", "rollback to v3"),
    ]
    assert [tuple(e) for e in events] == [("rollback", 1, "ana@test"), ("rollback", 3, "ana@test")]
    assert live_name == v3.adapter_name  # SQL and Python agree on the name


def test_pin_holds_candidates_and_unpin_promotes_again(store: SqlStore) -> None:
    lifecycle = AdapterLifecycle(store, BASE, actor="ana@test")
    worker = FixedCandidateWorker(store)
    first = worker.handle(drift("nl", hour=0))
    assert first.status == "promoted" and first.version == 1
    lifecycle.pin("nl", "release freeze")
    held = worker.handle(drift("nl", hour=1))
    assert held.status == "rejected" and held.reason.startswith("pinned")
    assert held.decision is not None and held.decision.pinned
    with store() as uow:
        live = uow.adapters.active_version("nl", BASE)
        adapter = uow.adapters.get_adapter("nl", BASE)
        v2 = uow.adapters.get_version(live.adapter_id, 2)  # type: ignore[union-attr]
    assert live is not None and live.number == 1  # nothing promoted while pinned
    assert adapter is not None and adapter.pinned and adapter.pin_reason == "release freeze"
    assert v2 is not None and v2.status == "candidate" and v2.notes.startswith("pinned")
    assert [m.version for m in _announcements(store, "nl")] == [1]
    lifecycle.unpin("nl", "freeze over")
    again = worker.handle(drift("nl", hour=2))
    assert again.status == "promoted" and again.version == 3
    announced = _announcements(store, "nl")
    assert [m.version for m in announced] == [1, 3]
    assert announced[1].action == "promote" and announced[1].reason.startswith("gain")
    assert announced[1].peft.use_dora and announced[1].peft.dtype == "float32"
    with store() as uow:
        events = uow.adapters.list_events(live.adapter_id)
        assert not uow.adapters.get_adapter("nl", BASE).pinned  # type: ignore[union-attr]
    assert [(e.action, e.version) for e in events] == [
        ("promote", 1), ("pin", None), ("unpin", None), ("promote", 3)
    ]  # fmt: skip
    assert events[1].reason == "release freeze" and events[0].actor == "test-worker"


def test_the_live_adapters_read_back_as_the_worker_announced_them(
    store: SqlStore, migrated_database_url: str
) -> None:
    """``read_live_adapters`` (serve-sync's restore, ``compass routes``) gives the live version
    as the worker announced it — same ``message_id``, name, manifest, PEFT block, metrics —
    stamped with its activation time, with no previous version or reason; a live version
    without PEFT settings is left out, the rest kept; another base model's only when asked."""
    worker = FixedCandidateWorker(store)
    assert worker.handle(drift("pt", hour=0)).version == 1
    assert worker.handle(drift("pt", hour=1)).version == 2
    manifest = {"adapter_model.safetensors": "ab" * 32}
    with store() as uow:
        for language, base, peft in (("is", BASE, {}), ("pt", "another-base", PEFT)):
            adapter = uow.adapters.get_or_create_adapter(language, base)
            uow.adapters.create_version(
                adapter.adapter_id,
                NewAdapterVersion(f"file:///adapters/{language}/{base}", manifest_sha256(manifest),
                                  "compass", manifest=manifest, peft_config=peft),
            )  # fmt: skip
            uow.adapters.activate_version(adapter.adapter_id, 1)
        live = uow.adapters.active_version("pt", BASE)
        uow.commit()
    assert live is not None and live.number == 2 and live.activated_at is not None
    announced = _announcements(store, "pt")[-1]
    assert announced.version == 2 and announced.previous_version == 1 and announced.reason
    restored = read_live_adapters(migrated_database_url, BASE)
    assert "is" not in {m.language for m in restored}  # no PEFT settings: left out
    assert {m.base_model for m in restored} == {BASE}
    [pt] = [m for m in restored if m.language == "pt"]
    restamped = {"created_at": live.activated_at, "previous_version": None, "reason": ""}
    assert pt.model_dump() == announced.model_copy(update=restamped).model_dump()
    [foreign] = read_live_adapters(migrated_database_url, "another-base")
    assert (foreign.language, foreign.base_model, foreign.version) == ("pt", "another-base", 1)
    assert len(read_live_adapters(migrated_database_url)) == len(restored) + 1


def test_retire_marks_a_candidate_but_not_the_live_version(store: SqlStore) -> None:
    with store() as uow:
        v1, _ = _versions(uow, "fi", 2)
        uow.adapters.activate_version(v1.adapter_id, 1)
        uow.commit()
    lifecycle = AdapterLifecycle(store, BASE, actor="ana@test")
    with pytest.raises(DataError, match="activate another version first"):
        lifecycle.retire("fi", 1, "old")
    retired = lifecycle.retire("fi", 2, "never serve this one")
    assert retired.status == "retired" and retired.retired_at is not None
    detail = lifecycle.show("fi")
    assert [v.status for v in detail.versions] == ["active", "retired"]
    assert [(e.action, e.version, e.reason) for e in detail.events] == [
        ("retire", 2, "never serve this one")
    ]
    assert [o.live.number for o in lifecycle.overview() if o.adapter.language == "fi"] == [1]  # type: ignore[union-attr]
    with pytest.raises(DataError, match="no sv adapter"):
        lifecycle.pin("sv")


def test_names_stay_unique_across_a_database_reset(pg_admin_url: str) -> None:
    names = []
    with temporary_database(pg_admin_url) as url:
        for salt in ("before", "after"):
            upgrade(url)
            store = open_store(url, pool_size=2)
            try:
                outcome = FixedCandidateWorker(store, salt).handle(drift("el"))
                [message] = _announcements(store, "el")
            finally:
                store.dispose()
            assert outcome.version == 1 and message.version == 1
            names.append(message.adapter_name)
            downgrade(url, "base")  # the reset: every table and the numbering go
    assert names[0] != names[1]
    assert all(name.startswith("el-v1-") and len(name) == len("el-v1-") + 8 for name in names)


def test_cli_commands_drive_the_same_lifecycle(
    store: SqlStore, migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from compass.cli import app

    with store() as uow:
        v1, _, _ = _versions(uow, "da", 3)
        uow.adapters.activate_version(v1.adapter_id, 1)
        uow.adapters.activate_version(v1.adapter_id, 2)
        uow.commit()
    monkeypatch.setenv("COMPASS_DATABASE_URL", migrated_database_url)
    monkeypatch.setenv("COMPASS_BASE_MODEL_ID", BASE)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, ["adapters", *args])
        assert result.exit_code == 0, result.output
        return result.output

    run("pin", "da", "-m", "freeze")
    assert "pinned" in run("list")
    assert f"live {v1.adapter_name}" in run("rollback", "da", "-m", "bad answers")
    run("retire", "da", "3", "-m", "never")
    run("unpin", "da")
    shown = run("show", "da")
    for line in ("rollback v1", "rollback to v1: bad answers", "retire   v3", "unpin"):
        assert line in shown, shown
    failed = runner.invoke(app, ["adapters", "retire", "da", "1"])  # the live one
    assert failed.exit_code != 0 and "activate another version first" in str(failed.exception)
