"""``compass experiment prepare``: everything of experiment v2 that runs on a CPU, into a bundle.

Loads and merges the texts (:mod:`~compass.lab.experiment.v2_data`), embeds them with the
configured embedder (cached), fits the semantic map on the pool texts of every language (never on
a held-out text), draws every unit, and runs every registered sampler of the config on both pool
regimes. The bundle is a folder of small files the stand-alone runner ``train_eval.py`` reads:

- ``manifest.json``: config, training plan, units, methods run and missing, map facts;
- ``texts.jsonl``: ``{"i", "lang", "corpus", "cluster", "text"}`` for every text a unit uses;
- ``units.jsonl``: per unit the held-out ids, coverage ids, MC items, per-cluster usage and
  coverage counts, gap clusters, JS divergence and, per (method, regime), the selected ids with
  their gap share and languages.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from scipy.spatial.distance import jensenshannon

from compass.core.errors import DataError
from compass.core.records import TextRecord
from compass.core.samplers import Pool, SelectionRequest, available_samplers, get_sampler
from compass.core.semantic_map import SemanticMap
from compass.lab.experiment.v2_config import SELECTING_METHODS, V2Config
from compass.lab.experiment.v2_data import (
    Text,
    UnitSplit,
    draw_unit,
    is_unspaced,
    load_texts,
    partition,
)

log = structlog.get_logger(__name__)


def embedding_view(text: str, config: V2Config) -> str:
    """What the embedder sees: the first ``embed_chars`` characters (``embed_chars_unspaced``
    for CJK), enough to place a text's topic; whole 400-character texts ran at 2 texts/s on the
    shared 2-core machine (measured), so the full grid could not be embedded in a session."""
    limit = config.embed_chars_unspaced if is_unspaced(text) else config.embed_chars
    return text[:limit]


def js_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) between two count vectors (scipy returns
    its square root, the JS distance)."""
    p = np.asarray(p_counts, dtype=float)
    q = np.asarray(q_counts, dtype=float)
    if p.sum() <= 0 or q.sum() <= 0:
        raise DataError("JS divergence of an empty distribution")
    return float(jensenshannon(p / p.sum(), q / q.sum(), base=2) ** 2)


def mc_items(heldout: np.ndarray, clusters: np.ndarray, n_items: int, seed: int) -> list[list[int]]:
    """``[true, same-cluster distractor, other-cluster, other-cluster]`` text ids; a cluster with
    one held-out text borrows its same-cluster slot from another cluster."""
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(heldout))[:n_items]
    items = []
    for row in rows:
        same = np.flatnonzero((clusters == clusters[row]) & (np.arange(len(heldout)) != row))
        other = np.flatnonzero(clusters != clusters[row])
        if len(other) < 2:
            other = np.setdiff1d(np.arange(len(heldout)), [row])
        picks = list(rng.choice(other, size=2, replace=False))
        pool = same if len(same) else np.setdiff1d(other, picks)
        picks.insert(0, int(rng.choice(pool)))
        items.append([int(heldout[row])] + [int(heldout[p]) for p in picks])
    return items


def _record(text: Text) -> TextRecord:
    """A pool record for samplers that read records (e.g. to de-duplicate by parallel key: a
    merged text is keyed by its smallest paragraph key, shared by translations that hold the
    same paragraphs)."""
    return TextRecord(
        id=f"v2:{text.index}",
        language=text.language,
        text=text.text,
        source=text.corpus,
        parallel_key=min(text.keys) if text.keys else None,
    )


