"""Storage interfaces of the core: abstract repositories, a unit of work, plain records.

The domain and the stream/worker code depend on these classes only; the SQL implementation
(:mod:`compass.sql.unit_of_work`) lives at the edge. Records are frozen dataclasses of Python
values (``datetime`` in UTC, ``uuid.UUID``, ``dict``), never SQLAlchemy rows.

A :class:`UnitOfWork` is one database transaction: everything done through its repositories is
kept only if :meth:`UnitOfWork.commit` is called before the ``with`` block ends; any exception or
a missing ``commit()`` rolls it all back. That is how a new adapter version and the outbox row
announcing it are written together or not at all.

Languages are canonical BCP-47 codes (``pt-BR``, see
:func:`compass.core.languages.normalize_language`): events are validated when decoded and records
when loaded, and the CLI normalises what a user types, so repositories take codes as they are
(``"pt_br"`` finds nothing stored under ``"pt-BR"``).
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self

from compass.core.events import DeadLetter, DriftEvent
from compass.core.naming import adapter_name as serving_name
from compass.core.semantic_map import SemanticMap
from compass.core.windows import ClusterCount
from compass.ports.adapter_events import AdapterAction, AdapterEventRecord

VersionStatus = Literal["candidate", "active", "rejected", "retired"]
JobStatus = Literal["queued", "running", "succeeded", "failed"]
VERSION_STATUSES: tuple[VersionStatus, ...] = ("candidate", "active", "rejected", "retired")
JOB_STATUSES: tuple[JobStatus, ...] = ("queued", "running", "succeeded", "failed")


# --------------------------------------------------------------------------- usage
class UsageObservation(NamedTuple):
    """One prompt event, counted once in its (language, cluster, window).

    ``sampled`` says the event was embedded and assigned ``cluster``; when the stream sheds load
    it counts a skipped event with ``sampled=False`` (its cluster is then
    :data:`compass.core.windows.UNASSIGNED_CLUSTER`, or an estimate) and ``weight`` lets one
    sampled event stand for several (``1 / sampling rate``) in ``total``.
    """

    event_id: str
    language: str
    cluster: int
    window_start: datetime
    window_seconds: int
    semantic_map_version: int
    sampled: bool = True
    weight: float = 1.0
    content_digest: bytes | None = None
    """SHA-256 of the event's content (:attr:`compass.core.events.PromptEvent.content_digest`),
    kept with its dedup row; ``None``: not checked (the id alone decides)."""


@dataclass(frozen=True)
class RecordedUsage:
    """What :meth:`UsageRepository.record_usage_checked` did: ``counted`` events were new;
    ``conflicts`` are the ids (in batch order) already seen with a *different* content digest —
    a re-used ``event_id``, not a redelivery: not counted, for the caller to dead-letter."""

    counted: int
    conflicts: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- semantic maps
@dataclass(frozen=True, eq=False)
class SemanticMapRecord:
    """A stored semantic map; ``version`` is the database's increasing number (the one usage
    counts and drift events refer to), ``semantic_map.version`` its content hash."""

    version: int
    semantic_map: SemanticMap
    active: bool
    created_at: datetime
    activated_at: datetime | None


# --------------------------------------------------------------------------- drift
@dataclass(frozen=True)
class DriftRecord:
    drift_id: uuid.UUID
    language: str
    window_start: datetime
    window_end: datetime
    statistic: float
    threshold: float
    p_value: float | None
    n_events: int
    n_sampled: int
    semantic_map_version: int | None
    reference_version: int | None
    top_cluster_changes: list[dict[str, Any]]
    detected_at: datetime


# --------------------------------------------------------------------------- adapters
@dataclass(frozen=True)
class AdapterRecord:
    """One adapter per (language, base model); its versions hold the weights."""

    adapter_id: int
    language: str
    base_model: str
    last_version: int
    created_at: datetime
    pinned_at: datetime | None = None
    """Set while pinned (``compass adapters pin``): candidates are recorded, not promoted."""
    pin_reason: str = ""

    @property
    def pinned(self) -> bool:
        return self.pinned_at is not None


@dataclass(frozen=True)
class ReferenceCounts:
    """The sample an adapter version was built for, kept so the drift detector can treat it as
    a sample (with its own noise) rather than exact shares.

    ``counts`` are the triggering window's *sampled* (embedded) events per cluster, ``n_sampled``
    their sum, ``n_events`` every event of the window, ``sample_rate`` the embedded share,
    ``blocks`` the window's ``(blocks, k)`` consecutive sub-window counts (the burstiness
    estimate's input; empty when unknown), ``dispersion`` the over-dispersion ``φ ≥ 1``
    estimated from them (1: independent events) and ``window_start``/``window_end`` the window's
    event-time bounds (UTC; where an embedding-based detector reads the reference's vectors).
    """

    counts: dict[int, float]
    n_sampled: int
    n_events: int
    sample_rate: float = 1.0
    blocks: list[list[float]] = field(default_factory=list)
    dispersion: float = 1.0
    window_start: datetime | None = None
    window_end: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``adapter_versions.reference_counts`` jsonb document (cluster keys as text)."""
        return {
            "counts": {str(k): float(v) for k, v in sorted(self.counts.items())},
            "n_sampled": int(self.n_sampled),
            "n_events": int(self.n_events),
            "sample_rate": float(self.sample_rate),
            "blocks": [[float(v) for v in row] for row in self.blocks],
            "dispersion": float(self.dispersion),
            "window_start": None if self.window_start is None else self.window_start.isoformat(),
            "window_end": None if self.window_end is None else self.window_end.isoformat(),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ReferenceCounts:
        """Inverse of :meth:`to_json`; raises :class:`KeyError`/:class:`ValueError` on a
        malformed document."""
        return cls(
            counts={int(k): float(v) for k, v in doc["counts"].items()},
            n_sampled=int(doc["n_sampled"]),
            n_events=int(doc.get("n_events", doc["n_sampled"])),
            sample_rate=float(doc.get("sample_rate", 1.0)),
            blocks=[[float(v) for v in row] for row in doc.get("blocks", [])],
            dispersion=float(doc.get("dispersion", 1.0)),
            window_start=_time_or_none(doc.get("window_start")),
            window_end=_time_or_none(doc.get("window_end")),
        )


def _time_or_none(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(str(value))


@dataclass(frozen=True)
class NewAdapterVersion:
    """What a worker knows once it has trained and evaluated a candidate."""

    artifact_uri: str
    artifact_sha256: str
    sampler: str
    sampler_params: dict[str, Any] = field(default_factory=dict)
    reference_distribution: dict[int, float] = field(default_factory=dict)
    reference_counts: ReferenceCounts | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    drift_id: uuid.UUID | None = None
    parent_version: int | None = None
    base_model_revision: str = ""
    manifest: dict[str, str] = field(default_factory=dict)
    peft_config: dict[str, Any] = field(default_factory=dict)
    training_seconds: float | None = None
    evaluation_seconds: float | None = None
    status: Literal["candidate", "rejected"] = "candidate"
    notes: str = ""


@dataclass(frozen=True)
class AdapterVersionRecord:
    version_id: int
    adapter_id: int
    language: str
    base_model: str
    number: int
    status: VersionStatus
    artifact_uri: str
    artifact_sha256: str
    sampler: str
    sampler_params: dict[str, Any]
    reference_distribution: dict[int, float]
    metrics: dict[str, float]
    drift_id: uuid.UUID | None
    parent_version: int | None
    base_model_revision: str
    manifest: dict[str, str]
    peft_config: dict[str, Any]
    training_seconds: float | None
    evaluation_seconds: float | None
    notes: str
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    reference_counts: ReferenceCounts | None = None
    """The reference as a sample (``None`` for versions written before migration 0004)."""
    trigger_n_sampled: int | None = None
    """Sampled events of the drift window that triggered the version (from its drift event),
    the fallback sample size of a version without ``reference_counts``."""

    @property
    def adapter_name(self) -> str:
        """The serving name, unique forever (engines cache by name): ``sw-v7-1a2b3c4d``, the
        language, the number and the first 8 hex of the manifest hash (``artifact_sha256``,
        :func:`compass.core.naming.adapter_name`)."""
        return serving_name(self.language, self.number, self.artifact_sha256)


@dataclass(frozen=True)
class TrainingJob:
    job_id: int
    drift_id: uuid.UUID
    language: str
    status: JobStatus
    worker: str | None
    lease_until: datetime | None
    attempts: int
    last_error: str | None
    version_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


# --------------------------------------------------------------------------- outbox, DLQ
@dataclass(frozen=True)
class OutboxMessage:
    message_id: int
    topic: str
    key: str
    payload: dict[str, Any]
    created_at: datetime
    published_at: datetime | None


@dataclass(frozen=True)
class PurgeResult:
    """Rows deleted per table by a retention purge."""

    processed_events: int
    usage_counts: int
    dead_letters: int
    outbox: int

    @property
    def total(self) -> int:
        return sum((self.processed_events, self.usage_counts, self.dead_letters, self.outbox))


class UsageRepository(abc.ABC):
    def record_usage(self, events: Sequence[UsageObservation]) -> int:
        """Count each event not seen before (by ``event_id``) in its (language, cluster, window,
        map version); redelivered events change nothing. Returns how many events were new."""
        return self.record_usage_checked(events).counted

    @abc.abstractmethod
    def record_usage_checked(self, events: Sequence[UsageObservation]) -> RecordedUsage:
        """:meth:`record_usage`, and the ids already seen whose stored content digest differs
        from the observation's (both known); within ``events`` the first of an id counts."""

    @abc.abstractmethod
    def reused_ids(self, events: Sequence[tuple[str, bytes]]) -> set[str]:
        """Of ``(event_id, content_digest)`` pairs, the ids already stored with *another*
        digest (a re-used ``event_id``); read-only, one indexed look-up. The stream asks before
        it embeds a sampled event, so a re-use never overwrites the first event's vector point
        (uuid5 of the id)."""

    @abc.abstractmethod
    def usage_distribution(
        self,
        language: str,
        since: datetime,
        until: datetime,
        semantic_map_version: int,
    ) -> dict[int, ClusterCount]:
        """Counts per cluster over windows starting in ``[since, until)``."""

    @abc.abstractmethod
    def languages_with_usage(self, since: datetime) -> list[str]:
        """Languages that have counts in windows starting at or after ``since``."""

    @abc.abstractmethod
    def usage_by_window(
        self,
        language: str,
        since: datetime,
        until: datetime,
        semantic_map_version: int,
    ) -> dict[datetime, dict[int, ClusterCount]]:
        """Counts per window start and cluster over windows starting in ``[since, until)``
        (the stream's drift check: window sizes, reference blocks), oldest first."""


class SemanticMapRepository(abc.ABC):
    @abc.abstractmethod
    def save_semantic_map(
        self, semantic_map: SemanticMap, *, activate: bool = True
    ) -> SemanticMapRecord:
        """Store a map (idempotent on its content hash) and optionally make it the active one."""

    @abc.abstractmethod
    def active_semantic_map(self) -> SemanticMapRecord | None: ...

    @abc.abstractmethod
    def get_semantic_map(self, version: int) -> SemanticMapRecord | None: ...


class DriftRepository(abc.ABC):
    @abc.abstractmethod
    def record_drift_event(self, event: DriftEvent) -> bool:
        """Store a drift event; ``False`` (and nothing written) if its ``drift_id`` or its
        (language, window_start) is already stored."""

    @abc.abstractmethod
    def last_drift_event(self, language: str) -> DriftRecord | None:
        """The most recent drift of a language (by ``detected_at``), for cooldowns."""


class AdapterRepository(abc.ABC):
    @abc.abstractmethod
    def get_or_create_adapter(self, language: str, base_model: str) -> AdapterRecord:
        """The adapter of (language, base model), created on first use; raises
        :class:`~compass.core.errors.DataError` on an empty base model."""

    @abc.abstractmethod
    def create_version(self, adapter_id: int, version: NewAdapterVersion) -> AdapterVersionRecord:
        """Write the next version (number = previous + 1, no gaps even with concurrent writers:
        the adapter row stays locked until this transaction ends)."""

    @abc.abstractmethod
    def activate_version(self, adapter_id: int, number: int) -> AdapterVersionRecord:
        """Make a candidate (or a retired version) the live one; the previous active one becomes
        ``retired`` in the same transaction. Raises :class:`~compass.core.errors.DataError` for
        a missing or rejected version."""

    @abc.abstractmethod
    def active_version(self, language: str, base_model: str) -> AdapterVersionRecord | None:
        """The live version of (language, base model), ``None`` before the first activation."""

    # ---- lifecycle (issue 11); pins and retirements lock the adapter row
    @abc.abstractmethod
    def list_adapters(self) -> list[AdapterRecord]: ...  # by language, then base model

    @abc.abstractmethod
    def get_adapter(self, language: str, base_model: str) -> AdapterRecord | None: ...

    @abc.abstractmethod
    def list_versions(self, adapter_id: int) -> list[AdapterVersionRecord]: ...  # by number

    @abc.abstractmethod
    def get_version(self, adapter_id: int, number: int) -> AdapterVersionRecord | None: ...

    @abc.abstractmethod
    def retire_version(self, adapter_id: int, number: int) -> AdapterVersionRecord:
        """Mark a candidate ``retired`` (a retired one stays so); :class:`DataError` for a
        missing, active or rejected version."""

    @abc.abstractmethod
    def set_pinned(self, adapter_id: int, pinned: bool, reason: str = "") -> AdapterRecord:
        """Pin (``pinned_at`` = now) or unpin; :class:`DataError` for a missing adapter."""

    @abc.abstractmethod
    def record_event(
        self,
        adapter_id: int,
        action: AdapterAction,
        *,
        version: int | None = None,
        reason: str = "",
        actor: str = "",
    ) -> AdapterEventRecord:
        """Append one lifecycle change to the adapter's history (``adapter_events``)."""

    @abc.abstractmethod
    def list_events(self, adapter_id: int) -> list[AdapterEventRecord]: ...  # oldest first


class JobRepository(abc.ABC):
    @abc.abstractmethod
    def claim_job(
        self,
        drift_id: uuid.UUID,
        worker: str,
        lease: timedelta,
        *,
        max_attempts: int | None = None,
    ) -> TrainingJob | None:
        """Create the job of a drift event if needed and claim it for ``lease``; ``None`` when
        another worker holds a live lease or the job is finished. One job per drift event.

        A claim over an expired lease records ``lease of <worker> expired`` as the last error.
        With ``max_attempts``, a claimable job that has used them all becomes ``failed``
        instead (its last error kept) and ``None`` is returned."""

    @abc.abstractmethod
    def renew_lease(self, job_id: int, worker: str, lease: timedelta) -> bool:
        """Extend ``worker``'s lease on its running job to now + ``lease``; ``False`` when the
        job is no longer held by ``worker`` (finished, or expired and taken by another)."""

    @abc.abstractmethod
    def get_job(self, drift_id: uuid.UUID) -> TrainingJob | None:
        """The job of a drift event, ``None`` before it was first claimed."""

    @abc.abstractmethod
    def complete_job(self, job_id: int, worker: str, version_id: int | None) -> None: ...

    @abc.abstractmethod
    def fail_job(self, job_id: int, worker: str, error: str, *, retry: bool = True) -> None:
        """Record ``error``; with ``retry`` the job is queued again, else it is ``failed``."""

    @abc.abstractmethod
    def release_job(self, job_id: int, worker: str, reason: str) -> None:
        """Give ``worker``'s running job back unfinished, without spending an attempt: queued
        again (claimable at once), its lease cleared, ``attempts`` one less (the claim that
        ended here is not counted) and ``reason`` kept as its last error. For a cooperative stop
        only; a job that crashed goes through :meth:`fail_job` (or its lease expires) and keeps
        its attempt. :class:`DataError` when the job is no longer held by ``worker``."""


class OutboxRepository(abc.ABC):
    @abc.abstractmethod
    def add_outbox(self, topic: str, key: str, payload: Mapping[str, Any]) -> int:
        """Queue a message in this transaction; a relay publishes it after commit."""

    @abc.abstractmethod
    def unpublished_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        """Oldest unpublished messages, locked (``SKIP LOCKED``) until this transaction ends so
        two relays do not publish the same batch at once."""

    @abc.abstractmethod
    def mark_published(self, message_ids: Sequence[int]) -> int: ...


class DeadLetterRepository(abc.ABC):
    @abc.abstractmethod
    def record_dead_letter(self, letter: DeadLetter) -> bool:
        """Keep a rejected message; ``False`` if the same (source, partition, offset) is
        already stored (a redelivery)."""

    def record_dead_letters(self, letters: Sequence[DeadLetter]) -> int:
        """Keep several (in one statement where the store can); how many were new."""
        return sum(self.record_dead_letter(letter) for letter in letters)


class MaintenanceRepository(abc.ABC):
    @abc.abstractmethod
    def purge(self, older_than: timedelta, *, dry_run: bool = False) -> PurgeResult:
        """Delete dedup rows, usage counts, dead letters and published outbox rows older than
        ``older_than``."""

    @abc.abstractmethod
    def scrub_sample_texts(self, digests: Set[str], *, dry_run: bool = False) -> int:
        """Drop drift sample texts whose SHA-256 is in ``digests`` (drift rows, outbox)."""


# =========================================================================== unit of work
class UnitOfWork(abc.ABC):
    """One transaction over every repository; rolled back unless :meth:`commit` is called."""

    usage: UsageRepository
    semantic_maps: SemanticMapRepository
    drift: DriftRepository
    adapters: AdapterRepository
    jobs: JobRepository
    outbox: OutboxRepository
    dead_letters: DeadLetterRepository
    maintenance: MaintenanceRepository

    def __enter__(self) -> Self:
        self._begin()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.rollback()  # a no-op after commit()
        finally:
            self._end()

    @abc.abstractmethod
    def _begin(self) -> None: ...

    @abc.abstractmethod
    def _end(self) -> None: ...

    @abc.abstractmethod
    def commit(self) -> None: ...

    @abc.abstractmethod
    def rollback(self) -> None: ...


class UnitOfWorkFactory(abc.ABC):
    """Makes units of work; the thing long-lived components (agents, workers) hold."""

    @abc.abstractmethod
    def __call__(self) -> UnitOfWork: ...
