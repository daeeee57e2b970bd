"""Tables, tests and a plot from ``results.jsonl`` (no model needed, so it can rerun anytime)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from compass.lab.experiment.config import CONTINUAL_VARIANTS, METHODS
from compass.lab.experiment.stats import Comparison, cohens_d, permutation_test


def load_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of the results file; a run written twice (two shards) counts once."""
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows.setdefault(row["key"], row)
    return list(rows.values())


def _main_values(
    rows: list[dict[str, Any]], seeds: list[int], metric: str
) -> dict[tuple[str, str], list[float]]:
    """(language, method) -> one value per seed; zero-shot (deterministic) repeats per seed."""
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        if row["part"] != "main" or row.get(metric) is None:
            continue
        if row["method"] == "zero-shot":
            out[(row["language"], "zero-shot")] = [float(row[metric])] * len(seeds)
        else:
            out[(row["language"], row["method"])].append(float(row[metric]))
    return out


def _fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "—"
    array = np.asarray(values) * scale
    if len(array) == 1 or np.allclose(array, array[0]):
        return f"{array.mean():.{digits}f}"
    return f"{array.mean():.{digits}f} ± {array.std(ddof=1):.{digits}f}"


def comparisons(
    rows: list[dict[str, Any]],
    seeds: list[int],
    languages: list[str],
    metric: str,
    a: str = "compass",
    b: str = "linguistic",
    n_resamples: int = 10_000,
) -> dict[str, Comparison]:
    values = _main_values(rows, seeds, metric)
    out: dict[str, Comparison] = {}
    all_a: list[float] = []
    all_b: list[float] = []
    strata_a: list[str] = []
    strata_b: list[str] = []
    for code in languages:
        va, vb = values.get((code, a), []), values.get((code, b), [])
        if len(va) >= 2 and len(vb) >= 2:
            out[code] = permutation_test(va, vb, n_resamples, seed=0)
            all_a += va
            all_b += vb
            strata_a += [code] * len(va)
            strata_b += [code] * len(vb)
    if all_a and all_b:
        result = permutation_test(
            all_a, all_b, n_resamples, seed=0, strata_a=strata_a, strata_b=strata_b
        )
        # Cohen's d over languages on within-language deviations: languages differ far more than
        # methods do, and that spread must not count as noise.
        centre = {
            code: float(np.mean(values.get((code, a), []) + values.get((code, b), [])))
            for code in set(strata_a)
        }
        d = cohens_d(
            [v - centre[c] for v, c in zip(all_a, strata_a, strict=True)],
            [v - centre[c] for v, c in zip(all_b, strata_b, strict=True)],
        )
        out["overall"] = replace(result, cohens_d=d)
    return out


def main_tables(rows: list[dict[str, Any]], config: dict[str, Any]) -> str:
    seeds = list(config["seeds"])
    languages = list(config["target_languages"])
    methods = [m for m in METHODS if m in config["methods"]]
    ppl = _main_values(rows, seeds, "perplexity")
    acc = _main_values(rows, seeds, "mc_accuracy")
    loss = _main_values(rows, seeds, "loss")
    gap = _main_values(rows, seeds, "gap_loss")
    covered = _main_values(rows, seeds, "covered_loss")
    share = _main_values(rows, seeds, "selected_gap_share")
    lines = ["### Held-out perplexity (lower is better), mean ± sd over seeds", ""]
    lines += ["| method | " + " | ".join(languages) + " | mean loss (all languages) |"]
    lines += ["|---|" + "---:|" * (len(languages) + 1)]
    for method in methods:
        cells = [_fmt(ppl.get((c, method), [])) for c in languages]
        pooled = [v for c in languages for v in loss.get((c, method), [])]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {_fmt(pooled, digits=4)} |")
    lines += ["", "### Multiple-choice accuracy on held-out continuations (%), mean ± sd", ""]
    lines += ["| method | " + " | ".join(languages) + " | overall |"]
    lines += ["|---|" + "---:|" * (len(languages) + 1)]
    for method in methods:
        cells = [_fmt(acc.get((c, method), []), 100, 1) for c in languages]
        pooled = [v for c in languages for v in acc.get((c, method), [])]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {_fmt(pooled, 100, 1)} |")
    lines += ["", "### Held-out loss in the gap clusters vs the covered clusters", ""]
    lines += ["| method | " + " | ".join(f"{c} gap / covered" for c in languages) + " |"]
    lines += ["|---|" + "---:|" * len(languages)]
    for method in methods:
        cells = [
            f"{_fmt(gap.get((c, method), []), digits=3)} / "
            f"{_fmt(covered.get((c, method), []), digits=3)}"
            for c in languages
        ]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", "### Share of the selected auxiliary items that fall in the gap clusters", ""]
    lines += ["| method | " + " | ".join(languages) + " |", "|---|" + "---:|" * len(languages)]
    for method in methods:
        if method == "zero-shot":
            continue
        cells = [_fmt(share.get((c, method), []), 100, 1) + " %" for c in languages]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_table(
    rows: list[dict[str, Any]], config: dict[str, Any], against: str = "linguistic"
) -> str:
    seeds = list(config["seeds"])
    languages = list(config["target_languages"])
    n = int(config.get("permutations", 10_000))
    lines = [
        f"| metric | scope | compass | {against} | difference | p (permutation, {n}) | Cohen's d |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for metric, label, scale in (
        ("mc_accuracy", "MC accuracy (%)", 100.0),
        ("loss", "held-out loss", 1.0),
    ):
        found = comparisons(rows, seeds, languages, metric, b=against, n_resamples=n)
        for scope, result in found.items():
            lines.append(
                f"| {label} | {scope} | {result.mean_a * scale:.3f} | {result.mean_b * scale:.3f}"
                f" | {result.difference * scale:+.3f} | {result.p_value:.4f}"
                f" | {result.cohens_d:+.2f} |"
            )
    return "\n".join(lines) + "\n"


