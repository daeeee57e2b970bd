"""The experiment's data, all real text: per target language a held-out set, a usage set and
existing training data skewed away from part of that usage, plus a multilingual auxiliary pool.

Rules that keep the measurement honest (none of them looks at any method's result):
- every split is drawn with a fixed seed (0) before any method runs, identically for all methods;
- the held-out texts are disjoint from the usage, training and pool texts, and so are their
  *translations*: the corpora are parallel, so pool items sharing a held-out item's
  ``parallel_key`` are removed from the pool;
- the "gap" clusters (usage the existing data does not cover) are chosen by a seeded random walk
  over the usage clusters until they hold ``gap_share`` of the usage, never by looking at scores.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from compass.core.errors import DataError
from compass.core.samplers import Pool
from compass.core.semantic_map import SemanticMap
from compass.corpora import TextRecord, load_corpus
from compass.corpora.pool import display_texts
from compass.lab.experiment.config import ExperimentConfig
from compass.lm.evaluation import MCItem, continuation_items

log = structlog.get_logger(__name__)


def _unspaced(text: str) -> bool:
    cjk = sum(
        1 for ch in text if unicodedata.name(ch, "").startswith(("CJK", "HIRAGANA", "KATAKANA"))
    )
    return cjk >= 0.2 * max(len(text), 1)


def clip_text(text: str, max_chars: int, max_chars_unspaced: int) -> str:
    """Shorten to a character budget at a word boundary (any character for CJK scripts), so
    that a 135M model on two CPU cores can train and score thousands of texts."""
    text = " ".join(text.split())
    if _unspaced(text):
        return text[:max_chars_unspaced]
    if len(text) <= max_chars:
        return text
    cut = text.rfind(" ", 0, max_chars)
    return text[: cut if cut > max_chars // 2 else max_chars]


def _language_seed(language: str) -> int:
    return int(hashlib.sha256(language.encode()).hexdigest()[:8], 16)


@dataclass(frozen=True, eq=False)
class TextSet:
    records: list[TextRecord]
    vectors: np.ndarray
    clusters: np.ndarray

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.records]

    def subset(self, rows: Sequence[int] | np.ndarray) -> TextSet:
        index = np.asarray(rows, dtype=np.int64)
        return TextSet(
            [self.records[int(i)] for i in index], self.vectors[index], self.clusters[index]
        )

    def __len__(self) -> int:
        return len(self.records)


@dataclass(frozen=True, eq=False)
class LanguageData:
    language: str
    heldout: TextSet
    usage: TextSet
    train: TextSet
    rest: TextSet
    gap_clusters: tuple[int, ...]
    mc_items: list[MCItem]

    def summary(self) -> dict[str, object]:
        usage_in_gap = float(np.isin(self.usage.clusters, self.gap_clusters).mean())
        return {
            "heldout": len(self.heldout),
            "usage": len(self.usage),
            "train": len(self.train),
            "rest": len(self.rest),
            "mc_items": len(self.mc_items),
            "gap_clusters": list(self.gap_clusters),
            "usage_share_in_gap": round(usage_in_gap, 3),
            "heldout_share_in_gap": round(
                float(np.isin(self.heldout.clusters, self.gap_clusters).mean()), 3
            ),
        }


@dataclass(frozen=True, eq=False)
class ExperimentData:
    semantic_map: SemanticMap
    pool: Pool
    languages: dict[str, LanguageData]

    def summary(self) -> dict[str, object]:
        per_language: dict[str, int] = {}
        for code in self.pool.language_of(np.arange(len(self.pool))):
            per_language[code] = per_language.get(code, 0) + 1
        return {
            "k": self.semantic_map.k,
            "semantic_map_silhouette": self.semantic_map.silhouette,
            "pool_size": len(self.pool),
            "pool_per_language": per_language,
            "targets": {code: data.summary() for code, data in self.languages.items()},
        }


def _corpus_has(corpus: str, language: str, data_dir: Path) -> bool:
    """Whether an unpacked Debian corpus has ``language`` (other corpora: assume yes)."""
    from compass.corpora import handbook, libreoffice, unpacked_root

    if corpus in ("libreoffice", "libreoffice-help"):
        return language in libreoffice.language_dirs(unpacked_root(data_dir))
    if corpus == "debian-handbook":
        return language in handbook.language_dirs(unpacked_root(data_dir))
    return True


def _load(
    config: ExperimentConfig, languages: Sequence[str], per_language: int, data_dir: Path
) -> list[TextRecord]:
    per_corpus = max(1, per_language // len(config.corpora))
    out: list[TextRecord] = []
    seen: set[tuple[str, str]] = set()
    for corpus in config.corpora:
        have = [code for code in languages if _corpus_has(corpus, code, data_dir)]
        if not have:
            continue
        for record in load_corpus(corpus, have, data_dir=data_dir, limit_per_language=per_corpus):
            text = clip_text(record.text, config.max_chars, config.max_chars_unspaced)
            minimum = 12 if _unspaced(text) else 30
            key = (record.language, text)
            if len(text) < minimum or key in seen:
                continue
            seen.add(key)
            out.append(
                TextRecord(
                    id=record.id,
                    language=record.language,
                    text=text,
                    source=record.source,
                    topic=record.topic,
                    parallel_key=record.parallel_key,
                )
            )
    return out


def _pick_gap_clusters(usage_clusters: np.ndarray, share: float, language: str) -> tuple[int, ...]:
    counts = np.bincount(usage_clusters)
    present = np.flatnonzero(counts)
    rng = np.random.default_rng(_language_seed(language))
    chosen: list[int] = []
    total = 0
    for cluster in rng.permutation(present):
        if total >= share * len(usage_clusters):
            break
        if (total + counts[cluster]) > (share + 0.25) * len(usage_clusters):
            continue  # one huge cluster would make the gap most of the usage
        chosen.append(int(cluster))
        total += int(counts[cluster])
    if not chosen or len(chosen) == len(present):
        raise DataError(f"cannot choose gap clusters for {language} (usage too concentrated)")
    return tuple(sorted(chosen))


def build_experiment_data(
    config: ExperimentConfig, data_dir: Path, embedder: object
) -> ExperimentData:
    """Load, clip, embed (cached), cluster and split; deterministic for a given config."""
    targets = _load(config, config.target_languages, config.records_per_language, data_dir)
    pool_records = _load(config, config.pool_languages, config.pool_per_language, data_dir)
    embed = embedder.embed  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    by_language: dict[str, list[TextRecord]] = {c: [] for c in config.target_languages}
    for record in targets:
        by_language[record.language].append(record)
    heldout_rows: dict[str, np.ndarray] = {}
    banned: set[str] = set()
    for code, records in by_language.items():
        need = config.heldout_size + config.usage_size + config.train_size
        if len(records) < need:
            raise DataError(
                f"{code}: {len(records)} texts loaded, the splits need at least {need}; "
                "raise records_per_language or fetch the corpora (compass data fetch)"
            )
        rows = rng.permutation(len(records))[: config.heldout_size]
        heldout_rows[code] = rows
        banned.update(records[i].parallel_key or "" for i in rows)
    banned.discard("")
    pool_records = [r for r in pool_records if r.parallel_key not in banned]
    log.info("experiment_data_loaded", targets=len(targets), pool=len(pool_records))
    pool_vectors = embed([r.text for r in pool_records])
    target_vectors = {c: embed([r.text for r in rs]) for c, rs in by_language.items()}
    fit_vectors = [pool_vectors]
    fit_records = list(pool_records)
    for code, records in by_language.items():
        keep = np.setdiff1d(np.arange(len(records)), heldout_rows[code])
        fit_vectors.append(target_vectors[code][keep])
        fit_records += [records[i] for i in keep]
    semantic_map = SemanticMap.fit(
        np.concatenate(fit_vectors),
        languages=[r.language for r in fit_records],
        k=config.k,
        seed=0,
        embedder_id=config.embedder_id,
        texts=display_texts(fit_records),
    )
    pool = Pool.from_records(pool_records, pool_vectors, semantic_map)
    languages: dict[str, LanguageData] = {}
    for code, records in by_language.items():
        everything = TextSet(
            records, target_vectors[code], semantic_map.assign(target_vectors[code])
        )
        heldout = everything.subset(heldout_rows[code])
        others = np.setdiff1d(np.arange(len(records)), heldout_rows[code])
        others = others[rng.permutation(len(others))]
        usage = everything.subset(others[: config.usage_size])
        remaining = others[config.usage_size :]
        gaps = _pick_gap_clusters(usage.clusters, config.gap_share, code)
        covered = remaining[~np.isin(everything.clusters[remaining], gaps)]
        if len(covered) < config.train_size:
            raise DataError(
                f"{code}: only {len(covered)} texts outside the gap clusters for the existing "
                f"training data (need {config.train_size})"
            )
        train = everything.subset(covered[: config.train_size])
        rest = everything.subset(np.setdiff1d(remaining, covered[: config.train_size]))
        items = continuation_items(
            heldout.texts, heldout.clusters.tolist(), code, n_options=config.mc_options, seed=0
        )
        languages[code] = LanguageData(code, heldout, usage, train, rest, gaps, items)
    data = ExperimentData(semantic_map, pool, languages)
    log.info("experiment_data_ready", **{"pool": len(pool), "k": semantic_map.k})
    return data
