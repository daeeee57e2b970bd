"""The linguistic-similarity baseline (LangRank/LangSim in the paper): choose auxiliary
*languages* by URIEL distance to the target and sample from the closest ones.

Distances come from ``urielplus`` (offline). Our choice: the mean of the genetic, syntactic and
geographic angular distances (LangRank feeds such distances to a ranker; without its training
data we average them). Languages URIEL does not know get distance 1.0 and a note. The budget is
split evenly over the ``n_languages`` closest languages in the pool (ties broken by code); a
language with too few items passes its remainder to the next closest. Within a language, items
are drawn uniformly at random under the seed. Distances are cached in-process and, with
``cache_path``, in a JSON file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compass.core.errors import UnknownLanguageError
from compass.core.languages import iso639_3
from compass.core.samplers.allocation import allocate
from compass.core.samplers.base import (
    Sampler,
    Selection,
    SelectionRequest,
    register_sampler,
    summarise,
)

DEFAULT_FEATURES: tuple[str, ...] = ("genetic", "syntactic", "geographic")
_LOCK = threading.Lock()
_URIEL: Any = None
_MEMO: dict[tuple[str, str, tuple[str, ...]], float | None] = {}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """urielplus configures the root logger at INFO and logs every distance: mute it."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _uriel() -> Any:
    global _URIEL
    if _URIEL is None:
        root = logging.getLogger()
        handlers, level = list(root.handlers), root.level
        with _quiet():
            from urielplus import urielplus

            _URIEL = urielplus.URIELPlus()
        # Undo the logging.basicConfig() that urielplus runs at import time.
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    return _URIEL


def uriel_code(language: str) -> str:
    return iso639_3(language)


def language_distance(a: str, b: str, features: Sequence[str] = DEFAULT_FEATURES) -> float | None:
    """Mean URIEL angular distance between two languages; ``None`` when URIEL lacks one."""
    code_a, code_b = uriel_code(a), uriel_code(b)
    if code_a == code_b:
        return 0.0
    low, high = sorted((code_a, code_b))
    key = (low, high, tuple(features))
    with _LOCK:
        if key in _MEMO:
            return _MEMO[key]
        uriel = _uriel()
        values = []
        with _quiet():
            for feature in features:
                try:
                    value = uriel.new_distance(feature, [code_a, code_b])
                except (ValueError, IndexError, ZeroDivisionError):
                    continue
                if value is not None and np.isfinite(value):
                    values.append(float(value))
        result = float(np.mean(values)) if values else None
        _MEMO[key] = result
        return result


def _load_file_cache(path: Path | None) -> dict[str, float | None]:
    if path is None or not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
        return {str(k): v for k, v in data.items()}
    except (OSError, ValueError):
        return {}


