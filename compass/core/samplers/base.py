"""One interface for every way of choosing auxiliary data: ``Sampler.select(request)``.

A :class:`SelectionRequest` carries everything a sampler may look at — the target language and
its usage (target vectors, or per-cluster counts from the live stream), the coverage of the data
the adapter was already trained on, the auxiliary :class:`Pool` with its cluster ids and
languages, the :class:`SemanticMap`, the budget and the seed — so every sampler is a pure
function of the request and is deterministic under its seed.

Budget policy (documented choice): a budget larger than the pool is an error
(:class:`BudgetError`), never a silent cap, because a selection smaller than asked changes what
an experiment measures. The ``all`` sampler ignores the budget by definition.

De-duplication by parallel key (issue 15): translations of one text share a
:attr:`~compass.core.records.TextRecord.parallel_key`; a selection holding five translations of
one paragraph spends five budget units on one piece of content. Every sampler therefore keeps at
most one item per *unit* — a parallel group, or an item without a key on its own
(:attr:`Pool.units`) — and the budget is checked against the number of eligible units.
``SelectionRequest(dedupe_parallel=False)`` switches it off (ablations).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from compass.core.errors import DataError
from compass.core.languages import normalize_language
from compass.core.records import TextRecord
from compass.core.semantic_map import SemanticMap


class BudgetError(DataError):
    """The budget is not a positive integer no larger than the pool."""


@dataclass(frozen=True, eq=False)
class Pool:
    """The auxiliary pool: unit vectors, their cluster ids and languages (as small integer codes
    so that million-item pools stay cheap), and optionally the records themselves."""

    vectors: np.ndarray
    clusters: np.ndarray
    language_ids: np.ndarray
    language_vocab: tuple[str, ...]
    records: Sequence[TextRecord] | None = None
    units: np.ndarray | None = None
    """``int64 (n,)``: items with the same value are translations of one text (same
    ``parallel_key``); an item without a key is a unit of its own. Derived from ``records``
    when not given; every item its own unit when there are no records."""
    has_parallel: bool = field(default=False, init=False)
    """Whether any two items share a unit (derived)."""

    def __post_init__(self) -> None:
        vectors = np.asarray(self.vectors, dtype=np.float32)
        clusters = np.asarray(self.clusters, dtype=np.int32)
        language_ids = np.asarray(self.language_ids, dtype=np.int32)
        if vectors.ndim != 2:
            raise DataError(f"pool vectors must be (n, dim), got shape {vectors.shape}")
        n = vectors.shape[0]
        if clusters.shape != (n,) or language_ids.shape != (n,):
            raise DataError(
                f"pool has {n} vectors but {clusters.shape[0]} cluster ids and "
                f"{language_ids.shape[0]} languages"
            )
        if n and (language_ids.min() < 0 or language_ids.max() >= len(self.language_vocab)):
            raise DataError("pool language ids outside the language vocabulary")
        if self.records is not None and len(self.records) != n:
            raise DataError(f"pool has {n} vectors but {len(self.records)} records")
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "clusters", clusters)
        object.__setattr__(self, "language_ids", language_ids)
        units = _units(self.records, n) if self.units is None else np.asarray(self.units)
        if units.shape != (n,):
            raise DataError(f"pool has {n} vectors but {units.shape[0]} parallel unit ids")
        object.__setattr__(self, "units", units.astype(np.int64))
        object.__setattr__(self, "has_parallel", bool(len(np.unique(units)) < n))

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        clusters: np.ndarray,
        languages: Sequence[str],
        records: Sequence[TextRecord] | None = None,
    ) -> Pool:
        """From per-item language codes (normalised here)."""
        vocab: dict[str, int] = {}
        normalised: dict[str, str] = {}
        ids = np.empty(len(languages), dtype=np.int32)
        for index, code in enumerate(languages):
            name = normalised.get(code)
            if name is None:
                name = normalised[code] = normalize_language(code)
            ids[index] = vocab.setdefault(name, len(vocab))
        return cls(vectors, clusters, ids, tuple(vocab), records)

    @classmethod
    def from_records(
        cls, records: Sequence[TextRecord], vectors: np.ndarray, semantic_map: SemanticMap
    ) -> Pool:
        """Records + their vectors; clusters come from ``semantic_map``."""
        if len(records) != len(vectors):
            raise DataError(f"{len(records)} records but {len(vectors)} vectors")
        clusters = semantic_map.assign(vectors) if len(records) else np.zeros(0, dtype=np.int32)
        return cls.build(vectors, clusters, [r.language for r in records], records)

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def language_of(self, indices: np.ndarray) -> list[str]:
        return [self.language_vocab[i] for i in self.language_ids[indices]]

    def unit_ids(self) -> np.ndarray:
        """:attr:`units` as a plain array (never ``None`` after construction)."""
        assert self.units is not None
        return self.units


def _units(records: Sequence[TextRecord] | None, n: int) -> np.ndarray:
    """Unit id per item: a shared id per ``parallel_key``, ``key_count + index`` otherwise."""
    if records is None:
        return np.arange(n, dtype=np.int64)
    keys: dict[str, int] = {}
    ids = np.empty(n, dtype=np.int64)
    for index, record in enumerate(records):
        key = record.parallel_key
        ids[index] = -1 if key is None else keys.setdefault(key, len(keys))
    alone = ids < 0
    ids[alone] = len(keys) + np.flatnonzero(alone)
    return ids


def first_per_unit(units: np.ndarray, ordered: np.ndarray) -> np.ndarray:
    """The items of ``ordered`` (pool indices in priority order) that are the first of their
    unit, in the same order: ``O(n log n)``, no Python loop."""
    ordered = np.asarray(ordered, dtype=np.int64)
    if len(ordered) == 0:
        return ordered
    _, first = np.unique(units[ordered], return_index=True)
    return ordered[np.sort(first)]


@dataclass(frozen=True, eq=False)
class SelectionRequest:
    """Everything a sampler may use. Give target usage as vectors or as per-cluster counts
    (``target_counts``, e.g. from the live usage table); the same for coverage, which may be
    absent (nothing covered yet)."""

    target_language: str
    budget: int
    pool: Pool
    semantic_map: SemanticMap
    target_vectors: np.ndarray | None = None
    coverage_vectors: np.ndarray | None = None
    target_counts: np.ndarray | None = None
    coverage_counts: np.ndarray | None = None
    seed: int = 0
    exclude_languages: tuple[str, ...] = ()
    dedupe_parallel: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_language", normalize_language(self.target_language))
        object.__setattr__(
            self, "exclude_languages", tuple(normalize_language(c) for c in self.exclude_languages)
        )
        if isinstance(self.budget, bool) or not isinstance(self.budget, int | np.integer):
            raise BudgetError(f"budget must be an integer, got {self.budget!r}")
        if self.budget < 1:
            raise BudgetError(f"budget must be at least 1, got {self.budget}")
        k, dim = self.semantic_map.k, self.semantic_map.dim
        if len(self.pool) == 0:
            raise DataError("the auxiliary pool is empty")
        if self.pool.vectors.shape[1] != dim:
            raise DataError(f"pool vectors are {self.pool.vectors.shape[1]}-d, map is {dim}-d")
        if self.pool.clusters.max() >= k:
            raise DataError("pool cluster ids do not belong to this semantic map (re-assign)")
        for name in ("target_vectors", "coverage_vectors"):
            value = getattr(self, name)
            if value is not None:
                array = np.asarray(value, dtype=np.float32)
                if array.ndim != 2 or (array.shape[0] and array.shape[1] != dim):
                    raise DataError(f"{name} must be (n, {dim}), got shape {array.shape}")
                object.__setattr__(self, name, array)
        for name in ("target_counts", "coverage_counts"):
            value = getattr(self, name)
            if value is not None:
                array = np.asarray(value, dtype=np.float64)
                if array.shape != (k,) or (array < 0).any():
                    raise DataError(f"{name} must be {k} non-negative counts (one per cluster)")
                object.__setattr__(self, name, array)
        if self.usage_counts().sum() <= 0:
            raise DataError(
                f"the target usage for {self.target_language} is empty: give target texts "
                "or non-zero per-cluster counts"
            )

    def usage_counts(self) -> np.ndarray:
        """Target items per cluster (float64, length k)."""
        if self.target_counts is not None:
            return self.target_counts
        if self.target_vectors is None or len(self.target_vectors) == 0:
            return np.zeros(self.semantic_map.k)
        return self.semantic_map.counts(self.semantic_map.assign(self.target_vectors)).astype(
            np.float64
        )

    def coverage_counts_or_zero(self) -> np.ndarray:
        """Coverage items per cluster (zeros when nothing is covered yet)."""
        if self.coverage_counts is not None:
            return self.coverage_counts
        if self.coverage_vectors is None or len(self.coverage_vectors) == 0:
            return np.zeros(self.semantic_map.k)
        return self.semantic_map.counts(self.semantic_map.assign(self.coverage_vectors)).astype(
            np.float64
        )

    def eligible(self) -> np.ndarray:
        """Indices of pool items a sampler may choose (all but excluded languages)."""
        if not self.exclude_languages:
            return np.arange(len(self.pool), dtype=np.int64)
        banned = [
            i for i, name in enumerate(self.pool.language_vocab) if name in self.exclude_languages
        ]
        return np.flatnonzero(~np.isin(self.pool.language_ids, banned)).astype(np.int64)

    def dedupes(self) -> bool:
        """Whether this request keeps one item per parallel unit (and the pool has any)."""
        return self.dedupe_parallel and self.pool.has_parallel

    def representatives(
        self, eligible: np.ndarray, priority: np.ndarray | None = None
    ) -> np.ndarray:
        """One item per parallel unit among ``eligible`` (sorted pool indices): the one with the
        highest ``priority`` (aligned with ``eligible``; ties to the lower index; ``None``: the
        lowest index). ``eligible`` itself when nothing is to be de-duplicated."""
        if not self.dedupes() or len(eligible) == 0:
            return eligible
        rank = np.zeros(len(eligible)) if priority is None else -np.asarray(priority, float)
        order = eligible[np.lexsort((eligible, rank))]
        return np.sort(first_per_unit(self.pool.unit_ids(), order))

    def n_units(self, eligible: np.ndarray) -> int:
        """How many distinct items a sampler may choose among ``eligible``."""
        if not self.dedupes():
            return len(eligible)
        return len(np.unique(self.pool.unit_ids()[eligible]))

    def dedupe_ordered(self, ordered: np.ndarray) -> np.ndarray:
        """``ordered`` (pool indices, priority order) without later members of a unit."""
        if not self.dedupes():
            return np.asarray(ordered, dtype=np.int64)
        return first_per_unit(self.pool.unit_ids(), ordered)

    def check_budget(self, available: int | None = None) -> None:
        """Raise :class:`BudgetError` when the budget exceeds what may be chosen."""
        size = len(self.pool) if available is None else available
        if self.budget > size:
            what = "the pool size" if available is None else "the eligible pool items"
            if self.dedupes():
                what += " (one per parallel key)"
            raise BudgetError(
                f"budget {self.budget} exceeds {what} ({size}); lower the budget "
                "or use the 'all' sampler"
            )

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)


@dataclass(frozen=True)
class SelectionReport:
    """What was chosen and why, in a form a person can read and a database row can store."""

    sampler: str
    target_language: str
    budget: int
    n_selected: int
    seed: int
    per_cluster: Mapping[int, int]
    per_language: Mapping[str, int]
    reason: str
    cluster_weights: Mapping[int, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampler": self.sampler,
            "target_language": self.target_language,
            "budget": self.budget,
            "n_selected": self.n_selected,
            "seed": self.seed,
            "per_cluster": {str(k): int(v) for k, v in self.per_cluster.items()},
            "per_language": {k: int(v) for k, v in self.per_language.items()},
            "reason": self.reason,
            "cluster_weights": {str(k): float(v) for k, v in self.cluster_weights.items()},
            "notes": list(self.notes),
            "params": json.loads(json.dumps(dict(self.params), default=str)),
        }

    def to_markdown(self, top: int = 15) -> str:
        lines = [
            f"# Selection for `{self.target_language}` — sampler `{self.sampler}`",
            "",
            f"{self.n_selected} items selected (budget {self.budget}, seed {self.seed}).",
            "",
            f"**Why:** {self.reason}",
            "",
        ]
        if self.notes:
            lines += ["**Notes:**", *[f"- {note}" for note in self.notes], ""]
        lines += ["## Per language", "", "| language | items | share |", "|---|---:|---:|"]
        total = max(1, self.n_selected)
        for lang, count in sorted(self.per_language.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"| {lang} | {count} | {count / total:.1%} |")
        lines += ["", "## Per cluster", "", "| cluster | items | weight |", "|---:|---:|---:|"]
        for cluster, count in sorted(self.per_cluster.items(), key=lambda kv: -kv[1])[:top]:
            weight = self.cluster_weights.get(cluster)
            shown = f"{weight:.4f}" if weight is not None else "—"
            lines.append(f"| {cluster} | {count} | {shown} |")
        if self.params:
            lines += ["", "## Parameters", "", "```json", json.dumps(self.to_dict()["params"])]
            lines += ["```"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True, eq=False)
class Selection:
    """Chosen pool indices (in priority order, no repeats) and the report that explains them."""

    indices: np.ndarray
    report: SelectionReport

    def records(self, pool: Pool) -> list[TextRecord]:
        if pool.records is None:
            raise DataError("this pool was built without records")
        return [pool.records[int(i)] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)


def summarise(
    request: SelectionRequest,
    indices: np.ndarray,
    *,
    sampler: str,
    reason: str,
    cluster_weights: Mapping[int, float] | None = None,
    notes: Sequence[str] = (),
    params: Mapping[str, Any] | None = None,
) -> Selection:
    """Build the :class:`Selection` with per-cluster and per-language counts (vectorised)."""
    chosen = np.asarray(indices, dtype=np.int64)
    pool = request.pool
    cluster_counts = np.bincount(pool.clusters[chosen], minlength=request.semantic_map.k)
    language_counts = np.bincount(pool.language_ids[chosen], minlength=len(pool.language_vocab))
    report = SelectionReport(
        sampler=sampler,
        target_language=request.target_language,
        budget=request.budget,
        n_selected=len(chosen),
        seed=request.seed,
        per_cluster={int(c): int(n) for c, n in enumerate(cluster_counts) if n},
        per_language={pool.language_vocab[i]: int(n) for i, n in enumerate(language_counts) if n},
        reason=reason,
        cluster_weights=dict(cluster_weights or {}),
        notes=tuple(notes),
        params=dict(params or {}),
    )
    return Selection(indices=chosen, report=report)


class Sampler(ABC):
    """Chooses auxiliary items for one target language."""

    name: ClassVar[str]

    @abstractmethod
    def select(self, request: SelectionRequest) -> Selection:
        """Return the selection and its report; deterministic under ``request.seed``."""

    def params(self) -> dict[str, Any]:
        """The sampler's parameters, recorded with every adapter version it produces."""
        return {}


_REGISTRY: dict[str, Callable[..., Sampler]] = {}


def register_sampler(name: str) -> Callable[[type[Sampler]], type[Sampler]]:
    """Class decorator: make a sampler available to :func:`get_sampler` under ``name``."""

    def decorate(cls: type[Sampler]) -> type[Sampler]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def get_sampler(name: str, **params: Any) -> Sampler:
    """The sampler registered as ``name`` (compass, linguistic, random, all, importance)."""
    import compass.core.samplers  # noqa: F401  (registers the built-in samplers)

    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise DataError(f"unknown sampler {name!r}; choose from {available_samplers()}") from None
    try:
        return factory(**params)
    except TypeError as exc:
        raise DataError(f"bad parameters for sampler {name!r}: {exc}") from None


def available_samplers() -> list[str]:
    import compass.core.samplers  # noqa: F401

    return sorted(_REGISTRY)
