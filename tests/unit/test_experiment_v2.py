"""Experiment v2: the registered statistics, the split rules and the runner's job bookkeeping."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from compass.core.records import TextRecord
from compass.lab.experiment import train_eval
from compass.lab.experiment.paired_stats import (
    bootstrap_ci,
    holm,
    n_for_power,
    paired_t_power,
    sign_flip_test,
    simulated_sign_flip_power,
    spearman_permutation,
    tost,
)
from compass.lab.experiment.prepare import js_divergence, mc_items
from compass.lab.experiment.v2_config import tiny_v2
from compass.lab.experiment.v2_data import Text, draw_unit, merge_paragraphs, partition


# ------------------------------------------------------------------------------ statistics
def test_sign_flip_exact_p_values() -> None:
    # Five positive differences: only the all-plus and all-minus patterns are as extreme.
    assert sign_flip_test([1.0] * 5) == pytest.approx(2 / 32)
    assert sign_flip_test([1.0] * 5, alternative="greater") == pytest.approx(1 / 32)
    assert sign_flip_test([1.0] * 5, alternative="less") == pytest.approx(1.0)
    assert sign_flip_test([1.0, -1.0, 1.0, -1.0]) == pytest.approx(1.0)


def test_sign_flip_random_resampling_is_calibrated() -> None:
    rng = np.random.default_rng(3)
    p_values = [
        sign_flip_test(rng.standard_normal(25), n_resamples=999, seed=k) for k in range(200)
    ]
    assert 0.02 <= np.mean(np.array(p_values) < 0.05) <= 0.10  # ~5 % under H0
    shifted = rng.standard_normal(40) + 1.0
    assert sign_flip_test(shifted) < 0.001


def test_bootstrap_interval_covers_the_mean_and_narrows_with_n() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.2, 1, 10), rng.normal(0.2, 1, 400)
    low, high = bootstrap_ci(large)
    assert low < large.mean() < high
    assert (high - low) < np.subtract(*bootstrap_ci(small)[::-1])


def test_tost_declares_equivalence_only_inside_the_margin() -> None:
    rng = np.random.default_rng(1)
    tiny = rng.normal(0.0, 0.002, 36)
    assert tost(tiny, 0.01).equivalent
    assert not tost(tiny + 0.02, 0.01).equivalent
    assert not tost(rng.normal(0.0, 0.05, 8), 0.01).equivalent  # too noisy to tell


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


def test_power_from_the_noncentral_t() -> None:
    # Textbook value: paired t, d_z = 0.5, two-sided alpha 0.05, 80 % power -> 34 pairs.
    assert n_for_power(0.5) == 34
    assert paired_t_power(0.5, 34) >= 0.8 > paired_t_power(0.5, 33)
    assert paired_t_power(0.0, 50) == pytest.approx(0.05, abs=1e-6)
    simulated = simulated_sign_flip_power(0.5, 34, n_sim=150, n_resamples=500)
    assert 0.65 <= simulated <= 0.95


def test_spearman_permutation() -> None:
    x = np.arange(12.0)
    rho, p = spearman_permutation(x, x**2, n_resamples=2000)
    assert rho == pytest.approx(1.0) and p < 0.01
    rho, p = spearman_permutation(x, np.random.default_rng(0).permutation(x), n_resamples=500)
    assert p > 0.05 or abs(rho) < 0.7


def test_js_divergence_bounds() -> None:
    assert js_divergence(np.array([3, 1]), np.array([6, 2])) == pytest.approx(0.0)
    assert js_divergence(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)


# ---------------------------------------------------------------------------- data rules
def _record(key: str, text: str) -> TextRecord:
    return TextRecord(id=key, language="de", text=text, source="t", parallel_key=key)


def test_merge_paragraphs_stays_within_a_page_and_keeps_every_key() -> None:
    config = replace(tiny_v2(), min_chars=50, max_chars=120)
    records = [_record(f"p1#{i}", "x" * 20) for i in range(5)] + [_record("p2#0", "y" * 20)]
    merged = merge_paragraphs(records, config)
    assert [keys for _, keys in merged] == [{"p1#0", "p1#1", "p1#2"}]  # p1 tail and p2 too short
    assert all(len(text) >= 50 for text, _ in merged)


def _synthetic(config_languages: tuple[str, ...], per: int) -> list[Text]:
    texts = []
    for language in config_languages:
        for corpus in ("lo", "dh"):
            for k in range(per):
                key = frozenset({f"{corpus}:{k}"})  # translations share keys across languages
                texts.append(Text(len(texts), language, corpus, f"{language} {corpus} {k}", key))
    return texts


def test_unit_split_is_disjoint_and_the_pool_drops_translations_of_held_out_texts() -> None:
    config = replace(tiny_v2(), pool_per_corpus=10)
    texts = _synthetic((*config.target_languages, *config.aux_languages), 80)
    parts = partition(texts, config)
    unit = draw_unit(texts, parts, config, "de", draw=0)
    again = draw_unit(texts, parts, config, "de", draw=0)
    other = draw_unit(texts, parts, config, "de", draw=1)
    assert np.array_equal(unit.heldout, again.heldout)  # deterministic per draw
    assert not np.array_equal(unit.heldout, other.heldout)  # independent draws
    held, usage, coverage = set(unit.heldout), set(unit.usage), set(unit.coverage)
    assert len(held) == config.heldout_size and not held & usage and not held & coverage
    assert not usage & coverage
    assert all(texts[int(i)].corpus == "lo" for i in unit.coverage)
    banned = set().union(*(texts[int(i)].keys for i in unit.heldout))
    assert all(texts[int(i)].language != "de" for i in unit.pool_without)
    assert not any(texts[int(i)].keys & banned for i in unit.pool_without)
    own = {int(i) for i in unit.pool_with if texts[int(i)].language == "de"}
    assert own == set(parts.pool["de"].tolist()) and not own & (held | usage | coverage)
    dh_share = np.mean([texts[int(i)].corpus == "dh" for i in unit.heldout])
    assert dh_share == pytest.approx(unit.usage_share, abs=1 / config.heldout_size)


def test_mc_items_have_a_same_cluster_and_two_other_cluster_distractors() -> None:
    heldout = np.arange(100, 112)
    clusters = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    items = mc_items(heldout, clusters, n_items=12, seed=0)
    lookup = dict(zip(heldout.tolist(), clusters.tolist(), strict=True))
    for true, same, *others in items:
        assert len({true, same, *others}) == 4
        assert lookup[same] == lookup[true]
        assert all(lookup[o] != lookup[true] for o in others)


# ------------------------------------------------------------------------ runner bookkeeping
def test_jobs_are_ordered_by_draw_and_resume_skips_done_keys(tmp_path: Path) -> None:
    manifest = {
        "methods": ["zero-shot", "v0", "random", "compass"],
        "units": ["de-0", "ja-0", "de-1", "ja-1"],
        "config": {"regimes": ["without", "with"]},
    }
    selections = {
        f"{m}/{r}": {"ids": []} for m in ("random", "compass") for r in ("without", "with")
    }
    units = [
        {"unit": u, "draw": int(u[-1]), "selections": selections}
        for u in ("de-1", "ja-1", "de-0", "ja-0")
    ]
    jobs = train_eval.list_jobs(manifest, units)
    assert len(jobs) == 4 * (2 + 2 * 2)
    assert [j[0]["unit"] for j in jobs[:6]] == ["de-0"] * 6
    assert {j[0]["draw"] for j in jobs[:12]} == {0}
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps({"key": train_eval.job_key("de-0", "-", "v0")}) + "\n")
    assert train_eval.done_keys(results) == {"de-0|-|v0"}
    with pytest.raises(SystemExit):
        train_eval.parse_args(["--bundle", "b", "--gguf", "g", "--results", "r", "--shard", "2/2"])


# ----------------------------------------------------------------------------- analysis
def _synthetic_results(tmp_path: Path) -> tuple[Path, Path]:
    """A bundle of 12 units and results where compass beats linguistic by 0.05 bits/byte,
    equals random within 0.001, and v0 gains only in the covered cluster."""
    rng = np.random.default_rng(0)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    names = [f"{lang}-{d}" for d in range(4) for lang in ("de", "ja", "vi")]
    units, rows = [], []
    for name in names:
        js = float(rng.uniform(0.2, 0.7))
        units.append({"unit": name, "language": name[:2], "draw": int(name[-1]),
                      "js_usage_coverage": js, "gap_clusters": [0],
                      "selections": {f"{m}/{r}": {"gap_share": 0.5, "handbook_share": 0.5,
                                                  "target_language_share": 0.0}
                                     for m in ("random", "linguistic", "compass")
                                     for r in ("without", "with")}})  # fmt: skip
        base = 1.5 + rng.normal(0, 0.1)
        values = {("-", "zero-shot"): (base, base), ("-", "v0"): (base, base - 0.2)}
        for regime in ("without", "with"):
            noise = rng.normal(0, 0.0005)
            values[(regime, "random")] = (base - 0.1, base - 0.25)
            values[(regime, "compass")] = (base - 0.1 + noise, base - 0.25 + noise)
            shift = 0.05 + rng.normal(0, 0.01)
            values[(regime, "linguistic")] = (base - 0.1 + shift, base - 0.25 + shift)
        for (regime, method), (gap, covered) in values.items():
            cells = {"0": [gap * 100, 100.0], "1": [covered * 100, 100.0]}
            rows.append({"unit": name, "regime": regime, "method": method, "device": "cpu",
                         "bpb": (gap + covered) / 2, "mc_accuracy": 0.5, "job_seconds": 1.0,
                         "per_cluster": cells})  # fmt: skip
    manifest = {"config": {"name": "syn"}, "k": 2, "semantic_map_silhouette": 0.1,
                "methods_missing": ["hybrid"], "units": names}  # fmt: skip
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    (bundle / "units.jsonl").write_text("\n".join(json.dumps(u) for u in units) + "\n")
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return bundle, results


def test_analysis_reaches_the_registered_verdicts(tmp_path: Path) -> None:
    from compass.lab.experiment.analyse import analyse_results

    bundle, results = _synthetic_results(tmp_path)
    doc = tmp_path / "results.md"
    doc.write_text("# R\n\n## Pre-registered design (v2)\n\nx\n\n## v1 (earlier run)\n\nold\n")
    text = analyse_results([results], bundle, tmp_path / "img", doc, power_sims=20)
    assert "Conclusion (from the registered tests)" in text
    lines = {line.split("|")[1].strip() + "/" + line.split("|")[2].strip(): line
             for line in text.splitlines()
             if line.startswith("| compass − ") and line.count("|") > 10}  # fmt: skip
    assert "**win**" in lines["compass − linguistic/without"]
    assert "equivalent" in lines["compass − random/without"]
    assert "v0 gains more in the covered than in the gap clusters in 12 of 12 units" in text
    assert "hybrid" in text.split("Methods missing")[1].splitlines()[0]
    again = analyse_results(
        [results], bundle, tmp_path / "img", doc, power_sims=20
    )  # replaces, not appends
    body = doc.read_text()
    assert body.count("<!-- v2_syn:start -->") == 1 and again in body
    assert body.index("Pre-registered") < body.index("v2 results") < body.index("## v1")