@register_sampler("linguistic")
class LinguisticSampler(Sampler):
    """Sample from the auxiliary languages closest to the target by URIEL distance."""

    def __init__(
        self,
        n_languages: int = 3,
        features: Sequence[str] = DEFAULT_FEATURES,
        include_target: bool = True,
        cache_path: str | Path | None = None,
    ) -> None:
        self.n_languages = max(1, int(n_languages))
        self.features = tuple(features)
        self.include_target = include_target
        self.cache_path = Path(cache_path) if cache_path else None

    def params(self) -> dict[str, Any]:
        return {
            "n_languages": self.n_languages,
            "features": list(self.features),
            "include_target": self.include_target,
        }

    def distances(self, target: str, languages: Sequence[str]) -> dict[str, float | None]:
        """URIEL distance from ``target`` to each language (file-cached when configured)."""
        cached = _load_file_cache(self.cache_path)
        out: dict[str, float | None] = {}
        changed = False
        for language in languages:
            key = f"{target}|{language}|{','.join(self.features)}"
            if key in cached:
                out[language] = cached[key]
                continue
            try:
                out[language] = language_distance(target, language, self.features)
            except UnknownLanguageError:
                out[language] = None
            cached[key] = out[language]
            changed = True
        if changed and self.cache_path is not None:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            self.cache_path.write_text(json.dumps(cached, sort_keys=True))
        return out

    @staticmethod
    def _draw(
        request: SelectionRequest,
        eligible: np.ndarray,
        ranked: list[str],
        lang_index: dict[str, int],
        alloc: np.ndarray,
        notes: list[str],
    ) -> np.ndarray:
        """Draw ``alloc[i]`` items of language ``ranked[i]`` at random. With parallel keys, an
        item whose translation was already drawn is skipped; what a language then lacks moves
        to the next one in the ranking, and passes repeat from the closest language until the
        budget is met (the budget was checked against the number of units)."""
        rng = request.rng()
        units = request.pool.unit_ids()
        taken = np.zeros(int(units.max()) + 1, dtype=bool) if request.dedupes() else None
        eligible_langs = request.pool.language_ids[eligible]
        picks: list[np.ndarray] = []
        want = [int(a) for a in alloc]
        missing = 0
        while True:
            before = missing
            for i, language in enumerate(ranked):
                need = want[i] + missing
                if need == 0:
                    continue
                members = eligible[eligible_langs == lang_index[language]]
                if taken is not None:
                    members = members[~taken[units[members]]]
                drawn = rng.choice(members, size=min(need, len(members)), replace=False)
                if taken is not None:
                    drawn = request.dedupe_ordered(drawn)
                    taken[units[drawn]] = True
                picks.append(drawn)
                missing = need - len(drawn)
            if missing == 0 or taken is None or (missing == before and not any(want)):
                break  # done, or no language has an unused unit left
            want = [0] * len(ranked)
            notes.append(f"{missing} item(s) moved on: their translations were already chosen")
        return np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)

    def select(self, request: SelectionRequest) -> Selection:
        target = request.target_language
        iso639_3(target)  # unknown to URIEL's coding: fail before any work
        eligible = request.eligible()
        request.check_budget(request.n_units(eligible))
        pool = request.pool
        vocab = pool.language_vocab
        present = np.bincount(pool.language_ids[eligible], minlength=len(vocab))
        candidates = [vocab[i] for i in np.flatnonzero(present)]
        if not self.include_target:
            candidates = [c for c in candidates if c.split("-")[0] != target.split("-")[0]]
        distances = self.distances(target, candidates)
        notes = [
            f"URIEL has no distance for {lang}; treated as 1.0"
            for lang, d in distances.items()
            if d is None
        ]
        ranked = sorted(
            candidates, key=lambda c: (distances[c] if distances[c] is not None else 1.0, c)
        )
        lang_index = {name: i for i, name in enumerate(vocab)}
        capacity = np.array([present[lang_index[c]] for c in ranked], dtype=np.int64)
        weights = np.zeros(len(ranked))
        weights[: self.n_languages] = 1.0
        alloc = allocate(request.budget, weights, capacity)
        if alloc.sum() < request.budget:
            # The closest languages are exhausted: walk down the ranking.
            spill = request.budget - int(alloc.sum())
            for i in range(len(ranked)):
                take = min(spill, int(capacity[i] - alloc[i]))
                alloc[i] += take
                spill -= take
                if spill == 0:
                    break
            used = int((alloc > 0).sum())
            notes.append(f"the {self.n_languages} closest languages ran out; used {used}")
        chosen = self._draw(request, eligible, ranked, lang_index, alloc, notes)
        closest = ", ".join(
            f"{c} ({distances[c]:.2f})" if distances[c] is not None else f"{c} (?)"
            for c in ranked[: self.n_languages]
        )
        reason = (
            f"auxiliary languages ranked by mean URIEL {'/'.join(self.features)} distance to "
            f"{target}; budget split over the closest: {closest}; random within each language."
        )
        return summarise(
            request, chosen, sampler=self.name, reason=reason, notes=notes, params=self.params()
        )
