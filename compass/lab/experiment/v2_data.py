"""Experiment v2's texts and per-unit splits (see docs/results.md, "Pre-registered design (v2)").

Texts are paragraphs of the LibreOffice help (``lo``) and the Debian handbook (``dh``), merged
with the following paragraphs of the same page until they hold ``min_chars`` characters, so a
text fills a 128-token context. A merged text keeps the parallel keys of all its paragraphs: the
pool of a unit loses every text that shares a paragraph with one of the unit's held-out texts.

Per language the texts are split once (seed 0) into a fixed *pool part* (``pool_per_corpus`` per
corpus; the only texts the semantic map is fitted on) and, for target languages, a *reserve*
from which each unit draws its held-out, usage and existing-training (coverage) sets.
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
from compass.corpora import TextRecord, load_corpus
from compass.lab.experiment.v2_config import V2Config

log = structlog.get_logger(__name__)

CORPORA = {"lo": "libreoffice", "dh": "debian-handbook"}


@dataclass(frozen=True)
class Text:
    """One merged text: ``keys`` are the parallel keys of its paragraphs."""

    index: int
    language: str
    corpus: str
    text: str
    keys: frozenset[str]


def is_unspaced(text: str) -> bool:
    cjk = sum(
        1 for ch in text if unicodedata.name(ch, "").startswith(("CJK", "HIRAGANA", "KATAKANA"))
    )
    return cjk >= 0.2 * max(len(text), 1)


def stable_seed(*parts: object) -> int:
    """A seed from names (sha256), identical on every machine and Python run."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()
    return int(digest[:8], 16)


def merge_paragraphs(records: Sequence[TextRecord], config: V2Config) -> list[tuple[str, set[str]]]:
    """Consecutive paragraphs of one page (parallel key up to ``#``) joined by newlines until a
    text reaches ``min_chars`` (``min_chars_unspaced`` for CJK); never past ``max_chars``; a
    page's short tail is dropped."""
    out: list[tuple[str, set[str]]] = []
    parts: list[str] = []
    keys: set[str] = set()
    page = None

    def flush() -> None:
        text = "\n".join(parts)
        minimum = config.min_chars_unspaced if is_unspaced(text) else config.min_chars
        if parts and len(text) >= minimum:
            out.append((text[: config.max_chars], set(keys)))

    for record in records:
        record_page = (record.parallel_key or record.id).split("#")[0]
        if record_page != page:
            parts, keys, page = [], set(), record_page
        parts.append(" ".join(record.text.split()))
        keys.add(record.parallel_key or record.id)
        text = "\n".join(parts)
        minimum = config.min_chars_unspaced if is_unspaced(text) else config.min_chars
        if len(text) >= minimum:
            flush()
            parts, keys = [], set()
    return out


def load_texts(config: V2Config, data_dir: Path) -> list[Text]:
    """Every text of every language, merged; targets get more (they also feed the units)."""
    texts: list[Text] = []
    languages = [*config.target_languages, *config.aux_languages]
    for code, corpus in CORPORA.items():
        for language in languages:
            is_target = language in config.target_languages
            want = (
                (config.target_handbook if code == "dh" else config.target_libreoffice)
                if is_target
                else config.pool_per_corpus
            )
            per_paragraph = 2 if code == "dh" else 6  # paragraphs per merged text, measured
            try:
                records = load_corpus(
                    corpus, [language], data_dir=data_dir, limit_per_language=want * per_paragraph
                )
            except DataError as error:
                if is_target:
                    raise
                log.warning("v2_corpus_missing", corpus=corpus, language=language, error=str(error))
                continue
            for text, keys in merge_paragraphs(records, config)[:want]:
                texts.append(Text(len(texts), language, code, text, frozenset(keys)))
    return texts


@dataclass(frozen=True)
class Partition:
    """Per language: the pool part (indices into the text list) and, for targets, the reserve
    per corpus."""

    pool: dict[str, np.ndarray]
    reserve: dict[tuple[str, str], np.ndarray]


