"""Pure parts of storage: the unit-of-work protocol, records, the in-memory fakes of
``tests/fakes.py``, the migration chain, the docs."""

from __future__ import annotations

import itertools
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from alembic.script import ScriptDirectory

from compass.core.errors import DataError, InfraError
from compass.core.events import DriftEvent
from compass.ports.storage import (
    AdapterVersionRecord,
    ClusterCount,
    NewAdapterVersion,
    PurgeResult,
    UnitOfWork,
    UsageObservation,
)
from compass.ports.vector_store import VectorPoint
from compass.sql import migrate
from compass.sql.tables import metadata
from tests.fake_vector_store import MemoryVectorStore
from tests.fakes import MemoryStore

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql.md"


class DictUnitOfWork(UnitOfWork):
    """A unit of work over a dict: what is staged reaches ``committed`` only on commit()."""

    def __init__(self, committed: dict[str, int]) -> None:
        self.committed = committed
        self.staged: dict[str, int] = {}
        self.open = False

    def _begin(self) -> None:
        self.open = True

    def _end(self) -> None:
        self.open = False

    def commit(self) -> None:
        self.committed.update(self.staged)
        self.staged.clear()

    def rollback(self) -> None:
        self.staged.clear()


def test_unit_of_work_keeps_only_committed_work() -> None:
    store: dict[str, int] = {}
    uow = DictUnitOfWork(store)  # one object reused: leftovers would leak into a later commit
    with uow:
        uow.staged["forgotten"] = 1  # no commit
    with pytest.raises(ValueError), uow:
        uow.staged["failed"] = 2
        raise ValueError("boom")
    with uow:
        uow.staged["kept"] = 3
        uow.commit()
        uow.staged["after-commit"] = 4  # the next transaction, never committed
    with uow:
        uow.commit()
    assert store == {"kept": 3}
    assert not uow.open


def test_records() -> None:
    observation = UsageObservation("e1", "sw", 3, datetime(2026, 1, 1, tzinfo=UTC), 60, 1)
    assert observation.sampled and observation.weight == 1.0
    total, sampled = ClusterCount(2.5, 2)
    assert (total, sampled) == (2.5, 2)
    assert PurgeResult(1, 2, 3, 4).total == 10
    fields = {name: None for name in AdapterVersionRecord.__dataclass_fields__}
    version = AdapterVersionRecord(
        **{**fields, "language": "pt-BR", "number": 7, "artifact_sha256": "ab12" * 16}  # type: ignore[arg-type]
    )
    assert version.adapter_name == "pt-BR-v7-ab12ab12"


def test_memory_store_keeps_the_guarantees_the_loop_relies_on() -> None:
    store = MemoryStore()
    window = datetime(2026, 1, 1, tzinfo=UTC)
    events = [UsageObservation(f"e{i}", "sw", i % 2, window, 3600, 1) for i in range(4)]
    with store() as uow:
        assert uow.usage.record_usage(events) == 4  # never committed
    with store() as uow:
        assert uow.usage.record_usage([*events, events[0]]) == 4
        assert uow.usage.record_usage(events) == 0
        uow.commit()
    with store() as uow:
        span = uow.usage.usage_distribution("sw", window, window + timedelta(hours=1), 1)
        assert span == {0: (2.0, 2), 1: (2.0, 2)}
        drift = DriftEvent(
            drift_id=uuid.uuid4(), language="sw", window_start=window,
            window_end=window + timedelta(hours=1), statistic=0.3, threshold=0.1,
            n_events=4, n_sampled=4,
        )  # fmt: skip
        assert uow.drift.record_drift_event(drift)
        assert not uow.drift.record_drift_event(drift.model_copy(update={"drift_id": uuid.uuid4()}))
        job = uow.jobs.claim_job(drift.drift_id, "w1", timedelta(minutes=5))
        assert job is not None and uow.jobs.claim_job(drift.drift_id, "w2", timedelta(1)) is None
        a = uow.adapters.get_or_create_adapter("sw", "base").adapter_id
        new = NewAdapterVersion("file:///a", "0" * 64, "compass", drift_id=drift.drift_id)
        version = uow.adapters.create_version(a, new)
        uow.adapters.activate_version(a, version.number)
        uow.jobs.complete_job(job.job_id, "w1", version.version_id)
        message = uow.outbox.add_outbox("adapter-updated", "sw", {"version": version.number})
        uow.commit()
    with store() as uow:
        live = uow.adapters.active_version("sw", "base")
        assert live is not None and live.number == 1 and live.adapter_name == "sw-v1-00000000"
        assert [m.message_id for m in uow.outbox.unpublished_outbox()] == [message]
        assert uow.outbox.mark_published([message]) == 1
        with pytest.raises(DataError, match="not held"):
            uow.jobs.fail_job(job.job_id, "w1", "late")
        with pytest.raises(DataError, match="not held"):
            uow.jobs.release_job(job.job_id, "w1", "late")
        earlier = {"window_start": window - timedelta(hours=1), "window_end": window}
        other = drift.model_copy(update={"drift_id": uuid.uuid4(), **earlier})
        assert uow.drift.record_drift_event(other)
        held = uow.jobs.claim_job(other.drift_id, "w1", timedelta(minutes=5), max_attempts=1)
        assert held is not None and held.attempts == 1
        uow.jobs.release_job(held.job_id, "w1", "stopped: deploy")  # gives the claim back
        back = uow.jobs.get_job(other.drift_id)
        assert back is not None and (back.status, back.attempts) == ("queued", 0)
        assert back.last_error == "stopped: deploy" and back.lease_until is None
        assert uow.jobs.claim_job(other.drift_id, "w2", timedelta(1), max_attempts=1) is not None


def test_memory_vector_store_searches_by_cosine_and_filters() -> None:
    store = MemoryVectorStore(dim=3)
    ids = [uuid.uuid4() for _ in range(3)]
    store.upsert(
        [
            VectorPoint(ids[0], np.array([1.0, 0.0, 0.0]), {"language": "sw"}),
            VectorPoint(ids[1], np.array([0.0, 2.0, 0.0]), {"language": "sw"}),
            VectorPoint(ids[2], np.array([1.0, 1.0, 0.0]), {"language": "fr"}),
        ]
    )
    store.upsert([VectorPoint(ids[0], np.array([1.0, 0.1, 0.0]), {"language": "sw"})])
    assert store.count() == 3 and store.count({"language": "sw"}) == 2
    hits = store.search(np.array([0.0, 1.0, 0.0]), limit=2)
    assert [h.id for h in hits] == [ids[1], ids[2]]
    assert [p.id for p in store.scroll({"language": "fr"})] == [ids[2]]
    with pytest.raises(InfraError):
        store.upsert([VectorPoint(uuid.uuid4(), np.zeros(4))])


def test_migrations_form_one_linear_chain() -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config("postgresql+psycopg://x/y"))
    revisions = list(script.walk_revisions())  # newest first
    assert len(script.get_heads()) == 1 and migrate.head() == revisions[0].revision
    assert revisions[-1].down_revision is None
    for newer, older in itertools.pairwise(revisions):
        assert newer.down_revision == older.revision
    for revision in revisions:
        assert callable(revision.module.downgrade)


def test_docs_document_every_model_table_and_enough_examples() -> None:
    doc = DOC.read_text(encoding="utf-8")
    headings = set(re.findall(r"^### ([a-z_]+)$", doc, flags=re.MULTILINE))
    assert set(metadata.tables) <= headings
    examples = re.findall(r"```sql\n-- example: ([a-z0-9-]+)\n", doc)
    assert len(examples) >= 8 and len(set(examples)) == len(examples)
