"""``compass experiment --quick`` end to end: real corpora, real embedder, real model.

Several minutes on two shared CPU cores, so it is marked slow (run with ``-m slow``). It needs
the corpora unpacked by ``compass data fetch``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compass.cli import app
from compass.corpora import unpacked_root

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.integration
def test_quick_experiment_runs_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (unpacked_root(ROOT / ".data") / "usr").exists():
        pytest.skip("corpora not fetched: run 'compass data fetch'")
    monkeypatch.setenv("COMPASS_DATA_DIR", str(ROOT / ".data"))
    out = tmp_path / "quick"
    result = CliRunner().invoke(
        app, ["experiment", "--quick", "--out", str(out), "--no-progress"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    config = json.loads((out / "config.json").read_text())
    main = [r for r in rows if r["part"] == "main"]
    methods = set(config["methods"])
    expected = len(config["target_languages"]) * (1 + len(config["seeds"]) * (len(methods) - 1))
    assert len(main) == expected
    assert all(0.0 <= r["mc_accuracy"] <= 1.0 and r["perplexity"] > 1 for r in main)
    continual = {r["method"] for r in rows if r["part"] == "continual"}
    assert continual == {"v1", *config["continual_variants"]}
    report = (out / "report.md").read_text()
    assert "COMPASS vs linguistic similarity" in report and "Continual update" in report
    assert (out / "comparison.png").stat().st_size > 10_000
    # A second run resumes: nothing is retrained, the rows stay the same.
    again = CliRunner().invoke(
        app, ["experiment", "--quick", "--out", str(out), "--no-progress"], catch_exceptions=False
    )
    assert again.exit_code == 0
    assert len((out / "results.jsonl").read_text().splitlines()) == len(rows)