def partition(texts: Sequence[Text], config: V2Config) -> Partition:
    """Split once (seed 0): the pool part of a target language takes what is left after the
    reserve the units need (held-out + usage of the handbook, and also coverage of the help)."""
    rng = np.random.default_rng(0)
    pool: dict[str, list[int]] = {}
    reserve: dict[tuple[str, str], np.ndarray] = {}
    need = {
        "dh": config.heldout_size + config.usage_size,
        "lo": config.heldout_size + config.usage_size + config.coverage_size,
    }
    for language in [*config.target_languages, *config.aux_languages]:
        for corpus in CORPORA:
            rows = np.array(
                [t.index for t in texts if t.language == language and t.corpus == corpus],
                dtype=np.int64,
            )
            rows = rows[rng.permutation(len(rows))]
            if language in config.target_languages:
                if len(rows) < need[corpus]:
                    raise DataError(
                        f"{language}: {len(rows)} {CORPORA[corpus]} texts, a unit needs "
                        f"{need[corpus]}; lower heldout/usage/coverage sizes or fetch the corpora"
                    )
                n_pool = min(config.pool_per_corpus, len(rows) - need[corpus])
                reserve[(language, corpus)] = rows[n_pool:]
                rows = rows[:n_pool]
            pool.setdefault(language, []).extend(rows[: config.pool_per_corpus].tolist())
    return Partition({k: np.array(v, dtype=np.int64) for k, v in pool.items()}, reserve)


@dataclass(frozen=True)
class UnitSplit:
    """One unit (target language x split draw): index arrays into the text list."""

    unit: str
    language: str
    draw: int
    seed: int
    usage_share: float
    heldout: np.ndarray
    usage: np.ndarray
    coverage: np.ndarray
    pool_without: np.ndarray
    pool_with: np.ndarray


def draw_unit(
    texts: Sequence[Text], parts: Partition, config: V2Config, language: str, draw: int
) -> UnitSplit:
    """Held-out and usage: handbook share ``s`` ~ U(usage_share_range), the rest help texts;
    coverage: help texts only. The pool without the target drops translations of held-out
    texts; the pool with the target adds the target's own pool part."""
    seed = stable_seed("v2", language, draw)
    rng = np.random.default_rng(seed)
    low, high = config.usage_share_range
    share = float(rng.uniform(low, high))
    dh = parts.reserve[(language, "dh")][rng.permutation(len(parts.reserve[(language, "dh")]))]
    lo = parts.reserve[(language, "lo")][rng.permutation(len(parts.reserve[(language, "lo")]))]
    n_held_dh = round(share * config.heldout_size)
    n_use_dh = round(share * config.usage_size)
    n_held_lo = config.heldout_size - n_held_dh
    n_use_lo = config.usage_size - n_use_dh
    heldout = np.concatenate([dh[:n_held_dh], lo[:n_held_lo]])
    usage = np.concatenate(
        [dh[n_held_dh : n_held_dh + n_use_dh], lo[n_held_lo : n_held_lo + n_use_lo]]
    )
    start = n_held_lo + n_use_lo
    coverage = lo[start : start + config.coverage_size]
    banned: set[str] = set()
    for row in heldout:
        banned.update(texts[int(row)].keys)
    others = [
        row
        for code, rows in parts.pool.items()
        if code != language
        for row in rows.tolist()
        if not (texts[row].keys & banned)
    ]
    without = np.array(sorted(others), dtype=np.int64)
    with_target = np.array(sorted([*others, *parts.pool[language].tolist()]), dtype=np.int64)
    return UnitSplit(
        unit=f"{language}-{draw}",
        language=language,
        draw=draw,
        seed=seed,
        usage_share=share,
        heldout=heldout,
        usage=usage,
        coverage=coverage,
        pool_without=without,
        pool_with=with_target,
    )
