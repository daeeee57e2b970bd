"""``build_pool`` against a real Qdrant Edge store, and the method CLI end to end on real text."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import structlog
from typer.testing import CliRunner

from compass.cli import app
from compass.core.errors import DataError
from compass.core.samplers import BudgetError, SelectionRequest, get_sampler
from compass.corpora import TextRecord, load_chatterbot, load_gettext, write_records
from compass.corpora.pool import build_pool, load_snapshot, point_id
from compass.qdrant.store import VectorStore
from tests.unit.method_support import cached_embedder

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures logging onto CliRunner's temporary stderr; put the previous config
    back so later tests do not log into a closed stream."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def records() -> list[TextRecord]:
    chat = load_chatterbot(["en", "fr", "es"], limit_per_language=20, min_chars=12)
    software = load_gettext(["fr", "es"], limit_per_language=10, min_chars=25)
    return chat + software


def test_pool_build_is_incremental_and_stores_payloads(
    records: list[TextRecord], vector_store: VectorStore, tmp_path: Path, cache_dir: Path
) -> None:
    embedder = cached_embedder(cache_dir)
    folder = tmp_path / "pools" / "aux"
    first = build_pool(records[:50], embedder, folder, store=vector_store, k=4)
    assert (first.n_total, first.n_new, first.n_upserted, first.refitted) == (50, 50, 50, True)
    assert vector_store.count() == 50
    [point] = vector_store.retrieve([point_id("aux", records[0].id)])
    assert point.payload["record_id"] == records[0].id
    assert point.payload["language"] == records[0].language
    assert point.payload["map_version"] == first.map_version
    assert 0 <= point.payload["cluster"] < 4

    n = len(records)
    second = build_pool(records, embedder, folder, store=vector_store)
    assert (second.n_total, second.n_new, second.n_upserted) == (n, n - 50, n - 50)
    assert second.map_version == first.map_version and not second.refitted
    assert vector_store.count() == n

    again = build_pool(records, embedder, folder, store=vector_store)
    assert (again.n_new, again.n_upserted) == (0, 0)

    refit = build_pool(records, embedder, folder, store=vector_store, k=5, refit=True)
    assert refit.n_upserted == n and refit.map_version != first.map_version
    assert vector_store.count() == n
    [point] = vector_store.retrieve([point_id("aux", records[0].id)])
    assert point.payload["map_version"] == refit.map_version

    snapshot = load_snapshot(folder)
    assert [r.id for r in snapshot.records] == [r.id for r in records]
    np.testing.assert_allclose(snapshot.vectors, embedder.embed([r.text for r in records]))
    pool = snapshot.to_pool()
    request = SelectionRequest(
        "de", 5, pool, snapshot.semantic_map, target_vectors=snapshot.vectors[:3]
    )
    assert len(get_sampler("compass").select(request)) == 5


def test_pool_embedded_with_another_model_is_refused(
    records: list[TextRecord], tmp_path: Path, cache_dir: Path
) -> None:
    folder = tmp_path / "pools" / "p"
    build_pool(records[:20], cached_embedder(cache_dir), folder, k=2)
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(meta | {"embedder_id": "other@1"}))
    with pytest.raises(DataError, match="embedded with other@1"):
        build_pool(records, cached_embedder(cache_dir), folder)
    with pytest.raises(DataError, match="no pool"):
        load_snapshot(tmp_path / "pools" / "missing")


def test_cli_pool_build_select_and_gaps(
    records: list[TextRecord], tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "cache").symlink_to(cache_dir, target_is_directory=True)  # reuse embeddings
    monkeypatch.setenv("COMPASS_DATA_DIR", str(data_dir))
    monkeypatch.delenv("COMPASS_QDRANT_URL", raising=False)
    pool_file = write_records(records, tmp_path / "pool.jsonl")
    target = write_records(load_chatterbot(["de"], limit_per_language=20), tmp_path / "t.jsonl")
    coverage = write_records(load_gettext(["de"], limit_per_language=10), tmp_path / "c.jsonl")
    runner = CliRunner()

    result = runner.invoke(app, ["pool", "build", "-c", str(pool_file), "--name", "t", "--k", "4"])
    assert result.exit_code == 0, result.output
    n = len(records)
    assert f"{n} records ({n} new, {n} upserted)" in result.output

    out = tmp_path / "selection"
    args = ["select", "-l", "de", "-b", "12", "--target", str(target)]
    args += ["--coverage", str(coverage), "--pool", "t", "-o", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and [r["rank"] for r in rows] == list(range(12))
    assert {r["id"] for r in rows} <= {r.id for r in records}
    report = json.loads((out / "report.json").read_text())
    assert report["sampler"] == "compass" and report["n_selected"] == 12
    assert "Gap analysis for `de`" in (out / "report.md").read_text()
    assert (out / "gaps.png").stat().st_size > 5000

    result = runner.invoke(app, [*args[:5], "--sampler", "linguistic", *args[5:]])
    assert result.exit_code == 0, result.output

    result = runner.invoke(
        app, ["gaps", "-l", "de", "--target", str(target), "--pool", "t", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "gaps for de" in result.output and (out / "gaps-de.png").exists()

    result = runner.invoke(app, ["select", "-l", "de", "-b", "999", "--target", str(target),
                                 "--pool", "t", "-o", str(out)])  # fmt: skip
    assert isinstance(result.exception, BudgetError)  # compass.cli.main prints it as one line
    result = runner.invoke(app, ["gaps", "-l", "de", "--target", str(target), "--pool", "nope"])
    assert isinstance(result.exception, DataError)


def test_cli_gaps_from_live_usage_counts(
    records: list[TextRecord],
    tmp_path: Path,
    cache_dir: Path,
    migrated_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --target, `compass gaps` reads the usage the stream counted in PostgreSQL."""
    from datetime import UTC, datetime, timedelta

    from compass.ports.storage import UsageObservation
    from compass.sql.unit_of_work import open_store

    folder = tmp_path / "data" / "pools" / "live"
    build_pool(records, cached_embedder(cache_dir), folder, k=4)
    snapshot = load_snapshot(folder)
    now = datetime.now(UTC).replace(microsecond=0)
    with open_store(migrated_database_url, pool_size=1) as store, store() as uow:
        version = uow.semantic_maps.save_semantic_map(snapshot.semantic_map).version
        observations = [
            UsageObservation(f"e{i}", "de", i % 2, now - timedelta(minutes=5), 60, version)
            for i in range(9)
        ]
        uow.usage.record_usage(observations)
        uow.commit()
    (tmp_path / "data" / "cache").symlink_to(cache_dir, target_is_directory=True)
    monkeypatch.setenv("COMPASS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COMPASS_DATABASE_URL", migrated_database_url)
    out = tmp_path / "reports"
    result = CliRunner().invoke(app, ["gaps", "-l", "de", "--pool", "live", "-o", str(out)])
    assert result.exit_code == 0, result.output
    markdown = (out / "gaps-de.md").read_text()
    assert "9 usage items" in markdown
    result = CliRunner().invoke(app, ["gaps", "-l", "fr", "--pool", "live", "-o", str(out)])
    assert isinstance(result.exception, DataError)
    assert "coverage: none: no live de adapter" in _flat(_gaps(out))
    assert snapshot.semantic_map.labels and snapshot.semantic_map.labels[0].terms
    assert f"| {snapshot.semantic_map.labels[0].title} |" in (out / "gaps-de.md").read_text()

    # a live German adapter v2 continued from v1: gaps compare with what it was built for
    from compass.ports.storage import NewAdapterVersion, ReferenceCounts

    with open_store(migrated_database_url, pool_size=1) as store, store() as uow:
        adapter = uow.adapters.get_or_create_adapter("de", "smollm2-135m")
        for number, per_cluster in ((1, {"2": 30}), (2, {"3": 10})):
            uow.adapters.create_version(
                adapter.adapter_id,
                NewAdapterVersion(
                    artifact_uri=f"file:///a/{number}", artifact_sha256=f"{number}" * 64,
                    sampler="compass", sampler_params={"per_cluster": per_cluster},
                    reference_counts=ReferenceCounts({0: 7.0, 1: 1.0}, 8, 8),
                    parent_version=None if number == 1 else 1,
                ),
            )  # fmt: skip
            uow.adapters.activate_version(adapter.adapter_id, number)
        uow.commit()
    text = _flat(_gaps(out))
    assert "coverage: live adapter de-v2-22222222's reference distribution" in text
    assert "8 events" in text and "Coverage: live adapter" in (out / "gaps-de.md").read_text()
    text = _flat(_gaps(out, "--coverage-from", "training"))
    assert "training data (selections of v2, v1: 40 items)" in text
    assert "| 30 | " in (out / "gaps-de.md").read_text().replace("|  ", "| ")
    assert "coverage: none (--coverage-from none)" in _flat(_gaps(out, "--coverage-from", "none"))
    bad = CliRunner().invoke(app, ["gaps", "-l", "de", "--coverage-from", "everything"])
    assert isinstance(bad.exception, DataError)


def _gaps(out: Path, *extra: str) -> str:
    """``compass gaps -l de`` on the live counts without a pool: its output."""
    result = CliRunner().invoke(app, ["gaps", "-l", "de", "--pool", "none", "-o", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def _flat(text: str) -> str:
    return " ".join(text.split())