def continual_table(rows: list[dict[str, Any]]) -> str:
    by_variant: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["part"] != "continual":
            continue
        for key in (
            "new_mc_accuracy", "new_loss", "old_mc_accuracy", "old_loss",
            "forgetting_points", "old_loss_increase", "train_seconds",
        ):  # fmt: skip
            if row.get(key) is not None:
                by_variant[row["method"]][key].append(float(row[key]))
    lines = [
        "| variant | new-mix MC acc (%) | new-mix loss | old-mix MC acc (%) | forgetting (points)"
        " | old-mix loss change | training time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in ["v1", *CONTINUAL_VARIANTS]:
        values = by_variant.get(variant)
        if not values:
            continue
        lines.append(
            f"| {'v1 (before the shift)' if variant == 'v1' else variant} "
            f"| {_fmt(values['new_mc_accuracy'], 100, 1)} | {_fmt(values['new_loss'], digits=3)}"
            f" | {_fmt(values['old_mc_accuracy'], 100, 1)}"
            f" | {_fmt(values.get('forgetting_points', []), digits=1)}"
            f" | {_fmt(values.get('old_loss_increase', []), digits=3)}"
            f" | {_fmt(values['train_seconds'], digits=1)} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], config: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(config["seeds"])
    languages = list(config["target_languages"])
    methods = [m for m in METHODS if m in config["methods"]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric, title, scale in (
        (axes[0], "mc_accuracy", "MC accuracy on held-out continuations (%)", 100.0),
        (axes[1], "loss", "held-out loss (nats/token, lower is better)", 1.0),
    ):
        values = _main_values(rows, seeds, metric)
        width = 0.8 / len(methods)
        for m_index, method in enumerate(methods):
            xs = np.arange(len(languages)) + (m_index - (len(methods) - 1) / 2) * width
            means = [np.mean(values.get((c, method), [np.nan])) * scale for c in languages]
            ax.bar(xs, means, width, label=method)
            for x, code in zip(xs, languages, strict=True):
                points = np.asarray(values.get((code, method), [])) * scale
                ax.scatter([x] * len(points), points, s=6, color="black", zorder=3)
        ax.set_xticks(np.arange(len(languages)), languages)
        ax.set_title(title)
        if metric == "loss":
            finite = [v * scale for vs in values.values() for v in vs if np.isfinite(v)]
            if finite:
                ax.set_ylim(min(finite) * 0.95, max(finite) * 1.02)
    axes[0].legend(fontsize=8, ncols=2)
    fig.suptitle(f"COMPASS vs baselines ({config['model_id']}, {len(seeds)} seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out_dir: Path, plot_path: Path | None = None) -> Path:
    """``report.md`` (tables + tests) and the plot, from the files in ``out_dir``."""
    rows = load_rows(out_dir / "results.jsonl")
    config = json.loads((out_dir / "config.json").read_text())
    plot_path = plot_path or out_dir / "comparison.png"
    plot(rows, config, plot_path)
    parts = [f"# Experiment `{config['name']}`", "", main_tables(rows, config)]
    parts += ["### COMPASS vs linguistic similarity", "", comparison_table(rows, config)]
    parts += ["### COMPASS vs random", "", comparison_table(rows, config, "random")]
    parts += ["### COMPASS vs importance resampling", ""]
    parts += [comparison_table(rows, config, "importance")]
    if any(r["part"] == "continual" for r in rows):
        parts += ["### Continual update", "", continual_table(rows)]
    timing = out_dir / "timing.json"
    if timing.exists():
        sessions = json.loads(timing.read_text())["sessions"]
        total = sum(s["seconds"] for s in sessions)
        parts += [
            f"Summed run time of {len(sessions)} process session(s) (shards ran in parallel): "
            f"{total / 60:.1f} min.",
            "",
        ]
    report = out_dir / "report.md"
    report.write_text("\n".join(parts))
    return report
