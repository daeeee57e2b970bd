"""What the report shows, read from PostgreSQL only, through the public SQL interface
(docs/sql.md): the ``language_distribution``, ``drift_history`` and ``adapter_history`` views,
plus ``adapter_versions`` (reference distributions), ``semantic_maps`` (cluster labels) and
``dead_letters``.

:func:`read_history` returns a :class:`History` of plain frozen dataclasses; nothing here
plots. Times are UTC ``datetime``; shares are fractions of a window's assigned events.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from compass.core.cluster_labels import ClusterLabel


@dataclass(frozen=True)
class UsageCell:
    """Events of one (language, semantic map, counting window, cluster)."""

    language: str
    map_version: int
    window_start: datetime
    window_seconds: int
    cluster: int
    total: float
    sampled: int


@dataclass(frozen=True)
class DriftRow:
    """One recorded drift event and what came of it (``drift_history``)."""

    drift_id: str
    language: str
    window_start: datetime
    window_end: datetime
    statistic: float
    threshold: float
    p_value: float | None
    n_events: int
    n_sampled: int
    map_version: int | None
    reference_version: int | None
    top_changes: list[dict[str, Any]]
    detected_at: datetime
    job_status: str | None
    version: int | None
    version_status: str | None


@dataclass(frozen=True)
class VersionRow:
    """One adapter version (``adapter_history`` + its reference from ``adapter_versions``)."""

    language: str
    base_model: str
    version: int
    adapter_name: str
    status: str
    sampler: str
    sampler_params: dict[str, Any]
    metrics: dict[str, float]
    parent_version: int | None
    drift_id: str | None
    reference_distribution: dict[int, float]
    reference_counts: dict[int, float]
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    notes: str


@dataclass(frozen=True)
class DeadLetterCount:
    """Dead letters of one (source, stage, reason, language); ``language`` is read from the
    stored original message when it is a JSON object with one, else ``"?"``."""

    source: str
    stage: str
    reason: str
    language: str
    count: int


@dataclass(frozen=True)
class History:
    """Everything the report plots, for ``languages`` (sorted)."""

    languages: tuple[str, ...]
    usage: tuple[UsageCell, ...]
    drifts: tuple[DriftRow, ...]
    versions: tuple[VersionRow, ...]
    dead_letters: tuple[DeadLetterCount, ...]
    labels: dict[int, tuple[ClusterLabel, ...]] = field(default_factory=dict)
    """Cluster labels per semantic map version (empty for an unlabelled map)."""
    read_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def label(self, map_version: int | None, cluster: int) -> str:
        """``#c label`` for a cluster of a map, ``#c`` when the map has no label for it."""
        for item in self.labels.get(map_version or -1, ()):
            if item.cluster == cluster:
                return f"#{cluster} {item.title}"
        return f"#{cluster}"


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(UTC)


def _at(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _clusters(mapping: dict[str, Any] | None) -> dict[int, float]:
    return {int(k): float(v) for k, v in (mapping or {}).items()}


def read_history(conn: Connection, languages: Sequence[str] | None = None) -> History:
    """Read the report's data; ``languages`` defaults to every language with usage, drift or
    an adapter (sorted)."""
    wanted = list(languages) if languages else None
    usage = tuple(
        UsageCell(
            r.language,
            int(r.semantic_map_version),
            _at(r.window_start),
            int(r.window_seconds),
            int(r.cluster),
            float(r.total_count),
            int(r.sampled_count),
        )
        for r in conn.execute(
            text(
                "SELECT language, semantic_map_version, window_start, window_seconds, cluster, "
                "total_count, sampled_count FROM language_distribution "
                "WHERE cluster >= 0 AND (CAST(:langs AS text[]) IS NULL "
                "OR language = ANY(CAST(:langs AS text[]))) "
                "ORDER BY language, window_start, cluster"
            ),
            {"langs": wanted},
        )
    )
    drifts = tuple(
        DriftRow(
            drift_id=str(r.drift_id),
            language=r.language,
            window_start=_at(r.window_start),
            window_end=_at(r.window_end),
            statistic=float(r.statistic),
            threshold=float(r.threshold),
            p_value=None if r.p_value is None else float(r.p_value),
            n_events=int(r.n_events),
            n_sampled=int(r.n_sampled),
            map_version=r.semantic_map_version,
            reference_version=r.reference_version,
            top_changes=list(r.top_cluster_changes or []),
            detected_at=_at(r.detected_at),
            job_status=r.job_status,
            version=r.version,
            version_status=r.version_status,
        )
        for r in conn.execute(
            text(
                "SELECT * FROM drift_history WHERE (CAST(:langs AS text[]) IS NULL "
                "OR language = ANY(CAST(:langs AS text[]))) ORDER BY language, window_start"
            ),
            {"langs": wanted},
        )
    )
    versions = tuple(
        VersionRow(
            language=r.language,
            base_model=r.base_model,
            version=int(r.version),
            adapter_name=r.adapter_name,
            status=r.status,
            sampler=r.sampler,
            sampler_params=dict(r.sampler_params or {}),
            metrics={
                k: float(v) for k, v in (r.metrics or {}).items() if isinstance(v, int | float)
            },
            parent_version=r.parent_version,
            drift_id=None if r.drift_id is None else str(r.drift_id),
            reference_distribution=_clusters(r.reference_distribution),
            reference_counts=_clusters((r.reference_counts or {}).get("counts")),
            created_at=_at(r.created_at),
            activated_at=_utc(r.activated_at),
            retired_at=_utc(r.retired_at),
            notes=r.notes or "",
        )
        for r in conn.execute(
            text(
                "SELECT h.*, v.reference_distribution, v.reference_counts FROM adapter_history h "
                "JOIN adapter_versions v ON v.adapter_id = h.adapter_id AND v.number = h.version "
                "WHERE (CAST(:langs AS text[]) IS NULL OR h.language = ANY(CAST(:langs AS text[])))"
                " ORDER BY h.language, h.base_model, h.version"
            ),
            {"langs": wanted},
        )
    )
    labels = {
        int(r.version): tuple(
            ClusterLabel.from_dict(item) for item in (r.metadata or {}).get("labels") or ()
        )
        for r in conn.execute(text("SELECT version, metadata FROM semantic_maps"))
    }
    dead: dict[tuple[str, str, str, str], int] = {}
    for r in conn.execute(text("SELECT source, stage, reason, raw FROM dead_letters")):
        key = (r.source, r.stage, r.reason, _raw_language(bytes(r.raw or b"")))
        dead[key] = dead.get(key, 0) + 1
    dead_letters = tuple(DeadLetterCount(*key, count) for key, count in sorted(dead.items()))
    found = (
        {c.language for c in usage} | {d.language for d in drifts} | {v.language for v in versions}
    )
    return History(
        languages=tuple(sorted(wanted or found)),
        usage=usage,
        drifts=drifts,
        versions=versions,
        dead_letters=dead_letters,
        labels=labels,
    )


def _raw_language(raw: bytes) -> str:
    """The ``language`` of a dead-lettered message, when its bytes are a JSON object with a
    short string there; ``"?"`` otherwise (the message may be anything: that is why it is
    here)."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "?"
    language = value.get("language") if isinstance(value, dict) else None
    return language if isinstance(language, str) and 0 < len(language) <= 35 else "?"
