"""The worker finds every text of a drift window whatever the store's size (issue 10, case 9):
one filtered query — language, semantic map version and an event-time range on the indexed
``occurred_at_ts`` — on a real Qdrant Edge holding 50,000 points."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from compass.core.events import PromptEvent
from compass.core.windows import WindowPolicy
from compass.ports.vector_store import INDEXED_FIELDS, Range, VectorPoint
from compass.qdrant.store import QdrantEdgeStore
from streams.stages import vector_points
from workers.usage_texts import VectorStoreUsageTexts

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
WINDOW = timedelta(hours=1)
DIM = 8


def _filler(rng: np.random.Generator, n: int, start: int) -> list[VectorPoint]:
    """Points of four languages and two map versions spread over 30 days, none of them French
    under map 2 inside the window."""
    languages = np.array(["fr", "de", "ja", "sw"])
    out = []
    for i in range(start, start + n):
        language = str(languages[i % 4])
        version = 1 + (i // 4) % 2
        when = T0 - timedelta(days=15) + timedelta(seconds=int(rng.integers(0, 30 * 86400)))
        if language == "fr" and version == 2 and T0 <= when < T0 + WINDOW:
            when -= timedelta(days=1)
        payload = {
            "language": language, "semantic_map_version": version, "cluster": i % 7,
            "occurred_at": when.isoformat(), "occurred_at_ts": int(when.timestamp()),
            "text": f"filler {i}",
        }  # fmt: skip
        out.append(VectorPoint(uuid.uuid4(), rng.standard_normal(DIM).astype(np.float32), payload))
    return out


def test_every_text_of_the_window_is_found_among_50000_points(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    store = QdrantEdgeStore(tmp_path / "events", dim=DIM)
    for start in range(0, 50_000, 5_000):
        store.upsert(_filler(rng, 5_000, start))
    # the window's 20 French events, written the way the stream writes them
    events = [
        PromptEvent(
            event_id=f"fr-window-{i}", language="fr", text=f"question {i} du créneau",
            occurred_at=T0 + timedelta(minutes=3 * i, seconds=0.5 if i == 0 else 0),
        )
        for i in range(20)
    ]  # fmt: skip
    points = vector_points(
        events, rng.standard_normal((20, DIM)).astype(np.float32), np.zeros(20, dtype=int),
        map_version=2, policy=WindowPolicy(),
    )  # fmt: skip
    assert all(p.payload["occurred_at_ts"] == int(e.occurred_at.timestamp())
               for p, e in zip(points, events, strict=True))  # fmt: skip
    store.upsert(points)
    assert store.count() == 50_020

    lookup = VectorStoreUsageTexts(store)
    found = lookup.texts("fr", T0, T0 + WINDOW, limit=100, semantic_map_version=2)
    assert sorted(found) == sorted(e.text for e in events)
    assert found[0] == "question 19 du créneau"  # newest first
    # the limit keeps the newest; the end of the range is exclusive, its start inclusive
    assert lookup.texts("fr", T0, T0 + WINDOW, limit=3, semantic_map_version=2) == [
        f"question {i} du créneau" for i in (19, 18, 17)
    ]
    assert lookup.texts("fr", T0, T0 + timedelta(minutes=3), 10, semantic_map_version=2) == [
        "question 0 du créneau"
    ]
    # the store indexes the fields it filters on, and the range is one indexed condition
    assert set(INDEXED_FIELDS) <= set(store._shard.info().payload_schema)
    window = Range(gte=int(T0.timestamp()), lt=int((T0 + WINDOW).timestamp()))
    where: dict[str, str | int | bool | Range] = {
        "language": "fr",
        "semantic_map_version": 2,
        "occurred_at_ts": window,
    }
    assert store.count(where) == 20
    store.close()
    reopened = QdrantEdgeStore(tmp_path / "events", dim=DIM)  # indexes survive a reopen
    assert reopened.count(where) == 20
    reopened.close()


def test_points_without_the_numeric_time_are_still_found_by_the_bounded_scan(
    tmp_path: Path,
) -> None:
    """A store written before ``occurred_at_ts`` existed: the filtered query finds nothing, so
    the lookup falls back to scanning (at most ``max_scan`` points of the language)."""
    store = QdrantEdgeStore(tmp_path / "old", dim=DIM)
    old = [
        VectorPoint(
            uuid.uuid4(),
            np.ones(DIM, dtype=np.float32),
            {
                "language": "fr",
                "occurred_at": (T0 + timedelta(minutes=i)).isoformat(),
                "text": f"ancien {i}",
            },
        )
        for i in range(5)
    ]
    store.upsert(old)
    assert VectorStoreUsageTexts(store).texts("fr", T0, T0 + WINDOW, 10)[0] == "ancien 4"
    store.close()
