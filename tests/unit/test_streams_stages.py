"""The stream's stage functions, one by one, without Kafka or a database."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np

from compass.core.drift import ClusterShift, DriftResult, Span, WindowPolicy
from compass.core.events import PromptEvent
from compass.ports.storage import UNASSIGNED_CLUSTER, ClusterCount
from streams import stages

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = WindowPolicy(base_seconds=60, allowed_lateness_seconds=10, blocks_per_window=6)


def _event(i: int, language: str = "fr", seconds: float = 0.0) -> PromptEvent:
    return PromptEvent(
        event_id=f"ev-{i}",
        occurred_at=T0 + timedelta(seconds=seconds),
        language=language,
        text=f"question numéro {i}",
    )


def _raw(value: bytes, offset: int) -> stages.RawMessage:
    return stages.RawMessage("prompt-events", 1, offset, b"fr", value)


def test_decode_splits_valid_events_from_dead_letters_with_reasons() -> None:
    good = _event(1).model_dump_json().encode()
    messages = [
        _raw(good, 0),
        _raw(b"{not json", 1),
        _raw(b"\xff\xfe", 2),
        _raw(json.dumps({"schema_version": 1, "event_id": "x"}).encode(), 3),
        _raw(b"", 4),
    ]
    decoded = stages.decode_messages(messages, max_text_chars=100, max_event_bytes=10_000)
    assert [e.event_id for e in decoded.events] == ["ev-1"]
    reasons = [d.reason for d in decoded.dead_letters]
    assert reasons == ["invalid_json", "invalid_utf8", "missing_field", "empty_payload"]
    assert decoded.dead_letters[0].raw == b"{not json" and decoded.dead_letters[0].offset == 1
    assert stages.dead_letter_key(decoded.dead_letters[0]) == b"prompt-events:1:1"


def test_unique_events_and_sample_mask() -> None:
    events = [_event(1), _event(2), _event(1)]
    assert [e.event_id for e in stages.unique_events(events)] == ["ev-1", "ev-2"]
    many = [_event(i) for i in range(400)]
    assert stages.sample_mask(many, 1.0).all()
    quarter = stages.sample_mask(many, 0.25)
    assert 60 < quarter.sum() < 140
    assert (stages.sample_mask(many, 0.25) == quarter).all()  # replay-stable


def test_usage_observations_count_every_event_in_its_block() -> None:
    events = [_event(0, seconds=5), _event(1, seconds=15), _event(2, seconds=61)]
    mask = np.array([True, False, True])
    observations = stages.usage_observations(
        events, mask, np.array([4, 7]), map_version=3, policy=POLICY
    )
    assert [o.cluster for o in observations] == [4, UNASSIGNED_CLUSTER, 7]
    assert [o.sampled for o in observations] == [True, False, True]
    assert [o.window_start for o in observations] == [
        T0,
        T0 + timedelta(seconds=10),
        T0 + timedelta(seconds=60),
    ]
    assert {o.window_seconds for o in observations} == {10}
    assert {o.semantic_map_version for o in observations} == {3}


def test_vector_points_are_keyed_by_event_id() -> None:
    events = [_event(0, seconds=70)]
    points = stages.vector_points(
        events, np.ones((1, 4), dtype=np.float32), np.array([2]), map_version=5, policy=POLICY
    )
    assert points[0].id == events[0].point_id
    assert points[0].payload["cluster"] == 2 and points[0].payload["semantic_map_version"] == 5
    assert points[0].payload["window_start"] == (T0 + timedelta(minutes=1)).isoformat()


def test_watermarks_close_windows_after_the_allowed_lateness() -> None:
    marks: dict[str, datetime] = {}
    closed = stages.advance_watermarks(
        marks, [_event(0, seconds=15), _event(1, seconds=50)], POLICY
    )
    assert closed == {}  # first window ends at 60 s, final at 70 s
    closed = stages.advance_watermarks(
        marks, [_event(2, seconds=71), _event(3, "de", seconds=200)], POLICY
    )
    assert closed == {"fr": [T0 + timedelta(minutes=1)]}
    assert marks["fr"] == T0 + timedelta(seconds=71)
    closed = stages.advance_watermarks(marks, [_event(4, seconds=30)], POLICY)  # late: no change
    assert closed == {} and marks["fr"] == T0 + timedelta(seconds=71)


def test_block_counts_roll_up_into_windows_spans_and_blocks() -> None:
    by_block = {
        T0: {0: ClusterCount(3, 3), UNASSIGNED_CLUSTER: ClusterCount(2, 0)},
        T0 + timedelta(seconds=10): {1: ClusterCount(1, 1)},
        T0 + timedelta(seconds=60): {0: ClusterCount(4, 2)},
    }
    by_window = stages.group_windows(by_block, POLICY)
    assert by_window[T0] == {
        0: ClusterCount(3, 3),
        UNASSIGNED_CLUSTER: ClusterCount(2, 0),
        1: ClusterCount(1, 1),
    }
    bins = stages.window_bins(by_window)
    assert [(b.n_events, b.n_sampled) for b in bins] == [(6, 4), (4, 2)]
    span = Span(T0, T0 + timedelta(minutes=2), 10, 6, True)
    assert stages.span_counts(by_window, span) == {0: 5.0, 1: 1.0}
    blocks = stages.span_blocks(by_block, span, n_clusters=2)
    assert blocks.tolist() == [[3, 0], [0, 1], [2, 0]]


def test_drift_event_has_a_stable_id_and_carries_the_changes() -> None:
    span = Span(T0, T0 + timedelta(minutes=1), 80, 40, True)
    result = DriftResult(
        statistic=0.4, threshold=0.1, p_value=0.001, n_events=80, n_sampled=40,
        n_effective=40.0, sample_rate=0.5, dispersion=1.0, is_drift=True, reason="drift",
        top_changes=(ClusterShift(3, 0.0, 0.5, 0.5, 0.2),),
    )  # fmt: skip
    event = stages.build_drift_event(
        language="fr", span=span, result=result, map_version=2, reference_version=None,
        sample_texts={3: ["Roupie indonésienne"]},
    )  # fmt: skip
    assert event.drift_id == stages.drift_id_for("fr", T0, 2)
    assert event.drift_id != stages.drift_id_for("fr", T0, 3)
    assert event.n_events == 80 and event.n_sampled == 40
    assert event.top_cluster_changes[0].sample_texts == ["Roupie indonésienne"]
