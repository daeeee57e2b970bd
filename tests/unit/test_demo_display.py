"""The demo's story and screen without services: the phased stream (window-aligned phases,
French topics per phase, stable German and Spanish) and the live display rendered to text."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from rich.console import Console

from compass.lab.demo import FULL, QUICK, STREAM_LANGUAGES, WINDOW
from compass.lab.demo_live import render
from compass.lab.demo_state import DemoSnapshot, LanguageView, WorkerView
from compass.lab.scenario import (
    SECOND_SHIFT_TOPICS,
    SHIFTED_TOPICS,
    STABLE_TOPICS,
    phased_stream,
)

START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _pools() -> dict[tuple[str, str], list[str]]:
    topics = {*STABLE_TOPICS, *SHIFTED_TOPICS, *SECOND_SHIFT_TOPICS}
    return {
        (code, t): [f"{code} {t} {i}" for i in range(5)]
        for code in STREAM_LANGUAGES
        for t in topics
    }


def test_phases_are_window_aligned_and_only_french_moves() -> None:
    acts = QUICK.acts()
    phases = [*acts[0], *acts[1]]
    streams = phased_stream(phases, QUICK.per_window, start=START, window=WINDOW, pools=_pools())
    assert len(streams) == len(phases)
    first = 0
    ids: list[str] = []
    for phase, messages in zip(phases, streams, strict=True):
        per_language = Counter(m.event.language for m in messages if m.event)
        assert per_language == {c: n * phase.windows for c, n in QUICK.per_window.items()}
        begin, end = START + WINDOW * first, START + WINDOW * (first + phase.windows)
        for message in messages:
            event = message.event
            assert event is not None and begin <= event.occurred_at < end
            topic = event.text.split()[1]
            assert topic in phase.topics[event.language]
            ids.append(event.event_id)
        times = [m.event.occurred_at for m in messages if m.event]
        assert times == sorted(times)
        first += phase.windows
    assert len(ids) == len(set(ids))
    assert [p.topics["fr"] for p in phases] == [
        STABLE_TOPICS,
        SHIFTED_TOPICS,
        SHIFTED_TOPICS,
        SECOND_SHIFT_TOPICS,
        SECOND_SHIFT_TOPICS,
    ]
    assert all(p.topics[c] == STABLE_TOPICS for p in phases for c in ("de", "es"))
    assert FULL.steps > QUICK.steps and FULL.per_window["fr"] > QUICK.per_window["fr"]


def test_the_screen_shows_stream_drifts_training_gate_and_answers() -> None:
    window = START + timedelta(minutes=4)
    snap = DemoSnapshot(
        phase="act 2: the worker updates the French adapter",
        languages={
            "fr": LanguageView(240, 240, [(0.05, 0.3), (0.8, 0.35)]),
            "de": LanguageView(120, 118, [(0.02, 0.3)]),
        },
        dead_letters={"invalid_json": 2, "unknown_language": 2},
        drift_events=[
            {
                "language": "fr",
                "window_start": window,
                "window_end": window + WINDOW,
                "statistic": 0.8333,
                "threshold": 0.3571,
                "n_events": 30,
                "reference_version": None,
                "job_status": "succeeded",
                "version": 1,
                "version_status": "active",
            },
        ],
        worker=WorkerView(stage="training", step=3, steps=6, loss=2.345),
        versions=[
            {
                "adapter_name": "fr-v1-1a2b3c4d",
                "status": "active",
                "parent_version": None,
                "metrics": {
                    "live_new_loss": 4.1,
                    "candidate_new_loss": 3.2,
                    "live_old_loss": 4.0,
                    "candidate_old_loss": 3.9,
                },
                "notes": "better on new usage, no forgetting",
            },
        ],
        announcements=[{"adapter_name": "fr-v1-1a2b3c4d", "artifact_uri": "file:///a/fr"}],
        answers=[("fr-v1-1a2b3c4d", "Quelle est la monnaie ?", "Le franc suisse.")],
        processes={"relay": "running", "worker": "running", "streams": "exited 0"},
        elapsed_s=42,
    )
    console = Console(record=True, width=200)
    console.print(render(snap))
    screen = console.export_text()
    for expected in (
        "act 2", "240", "118", "0.8000 / 0.3500", "invalid_json", "09:04–09:05", "0.8333",
        "step 3/6", "loss 2.345", "fr-v1-1a2b3c4d", "4.100 → 3.200", "adapter-updated",
        "Le franc suisse.", "streams: exited 0",
    ):  # fmt: skip
        assert expected in screen, expected
