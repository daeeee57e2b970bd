"""The report's series on a hand-built history: the base window it scores, usage shares per
window, and single-window plots that still draw (no database needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from compass.lab.report.history import DriftRow, History, UsageCell
from compass.lab.report.plots import drift_plot, usage_plot
from compass.lab.report.series import base_window_seconds, drift_series, usage_series

T0 = datetime(2026, 11, 29, 21, 0, tzinfo=UTC)


def _history(minutes: int, drift_span_s: int | None = None) -> History:
    cells = tuple(
        UsageCell("fr", 1, T0 + timedelta(seconds=10 * i), 10, i % 3, 1.0, 1)
        for i in range(minutes * 6)
    )
    drifts: tuple[DriftRow, ...] = ()
    if drift_span_s is not None:
        drifts = (
            DriftRow("d", "fr", T0, T0 + timedelta(seconds=drift_span_s), 0.9, 0.4, None, 30, 30,
                     1, None, [], T0, None, None, None),
        )  # fmt: skip
    return History(("fr",), cells, drifts, (), ())


def test_the_base_window_is_the_streams_then_the_settings_then_a_24th_of_the_span() -> None:
    assert base_window_seconds(_history(20, drift_span_s=60), 3600) == 60
    assert base_window_seconds(_history(20), 3600) == 50  # 1200 s / 24, whole 10 s cells
    assert base_window_seconds(_history(20), 60) == 60  # 20 windows of the configured size
    assert base_window_seconds(History((), (), (), (), ()), 3600) == 3600


def test_usage_shares_per_window_and_plots_of_a_single_window() -> None:
    history = _history(2)
    series = usage_series(history, "fr", 60)
    assert series is not None and len(series.starts) == 2
    np.testing.assert_allclose(series.shares.sum(axis=1), 1.0)
    np.testing.assert_allclose(series.shares[0], [1 / 3] * 3)
    assert usage_series(history, "de", 60) is None
    one = usage_series(_history(1), "fr", 60)
    assert one is not None and len(one.starts) == 1
    assert len(usage_plot("fr", one, history).png) > 5000
    points = drift_series(history, series, 60, reference_min_events=6, min_events=3)
    assert points[0].reference == "building" and points[1].reference == "live usage"
    assert points[1].statistic < 1e-9  # the same mix as the reference
    assert len(drift_plot("fr", points, _history(2, drift_span_s=60), 60).png) > 5000
