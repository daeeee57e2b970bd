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


def test_versions_plot_draws_the_gates_own_estimate_inside_its_interval() -> None:
    """The worker's gate records the mean of per-text loss differences and its bootstrap
    interval (``gate_gain``, ``gate_gain_low``/``_high``), which need not contain the difference
    of the mean losses (0.5 here, interval [0.2, 0.4]): the plot must draw, with the gate's
    estimate as the point (a demo run's report failed with negative error bars)."""
    from compass.lab.report.history import VersionRow
    from compass.lab.report.plots import versions_plot

    metrics = {
        "live_new_loss": 3.0, "candidate_new_loss": 2.5, "live_old_loss": 2.0,
        "candidate_old_loss": 1.8, "gate_gain": 0.3, "gate_gain_low": 0.2,
        "gate_gain_high": 0.4, "gate_forgetting": -0.1, "gate_forgetting_low": -0.15,
        "gate_forgetting_high": -0.05,
    }  # fmt: skip
    row = VersionRow(
        language="fr", base_model="smollm2-135m", version=1, adapter_name="fr-v1-00000000",
        status="active", sampler="compass", sampler_params={}, metrics=metrics,
        parent_version=None, drift_id=None, reference_distribution={0: 1.0},
        reference_counts={0: 10.0}, created_at=T0, activated_at=T0, retired_at=None, notes="",
    )  # fmt: skip
    plot = versions_plot("fr", [row])
    assert plot.png.startswith(b"\x89PNG") and len(plot.png) > 10_000
