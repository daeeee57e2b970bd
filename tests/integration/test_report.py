"""``compass report`` on a small real history in a temporary PostgreSQL database: two French
drifts and versions (v2 continued from v1), stable German usage, dead letters; the HTML is
rendered by headless Chromium and every plot must be there."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from compass.core.cluster_labels import ClusterLabel
from compass.core.events import ClusterChange, DeadLetter, DriftEvent
from compass.core.semantic_map import SemanticMap
from compass.lab.report import write_report_files
from compass.ports.storage import NewAdapterVersion, ReferenceCounts, UsageObservation
from compass.sql.unit_of_work import open_store

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 20, tzinfo=UTC)
HOURS = 12
MIX = {  # French usage per phase (shares of clusters 0..3); German stays on the first
    "stable": [0.4, 0.3, 0.2, 0.1],
    "shift1": [0.15, 0.1, 0.15, 0.6],
    "shift2": [0.1, 0.1, 0.7, 0.1],
}
LABELS = (
    ClusterLabel(0, 40, ("file", "directory", "permission"), ("Cannot open file",)),
    ClusterLabel(1, 30, ("printer", "queue"), ("Printer queue paused",)),
    ClusterLabel(2, 20, ("currency", "exchange"), ("Exchange rate",)),
    ClusterLabel(3, 10, ("keyboard", "layout"), ("Swiss keyboard layout",)),
)
PLOTS = ("usage", "drift", "gaps", "versions", "dead-letters")
TITLES = (
    "usage distribution over time by cluster",
    "drift statistic over time with threshold and drift events",
    "the gap that drove each selection",
    "each adapter version's metrics vs its parent, with the gate",
    "dead letters by reason",
)


def _phase(hour: int) -> str:
    return "stable" if hour < 4 else "shift1" if hour < 8 else "shift2"


def _counts(language: str, hour: int) -> np.ndarray:
    mix = MIX["stable" if language == "de" else _phase(hour)]
    return np.random.default_rng(hour * 7 + len(language)).multinomial(120, mix)


def _metrics(live_new: float, cand_new: float, live_old: float, cand_old: float) -> dict:
    return {
        "live_new_loss": live_new, "candidate_new_loss": cand_new,
        "live_old_loss": live_old, "candidate_old_loss": cand_old,
        "train_final_loss": 2.1, "n_train_texts": 64.0,
    }  # fmt: skip


@pytest.fixture(scope="module")
def history_url(migrated_database_url: str) -> str:
    """A 12-hour history: usage counted in 10-minute cells; French drifts at hours 4 and 8,
    each trained and promoted (v2 continues v1 and records gate intervals); dead letters."""
    store = open_store(migrated_database_url, pool_size=1)
    semantic_map = SemanticMap(
        centroids=np.random.default_rng(0).normal(size=(4, 16)), embedder_id="t", labels=LABELS
    )
    with store() as uow:
        map_version = uow.semantic_maps.save_semantic_map(semantic_map).version
        for language in ("fr", "de"):
            observations = []
            for hour in range(HOURS):
                for cluster, n in enumerate(_counts(language, hour)):
                    for i in range(int(n)):
                        cell = START + timedelta(hours=hour, minutes=10 * (i % 6))
                        observations.append(UsageObservation(
                            f"{language}-{hour}-{cluster}-{i}", language, cluster, cell, 600,
                            map_version,
                        ))  # fmt: skip
            uow.usage.record_usage(observations)
        adapter = uow.adapters.get_or_create_adapter("fr", "smollm2-135m")
        parent = None
        for number, hour in ((1, 4), (2, 8)):
            window = _counts("fr", hour)
            drift = DriftEvent(
                drift_id=uuid.uuid4(), language="fr",
                window_start=START + timedelta(hours=hour),
                window_end=START + timedelta(hours=hour + 1),
                statistic=0.21, threshold=0.05, n_events=120, n_sampled=120,
                semantic_map_version=map_version, reference_version=parent,
                top_cluster_changes=[ClusterChange(
                    cluster=3 if number == 1 else 2, reference_share=0.1, window_share=0.6,
                    delta=0.5, label=LABELS[3 if number == 1 else 2].title,
                )],
            )  # fmt: skip
            uow.drift.record_drift_event(drift)
            metrics = (
                _metrics(3.1, 2.7, 3.0, 3.02)
                if number == 1
                else _metrics(2.9, 2.5, 2.7, 2.73)
                | {
                    "gain_ci_low": 0.3,
                    "gain_ci_high": 0.5,
                    "forgetting_ci_low": -0.01,
                    "forgetting_ci_high": 0.07,
                }
            )
            uow.adapters.create_version(
                adapter.adapter_id,
                NewAdapterVersion(
                    artifact_uri=f"file:///a/{number}", artifact_sha256=f"{number}" * 64,
                    sampler="compass",
                    sampler_params={"per_cluster": {"3": 40, "0": 8} if number == 1
                                    else {"2": 50, "1": 6}},
                    reference_distribution={c: float(v) / 120 for c, v in enumerate(window)},
                    reference_counts=ReferenceCounts(
                        {c: float(v) for c, v in enumerate(window)}, 120, 120),
                    metrics=metrics, drift_id=drift.drift_id, parent_version=parent,
                    notes=f"gain +0.{number} nats on new usage",
                ),
            )  # fmt: skip
            uow.adapters.activate_version(adapter.adapter_id, number)
            uow.connection.execute(
                text("UPDATE adapter_versions SET activated_at = :t WHERE number = :n"),
                {"t": START + timedelta(hours=hour + 1, minutes=20), "n": number},
            )
            parent = number
        uow.connection.execute(
            text("UPDATE adapter_versions SET retired_at = :t WHERE number = 1"),
            {"t": START + timedelta(hours=9, minutes=20)},
        )
        for i, (raw, reason) in enumerate((
            (json.dumps({"language": "fr", "text": ""}).encode(), "empty_text"),
            (json.dumps({"language": "fr", "text": "x" * 9}).encode(), "empty_text"),
            (b"\xff\xfe not json", "invalid_json"),
            (json.dumps({"language": "xx-bogus", "text": "hi"}).encode(), "unknown_language"),
        )):  # fmt: skip
            uow.dead_letters.record_dead_letter(DeadLetter(
                source_topic="prompt-events", partition=0, offset=i, stage="validate",
                reason=reason, detail="test", raw_b64=base64.b64encode(raw).decode(),
            ))  # fmt: skip
        uow.commit()
    store.dispose()
    return migrated_database_url


def test_report_has_every_plot_and_table(history_url: str, tmp_path: Path) -> None:
    files = write_report_files(history_url, tmp_path, ["fr", "de"])
    names = sorted(p.name for p in files.pngs)
    expected = sorted(
        [f"{lang}-{key}.png" for lang in ("de", "fr") for key in PLOTS]
        + ["all-dead-letters.png"]
    )  # fmt: skip
    assert names == expected
    for png in files.pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    page = files.html.read_text()
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page
    assert "<script" not in page
    for language in ("fr", "de"):
        for title in TITLES:
            assert escape(f"{language}: {title}") in page
    assert "keyboard · layout 0.10→0.60" in page  # drift top change by its label
    assert "fr-v2-22222222" in page and "gain_ci_low=0.3" in page
    # the drift series: the stable stretch is below its threshold, the shifted windows above
    from compass.lab.report.history import read_history
    from compass.lab.report.series import drift_series, usage_series
    from compass.sql.server import make_db_engine

    engine = make_db_engine(history_url)
    with engine.connect() as conn:
        history = read_history(conn, ["fr", "de"])
    engine.dispose()
    points = drift_series(history, usage_series(history, "fr", 3600), 3600)  # type: ignore[arg-type]
    by_hour = {int((p.start - START).total_seconds() // 3600): p for p in points}
    assert by_hour[0].reference == "building" and by_hour[2].reference == "live usage"
    assert by_hour[3].statistic < by_hour[3].threshold
    assert by_hour[4].statistic > by_hour[4].threshold  # the first shift, before v1 is live
    assert by_hour[6].reference == "v1" and by_hour[6].statistic < by_hour[6].threshold
    assert by_hour[8].reference == "v1" and by_hour[8].statistic > by_hour[8].threshold
    assert by_hour[10].reference == "v2" and by_hour[10].statistic < by_hour[10].threshold
    de = drift_series(history, usage_series(history, "de", 3600), 3600)  # type: ignore[arg-type]
    assert all(p.statistic < p.threshold for p in de if p.reference != "building")


def test_compass_report_cli_and_chromium_render(
    history_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COMPASS_DATABASE_URL", history_url)
    monkeypatch.setenv("COMPASS_DATA_DIR", str(tmp_path / "data"))
    result = CliRunner().invoke(app_cli(), ["report", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    html = tmp_path / "out" / "report.html"
    assert f"wrote {html}" in " ".join(result.output.split())
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/install-test-tools.sh)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", html.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    images = re.findall(r'<img alt="([^"]+)" title="([^"]+)" src="data:image/png;base64,([^"]*)"',
                        dom)  # fmt: skip
    assert len(images) == 2 * len(PLOTS) + 1
    for alt, _, data in images:
        assert len(base64.b64decode(data)) > 5000, alt
    for language in ("fr", "de"):
        for title in TITLES:
            assert f"{language}: {title}" in [alt for alt, _, _ in images]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,4000", html.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.stat().st_size > 50_000
    # every image rendered: its natural size is known once decoded (a broken image has 0)
    probe = tmp_path / "probe.html"
    probe.write_text(
        html.read_text() + "<script>window.onload=()=>{document.title=[...document.images].map("
        "i=>i.naturalWidth).join(',')}</script>"
    )
    widths = subprocess.run(
        [chromium, *flags, "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    found = re.search(r"<title>([\d,]+)</title>", widths)
    assert found is not None, "the images did not load"
    assert all(int(w) >= 600 for w in found.group(1).split(","))


def app_cli():  # type: ignore[no-untyped-def]
    from compass.cli import app

    return app
