"""The stream's stage functions, one by one, without Kafka or a database, and the order the
checkpoint runs a batch's effects in (the window arithmetic is tested in ``test_windows.py``)."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from compass.core.detectors import ClusterShift, DriftResult
from compass.core.events import PromptEvent
from compass.core.windows import UNASSIGNED_CLUSTER, Span, WindowPolicy
from streams import stages
from streams.checkpoint import Edges, checkpoint
from streams.pipeline import Verdicts

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


def test_drift_event_has_a_stable_id_and_carries_the_changes() -> None:
    span = Span(T0, T0 + timedelta(minutes=1), 80, 40, True)
    result = DriftResult(
        statistic=0.4, threshold=0.1, p_value=0.001, n_events=80, n_sampled=40,
        n_effective=40.0, sample_rate=0.5, dispersion=1.0, is_drift=True, reason="drift",
        top_changes=(ClusterShift(3, 0.0, 0.5, 0.5, 0.2),),
    )  # fmt: skip
    event = stages.build_drift_event(
        language="fr", span=span, result=result, map_version=2, reference_version=None,
        sample_texts={3: ["Roupie indonésienne"]}, labels={3: "currency · rupee"},
    )  # fmt: skip
    assert event.top_cluster_changes[0].label == "currency · rupee"
    assert event.drift_id == stages.drift_id_for("fr", T0, 2)
    assert event.drift_id != stages.drift_id_for("fr", T0, 3)
    assert event.n_events == 80 and event.n_sampled == 40
    assert event.top_cluster_changes[0].sample_texts == ["Roupie indonésienne"]


# ------------------------------------------------------------------------------ checkpoint
@dataclass(frozen=True)
class _Report:
    result: tuple[int, int]
    poison: list[object] = field(default_factory=list)
    n_dead: int = 0


class _Recorder:
    """Stands for the processor and the broker edges; records the order of the calls.

    ``hold`` (a step name): the dead letters' table write and topic delivery wait until that
    step has run — they only finish if they run beside the steps, not before them."""

    def __init__(self, drift: bool, fail_at: str | None = None, hold: str | None = None) -> None:
        self.calls: list[str] = []
        self.drift = drift
        self.fail_at = fail_at
        self.hold = hold
        self.reached = threading.Event()

    def _note(self, name: str) -> None:
        self.calls.append(name)
        if name == self.hold:
            self.reached.set()
        if name == self.fail_at:
            raise RuntimeError(name)

    def prepare(self, decoded: stages.Decoded) -> str:
        assert not decoded.dead_letters  # they are written beside the steps, not in them
        self._note("prepare")
        return "batch"

    def store_vectors(self, batch: str) -> None:
        self._note("vectors")

    def store_counts(self, batch: str) -> int:
        self._note("counts")
        return 3

    def check_drift(self, batch: str, *, skip_failed: bool = False) -> Verdicts:
        self._note("drift")
        return Verdicts(1, [object()] if self.drift else [])  # type: ignore[list-item]

    def report(self, batch: str, counted: int, verdicts: Verdicts) -> _Report:
        return _Report(result=(counted, verdicts.windows_checked))

    def store_dead_letters(self, letters: list[object]) -> None:
        if self.hold is not None:
            assert self.reached.wait(5), "the table write ran alone, not beside the steps"
        self._note("table")

    def edges(self) -> Edges:
        async def send(letters: list[object]) -> None:
            if not letters:
                return
            if self.hold is not None:
                for _ in range(1000):
                    if self.reached.is_set():
                        break
                    await asyncio.sleep(0.005)
                assert self.reached.is_set(), "the delivery ran alone, not beside the steps"
            self._note("dlq")

        async def ack() -> None:
            self._note("ack")

        def relay() -> int:
            self._note("relay")
            return 1

        return Edges(send_dead_letters=send, publish_outbox=relay, ack=ack)


async def _thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


def _letters(n: int) -> list[Any]:
    return [
        stages.decode_messages(
            [_raw(b"{", i)], max_text_chars=100, max_event_bytes=1000
        ).dead_letters[0]
        for i in range(n)
    ]


def _run(recorder: _Recorder, dead: int = 0) -> Any:
    decoded = stages.Decoded([], _letters(dead))
    return asyncio.run(
        checkpoint(decoded, recorder, run=_thread, edges=recorder.edges())  # type: ignore[arg-type]
    )


STEPS = ["prepare", "vectors", "counts", "drift", "relay"]


def test_checkpoint_runs_the_effects_in_order_and_acks_last() -> None:
    recorder = _Recorder(drift=True)
    assert _run(recorder).result == (3, 1)
    assert recorder.calls == [*STEPS, "ack"]
    quiet = _Recorder(drift=False)
    _run(quiet)
    assert quiet.calls == ["prepare", "vectors", "counts", "drift", "ack"]


def test_dead_letters_are_written_beside_the_steps_and_acked_after_both() -> None:
    """Topic and table run while the steps run (each waits here until the counts are written,
    so it could not finish if it ran before them); the ack waits for all of them."""
    recorder = _Recorder(drift=True, hold="counts")
    report = _run(recorder, dead=3)
    assert report.n_dead == 3
    assert [c for c in recorder.calls if c in STEPS] == STEPS
    assert {"dlq", "table"} <= set(recorder.calls)
    assert recorder.calls[-1] == "ack" and recorder.calls.count("ack") == 1


def test_a_failed_step_stops_the_checkpoint_before_the_ack() -> None:
    """With no event to blame (an empty batch here), a failure propagates and nothing is
    acknowledged: the runtime retries the batch — after the dead letters' writes are done, so
    a retry never overlaps them."""
    for step in ("vectors", "counts", "drift"):
        recorder = _Recorder(drift=True, fail_at=step, hold=step)
        with pytest.raises(RuntimeError, match=step):
            _run(recorder, dead=2)
        assert "ack" not in recorder.calls
        assert {"dlq", "table", step} <= set(recorder.calls)


def test_a_failed_dead_letter_delivery_is_not_acknowledged() -> None:
    recorder = _Recorder(drift=False)
    edges = recorder.edges()

    async def broken(letters: object) -> None:
        raise ConnectionError("dlq down")

    decoded = stages.Decoded([], _letters(2))
    failing = Edges(broken, edges.publish_outbox, edges.ack)
    with pytest.raises(ConnectionError):
        asyncio.run(checkpoint(decoded, recorder, run=_thread, edges=failing))  # type: ignore[arg-type]
    assert "ack" not in recorder.calls and "table" in recorder.calls


def test_a_failed_outbox_publish_leaves_the_row_to_the_relay_and_acks() -> None:
    recorder = _Recorder(drift=True, fail_at="relay")
    _run(recorder)
    assert recorder.calls == [*STEPS, "ack"]