def _selections(
    split: UnitSplit,
    texts: list[Text],
    vectors: np.ndarray,
    clusters: np.ndarray,
    semantic_map: SemanticMap,
    config: V2Config,
    methods: list[str],
    gaps: set[int],
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for regime in config.regimes:
        rows = split.pool_without if regime == "without" else split.pool_with
        records = [_record(texts[int(r)]) for r in rows]
        pool = Pool.build(vectors[rows], clusters[rows], [r.language for r in records], records)
        for method in methods:
            request = SelectionRequest(
                target_language=split.language,
                budget=min(config.budget, len(rows)),
                pool=pool,
                semantic_map=semantic_map,
                target_vectors=vectors[split.usage],
                coverage_vectors=vectors[split.coverage],
                seed=split.seed,
            )
            selection = get_sampler(method).select(request)
            chosen = rows[np.asarray(selection.indices, dtype=np.int64)]
            languages = Counter(texts[int(r)].language for r in chosen)
            out[f"{method}/{regime}"] = {
                "ids": [int(r) for r in chosen],
                "gap_share": float(np.mean([int(clusters[r]) in gaps for r in chosen])),
                "handbook_share": float(np.mean([texts[int(r)].corpus == "dh" for r in chosen])),
                "target_language_share": languages.get(split.language, 0) / max(len(chosen), 1),
                "languages": dict(languages.most_common(6)),
            }
    return out


def registered_methods(config: V2Config) -> tuple[list[str], list[str]]:
    """The config's selecting methods that the sampler registry knows, and the missing ones."""
    known = set(available_samplers())
    wanted = [m for m in config.methods if m in SELECTING_METHODS]
    missing = [m for m in wanted if m not in known]
    for name in missing:
        log.warning("v2_sampler_not_registered", sampler=name, known=sorted(known))
    return [m for m in wanted if m in known], missing


def prepare_bundle(config: V2Config, data_dir: Path, out: Path, embedder: Any) -> Path:
    """Write the bundle for ``config`` into ``out`` (created); returns the manifest path.
    Deterministic for a given config, corpora and embedder."""
    started = time.perf_counter()
    methods, missing = registered_methods(config)
    texts = load_texts(config, data_dir)
    parts = partition(texts, config)
    log.info("v2_texts_loaded", texts=len(texts))
    views = [embedding_view(t.text, config) for t in texts]
    # In chunks, so an interrupted prepare keeps what it embedded (the cache writes per call).
    vectors = np.concatenate(
        [np.asarray(embedder.embed(views[i : i + 256]), dtype=np.float32)
         for i in range(0, len(views), 256)]
    )  # fmt: skip
    fit_rows = np.concatenate(list(parts.pool.values()))
    semantic_map = SemanticMap.fit(
        vectors[fit_rows],
        languages=[texts[int(r)].language for r in fit_rows],
        k=config.k,
        seed=0,
        embedder_id=config.embedder_id,
    )
    clusters = semantic_map.assign(vectors)
    used: set[int] = set()
    units: list[dict[str, Any]] = []
    for draw in range(config.draws):
        for language in config.target_languages:
            split = draw_unit(texts, parts, config, language, draw)
            usage_counts = semantic_map.counts(clusters[split.usage]).astype(float)
            coverage_counts = semantic_map.counts(clusters[split.coverage]).astype(float)
            usage_share = usage_counts / usage_counts.sum()
            coverage_share = coverage_counts / coverage_counts.sum()
            gaps = {int(c) for c in np.flatnonzero(usage_share > coverage_share)}
            selections = _selections(
                split, texts, vectors, clusters, semantic_map, config, methods, gaps
            )
            items = mc_items(split.heldout, clusters[split.heldout], config.mc_items, split.seed)
            unit = {
                "unit": split.unit,
                "language": split.language,
                "draw": split.draw,
                "seed": split.seed,
                "usage_handbook_share": round(split.usage_share, 4),
                "js_usage_coverage": js_divergence(usage_counts, coverage_counts),
                "gap_clusters": sorted(gaps),
                "usage_counts": usage_counts.astype(int).tolist(),
                "coverage_counts": coverage_counts.astype(int).tolist(),
                "heldout": split.heldout.tolist(),
                "coverage": split.coverage.tolist(),
                "mc_items": items,
                "pool_sizes": {"without": len(split.pool_without), "with": len(split.pool_with)},
                "selections": selections,
            }
            used.update(unit["heldout"])
            used.update(unit["coverage"])
            for selection in selections.values():
                used.update(selection["ids"])
            units.append(unit)
            log.info("v2_unit_prepared", unit=split.unit, js=round(unit["js_usage_coverage"], 3))
    out.mkdir(parents=True, exist_ok=True)
    with (out / "texts.jsonl").open("w", encoding="utf-8") as handle:
        for row in sorted(used):
            text = texts[row]
            line = {"i": row, "lang": text.language, "corpus": text.corpus,
                    "cluster": int(clusters[row]), "text": text.text}  # fmt: skip
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    with (out / "units.jsonl").open("w", encoding="utf-8") as handle:
        for unit in units:
            handle.write(json.dumps(unit, sort_keys=True) + "\n")
    manifest = {
        "format": "compass-experiment-v2-bundle/1",
        "config": config.to_dict(),
        "training": config.to_dict()["training"],
        "methods": [m for m in config.methods if m not in missing],
        "methods_missing": missing,
        "units": [u["unit"] for u in units],
        "k": semantic_map.k,
        "semantic_map_silhouette": semantic_map.silhouette,
        "n_texts_loaded": len(texts),
        "texts_per_language": dict(Counter(t.language for t in texts)),
        "prepare_seconds": round(time.perf_counter() - started, 1),
    }
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path
