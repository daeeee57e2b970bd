"""Running the experiment: the sampler comparison and the continual part.

Every finished run appends one JSON line to ``results.jsonl``; a rerun with the same output
folder skips what is already there, so an interrupted run resumes instead of starting over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from tqdm.auto import tqdm

from compass.core.errors import DataError
from compass.core.samplers import SelectionRequest, get_sampler
from compass.lab.experiment.config import ExperimentConfig
from compass.lab.experiment.dataset import (
    ExperimentData,
    LanguageData,
    TextSet,
    _language_seed,
    build_experiment_data,
)
from compass.lm.evaluation import MCItem, continuation_items, mc_accuracy, perplexity_report
from compass.lm.models import LoadedModel, load_causal_lm
from compass.lm.training import continue_adapter, train_adapter

log = structlog.get_logger(__name__)


class ResultLog:
    """Append-only JSONL of finished runs, keyed by (part, language, method, seed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.exists():
            self.rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    @staticmethod
    def key(part: str, language: str, method: str, seed: int | None) -> str:
        return f"{part}|{language}|{method}|{seed}"

    def has(self, part: str, language: str, method: str, seed: int | None) -> bool:
        """Whether the run is done, by this process or by another shard writing the file."""
        wanted = self.key(part, language, method, seed)
        if any(row["key"] == wanted for row in self.rows):
            return True
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                if line.strip() and json.loads(line)["key"] == wanted:
                    return True
        return False

    def add(self, part: str, language: str, method: str, seed: int | None, **values: Any) -> None:
        row = {
            "key": self.key(part, language, method, seed),
            "part": part,
            "language": language,
            "method": method,
            "seed": seed,
            **values,
        }
        self.rows.append(row)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")


def evaluate(
    model: Any,
    tokenizer: Any,
    heldout: TextSet,
    items: list[MCItem],
    gap_clusters: tuple[int, ...],
    config: ExperimentConfig,
) -> dict[str, Any]:
    """Perplexity (overall, gap vs covered clusters) and multiple-choice accuracy."""
    started = time.perf_counter()
    report = perplexity_report(
        model, tokenizer, heldout.texts, heldout.clusters.tolist(), config.eval_max_length
    )
    in_gap = [c for c in report.per_cluster if c.cluster in gap_clusters]
    covered = [c for c in report.per_cluster if c.cluster not in gap_clusters]

    def pooled(parts: list[Any]) -> float | None:
        tokens = sum(p.n_tokens for p in parts)
        return sum(p.loss * p.n_tokens for p in parts) / tokens if tokens else None

    mc = mc_accuracy(model, tokenizer, items, prompt_style="plain", max_length=config.mc_max_length)
    return {
        "loss": report.loss,
        "perplexity": report.perplexity,
        "gap_loss": pooled(in_gap),
        "covered_loss": pooled(covered),
        "mc_accuracy": mc.accuracy,
        "mc_items": mc.n_items,
        "per_cluster_loss": {str(c.cluster): round(c.loss, 5) for c in report.per_cluster},
        "eval_seconds": time.perf_counter() - started,
    }


@contextmanager
def _phase(name: str) -> Iterator[None]:
    started = time.perf_counter()
    log.info("experiment_phase_start", phase=name)
    yield
    log.info("experiment_phase_done", phase=name, seconds=round(time.perf_counter() - started, 1))


def _selection_texts(
    data: ExperimentData, lang: LanguageData, method: str, budget: int, seed: int
) -> tuple[list[str], dict[str, Any]]:
    sampler = get_sampler(method)
    request = SelectionRequest(
        target_language=lang.language,
        budget=min(budget, len(data.pool)),
        pool=data.pool,
        semantic_map=data.semantic_map,
        target_vectors=lang.usage.vectors,
        coverage_vectors=lang.train.vectors,
        seed=seed,
    )
    selection = sampler.select(request)
    records = selection.records(data.pool)
    gap_share = float(np.isin(data.pool.clusters[selection.indices], lang.gap_clusters).mean())
    report = selection.report
    info = {
        "n_selected": len(records),
        "selected_gap_share": gap_share,
        "selected_languages": dict(sorted(report.per_language.items(), key=lambda kv: -kv[1])[:6]),
    }
    return [r.text for r in records], info


def run_comparison(
    config: ExperimentConfig,
    data: ExperimentData,
    base: LoadedModel,
    results: ResultLog,
    progress: bool,
) -> None:
    methods = [m for m in config.methods if m != "zero-shot"]
    total = len(config.target_languages) * (len(config.seeds) * len(methods) + 1)
    bar = tqdm(total=total, desc="comparison", disable=not progress, unit="run")
    for code in config.target_languages:
        lang = data.languages[code]
        if "zero-shot" in config.methods and not results.has("main", code, "zero-shot", None):
            metrics = evaluate(
                base.model, base.tokenizer, lang.heldout, lang.mc_items, lang.gap_clusters, config
            )
            results.add("main", code, "zero-shot", None, train_seconds=0.0, **metrics)
        bar.update(1)
        for seed in config.seeds:
            for method in methods:
                if results.has("main", code, method, seed):
                    bar.update(1)
                    continue
                texts, info = _selection_texts(data, lang, method, config.budget, seed)
                training = config.training.replace(seed=seed)
                # The adapter learns from the auxiliary selection alone (the paper's setup): the
                # existing data only tells coverage-aware samplers what is already covered.
                adapter = train_adapter(
                    base,
                    texts,
                    training,
                    progress=False,
                    provenance={"sampler": method, "budget": config.budget, "language": code},
                )
                metrics = evaluate(
                    adapter.model, base.tokenizer, lang.heldout, lang.mc_items,
                    lang.gap_clusters, config,
                )  # fmt: skip
                adapter.detach()
                results.add(
                    "main",
                    code,
                    method,
                    seed,
                    train_seconds=adapter.metrics.seconds,
                    train_final_loss=adapter.metrics.final_loss,
                    **info,
                    **metrics,
                )
                bar.set_postfix(lang=code, method=method, ppl=f"{metrics['perplexity']:.1f}")
                bar.update(1)
    bar.close()


@dataclass(frozen=True, eq=False)
class ContinualCase:
    """A usage stream whose topic mix moves from cluster group A to group B."""

    old_train: TextSet
    new_train: TextSet
    old_heldout: TextSet
    new_heldout: TextSet
    old_items: list[MCItem]
    new_items: list[MCItem]
    group_a: tuple[int, ...]
    group_b: tuple[int, ...]


def _concat(sets: list[TextSet]) -> TextSet:
    return TextSet(
        [r for s in sets for r in s.records],
        np.concatenate([s.vectors for s in sets]),
        np.concatenate([s.clusters for s in sets]),
    )


def _mix(pool: TextSet, in_a: np.ndarray, rows: np.ndarray, n: int, share_a: float) -> np.ndarray:
    a_rows = rows[in_a[rows]]
    b_rows = rows[~in_a[rows]]
    n_a = min(len(a_rows), round(n * share_a))
    n_b = min(len(b_rows), n - n_a)
    if n_a + n_b < n:
        raise DataError(f"not enough texts for a continual phase of {n}")
    return np.concatenate([a_rows[:n_a], b_rows[:n_b]])


def continual_case(config: ExperimentConfig, lang: LanguageData) -> ContinualCase:
    """Phase A usage is 90 % cluster group A; phase B is 80 % group B (groups: a seeded split
    of the clusters present in the language)."""
    everything = _concat([lang.usage, lang.train, lang.rest])
    rng = np.random.default_rng(_language_seed(lang.language) + 1)
    present = np.unique(everything.clusters)
    shuffled = rng.permutation(present)
    group_a = tuple(sorted(int(c) for c in shuffled[: len(shuffled) // 2]))
    group_b = tuple(sorted(int(c) for c in shuffled[len(shuffled) // 2 :]))
    in_a = np.isin(everything.clusters, group_a)
    rows = rng.permutation(len(everything))
    old_rows = _mix(everything, in_a, rows, config.train_size, 0.9)
    left = rows[~np.isin(rows, old_rows)]
    new_rows = _mix(everything, in_a, left, config.continual_new_size, 0.2)
    held_a = np.flatnonzero(np.isin(lang.heldout.clusters, group_a))
    held_b = np.flatnonzero(~np.isin(lang.heldout.clusters, group_a))
    old_heldout, new_heldout = lang.heldout.subset(held_a), lang.heldout.subset(held_b)
    n = config.mc_options

    def items(heldout: TextSet) -> list[MCItem]:
        return continuation_items(heldout.texts, heldout.clusters.tolist(), lang.language, n)

    return ContinualCase(
        old_train=everything.subset(old_rows),
        new_train=everything.subset(new_rows),
        old_heldout=old_heldout,
        new_heldout=new_heldout,
        old_items=items(old_heldout),
        new_items=items(new_heldout),
        group_a=group_a,
        group_b=group_b,
    )


def _measure(
    model: Any, base: LoadedModel, case: ContinualCase, config: ExperimentConfig
) -> dict[str, Any]:
    old = evaluate(model, base.tokenizer, case.old_heldout, case.old_items, (), config)
    new = evaluate(model, base.tokenizer, case.new_heldout, case.new_items, (), config)
    return {
        "old_loss": old["loss"],
        "old_mc_accuracy": old["mc_accuracy"],
        "new_loss": new["loss"],
        "new_mc_accuracy": new["mc_accuracy"],
        "old_mc_items": old["mc_items"],
        "new_mc_items": new["mc_items"],
    }


def _guards(variant: str) -> dict[str, bool]:
    return {
        "naive": {"replay": False, "ewc": False},
        "replay": {"replay": True, "ewc": False},
        "ewc": {"replay": False, "ewc": True},
        "ecda": {"replay": True, "ewc": True},
    }[variant]


def run_continual(
    config: ExperimentConfig,
    data: ExperimentData,
    base: LoadedModel,
    results: ResultLog,
    progress: bool,
) -> None:
    variants = list(config.continual_variants)
    total = len(config.continual_languages) * len(config.continual_seeds) * (len(variants) + 1)
    bar = tqdm(total=total, desc="continual", disable=not progress, unit="run")
    for code in config.continual_languages:
        case = continual_case(config, data.languages[code])
        for seed in config.continual_seeds:
            done = all(results.has("continual", code, v, seed) for v in ["v1", *variants])
            if done:
                bar.update(len(variants) + 1)
                continue
            training = config.training.replace(seed=seed)
            first = train_adapter(base, case.old_train.texts, training, progress=False)
            anchor = first.state()

            before = _measure(first.model, base, case, config)
            if not results.has("continual", code, "v1", seed):
                results.add(
                    "continual", code, "v1", seed, train_seconds=first.metrics.seconds, **before
                )
            bar.update(1)
            update = training.replace(steps=config.continual_steps)
            for variant in [v for v in variants if v != "retrain"]:
                if results.has("continual", code, variant, seed):
                    bar.update(1)
                    continue
                for name, param in first.model.named_parameters():
                    if name in anchor:
                        param.data.copy_(anchor[name].to(param.device))
                started = time.perf_counter()
                updated = continue_adapter(
                    first,
                    case.new_train.texts,
                    case.old_train.texts,
                    update.replace(**_guards(variant)),
                    earlier_clusters=case.old_train.clusters.tolist(),
                    progress=False,
                )
                seconds = time.perf_counter() - started  # includes the Fisher estimate
                after = _measure(updated.model, base, case, config)
                results.add(
                    "continual", code, variant, seed, train_seconds=seconds,
                    forgetting_points=100 * (before["old_mc_accuracy"] - after["old_mc_accuracy"]),
                    old_loss_increase=after["old_loss"] - before["old_loss"], **after,
                )  # fmt: skip
                bar.update(1)
            first.detach()
            if "retrain" in variants and not results.has("continual", code, "retrain", seed):
                # Full retraining: a fresh adapter on all data so far, with the steps of the
                # first training plus the update (its cost is the point of the comparison).
                full = training.replace(steps=(training.steps or 0) + config.continual_steps)
                started = time.perf_counter()
                retrained = train_adapter(
                    base, case.old_train.texts + case.new_train.texts, full, progress=False
                )
                seconds = time.perf_counter() - started
                after = _measure(retrained.model, base, case, config)
                retrained.detach()
                results.add(
                    "continual", code, "retrain", seed, train_seconds=seconds,
                    forgetting_points=100 * (before["old_mc_accuracy"] - after["old_mc_accuracy"]),
                    old_loss_increase=after["old_loss"] - before["old_loss"], **after,
                )  # fmt: skip
                bar.update(1)
    bar.close()


def run_experiment(
    config: ExperimentConfig,
    out_dir: Path,
    data_dir: Path,
    progress: bool = True,
    parts: tuple[str, ...] = ("main", "continual"),
    languages: tuple[str, ...] | None = None,
    threads: int | None = 1,
    seeds: tuple[int, ...] | None = None,
    methods: tuple[str, ...] | None = None,
) -> Path:
    """Run (or resume) the experiment into ``out_dir``; returns the results file.

    ``languages`` and ``seeds`` restrict this process to some target languages and seeds, so
    that several processes (shards) can fill one results file; the zero-shot rows come from the
    shard that holds the config's first seed. ``threads`` sets torch's CPU threads: on a shared
    machine one thread per process was 2-5x faster than two (measured: oversubscribed OpenMP
    threads wait for each other).
    """
    import torch

    from compass.bootstrap import embedding_cache_path, open_embedder
    from compass.config import Settings

    if threads:
        torch.set_num_threads(threads)
    config_run = config
    if languages:
        unknown = sorted(set(languages) - set(config.target_languages))
        if unknown:
            raise DataError(f"languages {unknown} are not target languages of this config")
        config_run = replace(
            config_run,
            target_languages=tuple(c for c in config.target_languages if c in languages),
            continual_languages=tuple(c for c in config.continual_languages if c in languages),
        )
    if methods:
        unknown_methods = sorted(set(methods) - set(config.methods))
        if unknown_methods:
            raise DataError(f"methods {unknown_methods} are not methods of this config")
        config_run = replace(config_run, methods=tuple(methods))
    if seeds:
        unknown_seeds = sorted(set(seeds) - set(config.seeds) - set(config.continual_seeds))
        if unknown_seeds:
            raise DataError(f"seeds {unknown_seeds} are not seeds of this config")
        kept = config_run.methods
        if config.seeds[0] not in seeds:
            kept = tuple(m for m in kept if m != "zero-shot")
        config_run = replace(
            config_run,
            seeds=tuple(s for s in config.seeds if s in seeds) or config.seeds[:1],
            continual_seeds=tuple(s for s in config.continual_seeds if s in seeds),
            methods=kept,
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    config_path = out_dir / "config.json"
    if config_path.exists() and json.loads(config_path.read_text()) != json.loads(config.to_json()):
        raise DataError(f"{out_dir} holds results of a different config; use another --out")
    config_path.write_text(config.to_json() + "\n")
    with _phase("data"):
        services = Settings(data_dir=data_dir, embedder_id=config.embedder_id)
        embedder = open_embedder(services, cache=embedding_cache_path(services))
        data = build_experiment_data(config, data_dir, embedder)
    (out_dir / "data_summary.json").write_text(json.dumps(data.summary(), indent=2) + "\n")
    with _phase("model"):
        base = load_causal_lm(config.model_id, data_dir)
    results = ResultLog(out_dir / "results.jsonl")
    if "main" in parts:
        with _phase("comparison"):
            run_comparison(config_run, data, base, results, progress)
    if "continual" in parts and config_run.continual_languages:
        with _phase("continual"):
            run_continual(config_run, data, base, results, progress)
    timing_path = out_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"sessions": []}
    timing["sessions"].append(
        {
            "seconds": round(time.perf_counter() - started, 1),
            "device": base.device,
            "languages": list(config_run.target_languages),
            "parts": list(parts),
            "threads": threads,
            "seeds": list(config_run.seeds),
        }
    )
    timing_path.write_text(json.dumps(timing, indent=2) + "\n")
    return results.path
