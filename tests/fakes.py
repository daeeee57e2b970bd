"""In-memory fakes of the ports, for fast unit tests only (integration tests use PostgreSQL,
Qdrant Edge and the broker).

:class:`MemoryStore` is a unit-of-work factory over dicts: a unit of work works on a copy of the
committed state and writes it back on ``commit()``, so rollback and a missing commit behave as in
:mod:`compass.sql.unit_of_work`. It keeps the guarantees the loop relies on (each event counted
once, one drift event per window, one job per drift event with a lease, numbered versions with
one live version, outbox in order) but not PostgreSQL's locking. :class:`MemoryVectorStore`
(:mod:`tests.fake_vector_store`) holds points in a dict and searches by cosine similarity.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from compass.core.errors import DataError
from compass.core.events import DeadLetter, DriftEvent
from compass.core.semantic_map import SemanticMap
from compass.ports import storage as ports
from compass.ports.storage import (
    AdapterRecord,
    AdapterVersionRecord,
    ClusterCount,
    DriftRecord,
    NewAdapterVersion,
    OutboxMessage,
    PurgeResult,
    SemanticMapRecord,
    TrainingJob,
    UsageObservation,
)

_UsageKey = tuple[str, datetime, int, int, int]  # language, window start, seconds, map, cluster


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class MemoryState:
    """Everything a :class:`MemoryStore` holds; tests may read it directly."""

    processed: dict[str, datetime] = field(default_factory=dict)
    digests: dict[str, bytes] = field(default_factory=dict)
    usage: dict[_UsageKey, ClusterCount] = field(default_factory=dict)
    maps: dict[int, SemanticMapRecord] = field(default_factory=dict)
    drift: dict[uuid.UUID, DriftRecord] = field(default_factory=dict)
    adapters: dict[int, AdapterRecord] = field(default_factory=dict)
    versions: dict[int, AdapterVersionRecord] = field(default_factory=dict)
    adapter_events: list[ports.AdapterEventRecord] = field(default_factory=list)
    jobs: dict[uuid.UUID, TrainingJob] = field(default_factory=dict)
    outbox: dict[int, OutboxMessage] = field(default_factory=dict)
    dead_letters: dict[object, DeadLetter] = field(default_factory=dict)
    last_id: int = 0

    def next_id(self) -> int:
        self.last_id += 1
        return self.last_id


class _Repository:
    def __init__(self, state: MemoryState) -> None:
        self.s = state


class MemoryUsageRepository(_Repository, ports.UsageRepository):
    def record_usage_checked(self, events: Sequence[UsageObservation]) -> ports.RecordedUsage:
        new, conflicts = 0, []
        for event in events:
            if event.event_id in self.s.processed:
                seen = self.s.digests.get(event.event_id)
                if seen is not None and event.content_digest not in (None, seen):
                    conflicts.append(event.event_id)
                continue
            if event.content_digest is not None:
                self.s.digests[event.event_id] = event.content_digest
            if not 0.0 < event.weight < float("inf"):
                raise DataError(f"event {event.event_id}: weight must be positive")
            self.s.processed[event.event_id] = _now()
            key = (
                event.language,
                event.window_start,
                event.window_seconds,
                event.semantic_map_version,
                event.cluster,
            )
            total, sampled = self.s.usage.get(key, ClusterCount(0.0, 0))
            self.s.usage[key] = ClusterCount(total + event.weight, sampled + int(event.sampled))
            new += 1
        return ports.RecordedUsage(new, conflicts)

    def reused_ids(self, events: Sequence[tuple[str, bytes]]) -> set[str]:
        return {
            i for i, d in events if self.s.digests.get(i) is not None and self.s.digests[i] != d
        }

    def usage_distribution(
        self, language: str, since: datetime, until: datetime, semantic_map_version: int
    ) -> dict[int, ClusterCount]:
        out: dict[int, ClusterCount] = {}
        for counts in self.usage_by_window(language, since, until, semantic_map_version).values():
            for cluster, (total, sampled) in counts.items():
                before = out.get(cluster, ClusterCount(0.0, 0))
                out[cluster] = ClusterCount(before.total + total, before.sampled + sampled)
        return dict(sorted(out.items()))

    def languages_with_usage(self, since: datetime) -> list[str]:
        return sorted({key[0] for key in self.s.usage if key[1] >= since})

    def usage_by_window(
        self, language: str, since: datetime, until: datetime, semantic_map_version: int
    ) -> dict[datetime, dict[int, ClusterCount]]:
        out: dict[datetime, dict[int, ClusterCount]] = {}
        for (lang, start, _, version, cluster), count in sorted(self.s.usage.items()):
            if lang == language and version == semantic_map_version and since <= start < until:
                before = out.setdefault(start, {}).get(cluster, ClusterCount(0.0, 0))
                out[start][cluster] = ClusterCount(
                    before.total + count.total, before.sampled + count.sampled
                )
        return out


class MemorySemanticMapRepository(_Repository, ports.SemanticMapRepository):
    def save_semantic_map(
        self, semantic_map: SemanticMap, *, activate: bool = True
    ) -> SemanticMapRecord:
        found = next(
            (r for r in self.s.maps.values() if r.semantic_map.version == semantic_map.version),
            None,
        )
        if found is None:
            version = max(self.s.maps, default=0) + 1
            found = SemanticMapRecord(version, semantic_map, False, _now(), None)
            self.s.maps[version] = found
        if activate and not found.active:
            for number, record in self.s.maps.items():
                self.s.maps[number] = replace(record, active=False)
            found = self.s.maps[found.version] = replace(found, active=True, activated_at=_now())
        return found

    def active_semantic_map(self) -> SemanticMapRecord | None:
        return next((r for r in self.s.maps.values() if r.active), None)

    def get_semantic_map(self, version: int) -> SemanticMapRecord | None:
        return self.s.maps.get(version)


class MemoryDriftRepository(_Repository, ports.DriftRepository):
    def record_drift_event(self, event: DriftEvent) -> bool:
        taken = any(
            d.language == event.language and d.window_start == event.window_start
            for d in self.s.drift.values()
        )
        if event.drift_id in self.s.drift or taken:
            return False
        fields = event.model_dump(exclude={"schema_version", "top_cluster_changes"})
        changes = [c.model_dump(mode="json") for c in event.top_cluster_changes]
        self.s.drift[event.drift_id] = DriftRecord(**fields, top_cluster_changes=changes)
        return True

    def last_drift_event(self, language: str) -> DriftRecord | None:
        mine = [d for d in self.s.drift.values() if d.language == language]
        return max(mine, key=lambda d: d.detected_at, default=None)


class MemoryAdapterRepository(_Repository, ports.AdapterRepository):
    def get_or_create_adapter(self, language: str, base_model: str) -> AdapterRecord:
        if not base_model:
            raise DataError("base model is empty")
        for adapter in self.s.adapters.values():
            if (adapter.language, adapter.base_model) == (language, base_model):
                return adapter
        adapter_id = self.s.next_id()
        self.s.adapters[adapter_id] = AdapterRecord(adapter_id, language, base_model, 0, _now())
        return self.s.adapters[adapter_id]

    def create_version(self, adapter_id: int, version: NewAdapterVersion) -> AdapterVersionRecord:
        adapter = self.s.adapters[adapter_id]
        if version.drift_id is not None and any(
            v.drift_id == version.drift_id for v in self.s.versions.values()
        ):
            raise DataError(f"drift event {version.drift_id} already has a version")
        adapter = self.s.adapters[adapter_id] = replace(
            adapter, last_version=adapter.last_version + 1
        )
        values: dict[str, Any] = copy.deepcopy(vars(version))
        record = AdapterVersionRecord(
            version_id=self.s.next_id(),
            adapter_id=adapter_id,
            language=adapter.language,
            base_model=adapter.base_model,
            number=adapter.last_version,
            created_at=_now(),
            activated_at=None,
            retired_at=None,
            **values,
        )
        self.s.versions[record.version_id] = record
        return record

    def activate_version(self, adapter_id: int, number: int) -> AdapterVersionRecord:
        mine = {v.number: v for v in self.s.versions.values() if v.adapter_id == adapter_id}
        target = mine.get(number)
        if target is None:
            raise DataError(f"adapter {adapter_id} has no version {number}")
        if target.status == "active":
            return target
        if target.status not in ("candidate", "retired"):
            raise DataError(f"version {number} of adapter {adapter_id} is {target.status}")
        for v in mine.values():
            if v.status == "active":
                self.s.versions[v.version_id] = replace(v, status="retired", retired_at=_now())
        live = replace(target, status="active", activated_at=_now(), retired_at=None)
        self.s.versions[target.version_id] = live
        return live

    def active_version(self, language: str, base_model: str) -> AdapterVersionRecord | None:
        return next(
            (
                v
                for v in self.s.versions.values()
                if (v.language, v.base_model, v.status) == (language, base_model, "active")
            ),
            None,
        )

    def list_adapters(self) -> list[AdapterRecord]:
        return sorted(self.s.adapters.values(), key=lambda a: (a.language, a.base_model))

    def get_adapter(self, language: str, base_model: str) -> AdapterRecord | None:
        return next(
            (
                a
                for a in self.s.adapters.values()
                if (a.language, a.base_model) == (language, base_model)
            ),
            None,
        )

    def list_versions(self, adapter_id: int) -> list[AdapterVersionRecord]:
        mine = [v for v in self.s.versions.values() if v.adapter_id == adapter_id]
        return sorted(mine, key=lambda v: v.number)

    def get_version(self, adapter_id: int, number: int) -> AdapterVersionRecord | None:
        return next((v for v in self.list_versions(adapter_id) if v.number == number), None)

    def retire_version(self, adapter_id: int, number: int) -> AdapterVersionRecord:
        target = self.get_version(adapter_id, number)
        if target is None:
            raise DataError(f"adapter {adapter_id} has no version {number}")
        if target.status == "retired":
            return target
        if target.status != "candidate":
            raise DataError(f"version {number} of adapter {adapter_id} is {target.status}")
        retired = replace(target, status="retired", retired_at=_now())
        self.s.versions[target.version_id] = retired
        return retired

    def set_pinned(self, adapter_id: int, pinned: bool, reason: str = "") -> AdapterRecord:
        adapter = self.s.adapters.get(adapter_id)
        if adapter is None:
            raise DataError(f"adapter {adapter_id} does not exist")
        at = (adapter.pinned_at or _now()) if pinned else None
        adapter = replace(adapter, pinned_at=at, pin_reason=reason if pinned else "")
        self.s.adapters[adapter_id] = adapter
        return adapter

    def record_event(
        self,
        adapter_id: int,
        action: ports.AdapterAction,
        *,
        version: int | None = None,
        reason: str = "",
        actor: str = "",
    ) -> ports.AdapterEventRecord:
        event = ports.AdapterEventRecord(
            self.s.next_id(), adapter_id, version, action, reason, actor, _now()
        )
        self.s.adapter_events.append(event)
        return event

    def list_events(self, adapter_id: int) -> list[ports.AdapterEventRecord]:
        return [e for e in self.s.adapter_events if e.adapter_id == adapter_id]


class MemoryJobRepository(_Repository, ports.JobRepository):
    def claim_job(
        self,
        drift_id: uuid.UUID,
        worker: str,
        lease: timedelta,
        *,
        max_attempts: int | None = None,
    ) -> TrainingJob | None:
        if not worker or lease <= timedelta(0):
            raise DataError("a claim needs a worker name and a positive lease")
        job = self.s.jobs.get(drift_id)
        if job is None:
            drift = self.s.drift.get(drift_id)
            if drift is None:
                raise DataError(f"drift event {drift_id} is not stored; record it before its job")
            job = TrainingJob(
                self.s.next_id(), drift_id, drift.language, "queued", None, None, 0, None, None,
                _now(), None, None,
            )  # fmt: skip
        now = _now()
        expired = job.status == "running" and job.lease_until is not None and job.lease_until < now
        if job.status != "queued" and not expired:
            self.s.jobs[drift_id] = job
            return None
        last_error = f"lease of {job.worker} expired" if expired else job.last_error
        if max_attempts is not None and job.attempts >= max_attempts:
            self.s.jobs[drift_id] = replace(
                job, status="failed", last_error=last_error, lease_until=None, finished_at=now
            )
            return None
        job = replace(
            job, status="running", worker=worker, lease_until=now + lease, last_error=last_error,
            attempts=job.attempts + 1, started_at=now, finished_at=None,
        )  # fmt: skip
        self.s.jobs[drift_id] = job
        return job

    def renew_lease(self, job_id: int, worker: str, lease: timedelta) -> bool:
        for job in self.s.jobs.values():
            if job.job_id == job_id and job.worker == worker and job.status == "running":
                self.s.jobs[job.drift_id] = replace(job, lease_until=_now() + lease)
                return True
        return False

    def get_job(self, drift_id: uuid.UUID) -> TrainingJob | None:
        return self.s.jobs.get(drift_id)

    def _held(self, job_id: int, worker: str) -> TrainingJob:
        for job in self.s.jobs.values():
            if job.job_id == job_id and job.worker == worker and job.status == "running":
                return job
        raise DataError(f"job {job_id} is not held by {worker!r} (lease lost?)")

    def complete_job(self, job_id: int, worker: str, version_id: int | None) -> None:
        job = self._held(job_id, worker)
        self.s.jobs[job.drift_id] = replace(
            job, status="succeeded", finished_at=_now(), lease_until=None,
            version_id=version_id, last_error=None,
        )  # fmt: skip

    def fail_job(self, job_id: int, worker: str, error: str, *, retry: bool = True) -> None:
        job = self._held(job_id, worker)
        self.s.jobs[job.drift_id] = replace(
            job, status="queued" if retry else "failed", lease_until=None,
            last_error=error[:4000], finished_at=None if retry else _now(),
        )  # fmt: skip

    def release_job(self, job_id: int, worker: str, reason: str) -> None:
        job = self._held(job_id, worker)
        self.s.jobs[job.drift_id] = replace(
            job, status="queued", lease_until=None, attempts=max(job.attempts - 1, 0),
            last_error=reason[:4000], finished_at=None,
        )  # fmt: skip


class MemoryOutboxRepository(_Repository, ports.OutboxRepository):
    def add_outbox(self, topic: str, key: str, payload: Mapping[str, Any]) -> int:
        if not topic:
            raise DataError("outbox topic is empty")
        message_id = self.s.next_id()
        self.s.outbox[message_id] = OutboxMessage(
            message_id, topic, key, copy.deepcopy(dict(payload)), _now(), None
        )
        return message_id

    def unpublished_outbox(self, limit: int = 100) -> list[OutboxMessage]:
        waiting = [m for m in self.s.outbox.values() if m.published_at is None]
        return sorted(waiting, key=lambda m: m.message_id)[:limit]

    def mark_published(self, message_ids: Sequence[int]) -> int:
        marked = 0
        for message_id in message_ids:
            message = self.s.outbox.get(message_id)
            if message is not None and message.published_at is None:
                self.s.outbox[message_id] = replace(message, published_at=_now())
                marked += 1
        return marked


class MemoryDeadLetterRepository(_Repository, ports.DeadLetterRepository):
    def record_dead_letter(self, letter: DeadLetter) -> bool:
        key: object = (letter.source_topic, letter.partition, letter.offset)
        if letter.partition is None or letter.offset is None:
            key = uuid.uuid4()  # without a position every letter is new
        if key in self.s.dead_letters:
            return False
        self.s.dead_letters[key] = letter
        return True


class MemoryMaintenanceRepository(_Repository, ports.MaintenanceRepository):
    def scrub_sample_texts(self, digests: AbstractSet[str], *, dry_run: bool = False) -> int:
        return 0  # the fake keeps no drift sample texts

    def purge(self, older_than: timedelta, *, dry_run: bool = False) -> PurgeResult:
        if older_than <= timedelta(0):
            raise DataError(f"retention must be positive, got {older_than}")
        cutoff = _now() - older_than
        gone: dict[str, list[Any]] = {
            "processed_events": [k for k, at in self.s.processed.items() if at < cutoff],
            "usage_counts": [k for k in self.s.usage if k[1] < cutoff],
            "dead_letters": [k for k, d in self.s.dead_letters.items() if d.received_at < cutoff],
            "outbox": [
                k
                for k, m in self.s.outbox.items()
                if m.published_at is not None and m.published_at < cutoff
            ],
        }
        if not dry_run:
            tables: dict[str, dict[Any, Any]] = {
                "processed_events": self.s.processed,
                "usage_counts": self.s.usage,
                "dead_letters": self.s.dead_letters,
                "outbox": self.s.outbox,
            }
            for name, keys in gone.items():
                for key in keys:
                    del tables[name][key]
            for key in gone["processed_events"]:
                self.s.digests.pop(key, None)
        return PurgeResult(**{name: len(keys) for name, keys in gone.items()})


class MemoryUnitOfWork(ports.UnitOfWork):
    """One transaction over a copy of the store's state; ``commit()`` publishes the copy."""

    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self.state: MemoryState | None = None

    def _bind(self) -> None:
        state = self.state = copy.deepcopy(self._store.state)
        self.usage = MemoryUsageRepository(state)
        self.semantic_maps = MemorySemanticMapRepository(state)
        self.drift = MemoryDriftRepository(state)
        self.adapters = MemoryAdapterRepository(state)
        self.jobs = MemoryJobRepository(state)
        self.outbox = MemoryOutboxRepository(state)
        self.dead_letters = MemoryDeadLetterRepository(state)
        self.maintenance = MemoryMaintenanceRepository(state)

    def _begin(self) -> None:
        self._bind()

    def _end(self) -> None:
        self.state = None

    def commit(self) -> None:
        assert self.state is not None, "unit of work used outside its 'with' block"
        self._store.state = self.state
        self._bind()

    def rollback(self) -> None:
        self._bind()


class MemoryStore(ports.UnitOfWorkFactory):
    """A unit-of-work factory over one in-memory :class:`MemoryState`."""

    def __init__(self) -> None:
        self.state = MemoryState()

    def __call__(self) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self)
