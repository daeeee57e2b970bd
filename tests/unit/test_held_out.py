"""The gate's held-out texts (issue 15): a deterministic sample of the window that the
selection never sees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from workers.held_out import UsageText, held_out_sample, without_held_out

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _window(n: int = 50) -> list[UsageText]:
    return [UsageText(f"prompt {i}", i % 4, T0 + timedelta(seconds=i)) for i in range(n)]


def test_the_sample_is_deterministic_and_not_the_newest_texts() -> None:
    window = _window()
    sample = held_out_sample(window, 10, salt="drift-1")
    assert len(sample) == 10
    assert held_out_sample(list(reversed(window)), 10, salt="drift-1") == sample
    newest = sorted(window, key=lambda item: item.occurred_at, reverse=True)[:10]
    assert sample != newest  # the old gate took the newest texts of the window
    assert held_out_sample(window, 10, salt="drift-2") != sample


def test_held_out_texts_are_removed_from_what_the_selection_sees() -> None:
    window = _window()
    target = np.bincount([item.cluster for item in window], minlength=4).astype(float)
    sample = held_out_sample(window, 10, salt="x")
    visible = without_held_out(target, sample)
    held = np.bincount([item.cluster for item in sample], minlength=4)
    np.testing.assert_array_equal(visible, target - held)
    assert visible.sum() == len(window) - 10
    # counts never go negative (a window counted with load shedding may store more texts)
    assert (without_held_out(np.zeros(4), sample) == 0).all()


def test_the_gate_never_takes_the_whole_window() -> None:
    """A window with fewer texts than ``eval_texts`` (a full demo's first drift: 64 asked, 40
    stored) keeps half of its texts for the selection, so it always has usage to see."""
    window = [UsageText(f"t{i}", i % 4, T0 + timedelta(seconds=i)) for i in range(40)]
    sample = held_out_sample(window, 64, salt="drift-1")
    assert len(sample) == 20
    counts = np.bincount([item.cluster for item in window], minlength=4).astype(float)
    assert without_held_out(counts, sample).sum() == 20
    assert held_out_sample(window[:1], 64, salt="drift-1") == []
