"""The adapter worker: one drift event in, at most one evaluated adapter version out.

For a drift event it claims the training job (one per drift event, leased), turns the drifted
window's usage counts and the live adapter's reference distribution into a COMPASS selection
from the auxiliary pool, continues the live adapter on it (replay + EWC, COMPASS-ECDA) or trains
the first one, evaluates candidate and live adapter on the new usage and on the old, and writes
the version, its promotion and the ``adapter-updated`` outbox row in one transaction.

The promotion decision is :class:`compass.core.gate.PromotionGate`'s, a paired bootstrap over
held-out texts of the window that the selection never saw (:mod:`workers.held_out`); its
intervals are stored with the version's metrics (``gate_*``). A candidate that fails is stored
as ``rejected`` with its metrics, so the history shows why nothing changed. Continual updates
replay the parent's training texts stratified by their clusters, in proportion to the parent's
reference distribution. Results are typed end to end: :class:`Evaluation` (the held-out losses
and timings), :class:`TrainingOutcome` (the saved version and its PEFT settings, from the training
config) and :class:`WorkerOutcome`. A stop (SIGTERM) ends a job between steps (workers.stopping).
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import structlog

from compass import metrics
from compass.core.distributions import counts_vector
from compass.core.errors import DataError
from compass.core.events import DriftEvent
from compass.core.gate import GateDecision, PairedLosses, PromotionGate, finite_metrics
from compass.core.naming import announcement_id, manifest_sha256
from compass.core.samplers.base import Pool, Sampler, SelectionRequest
from compass.core.semantic_map import SemanticMap
from compass.lifecycle import announcement
from compass.lm.artifact_store import (
    read_training_clusters,
    read_training_texts,
    write_training_texts,
)
from compass.lm.training.config import AdapterTrainingConfig, PeftSettings
from compass.ports.artifacts import ArtifactStore
from compass.ports.storage import (
    AdapterRecord,
    AdapterVersionRecord,
    NewAdapterVersion,
    ReferenceCounts,
    UnitOfWork,
)
from workers.held_out import (
    UsageText,
    held_out_sample,
    reference_counts,
    weights_dtype,
    without_held_out,
)
from workers.leases import LeaseKeeper
from workers.stopping import Checkpoint, JobStopped, give_back

log = structlog.get_logger(__name__)


class UsageTexts(Protocol):
    """Recent prompts of a language with their clusters (for the gate's held-out texts),
    newest first; with ``semantic_map_version``, only events embedded under that map."""

    def items(
        self,
        language: str,
        since: datetime,
        until: datetime,
        limit: int,
        *,
        semantic_map_version: int | None = None,
    ) -> list[UsageText]: ...


@dataclass(frozen=True)
class WorkerSettings:
    """What one worker does per drift event (the sampler and the artifact store are services,
    passed to :class:`AdapterWorker` by :func:`compass.bootstrap.bootstrap`)."""

    base_model_id: str
    data_dir: Path
    topic_adapter_updated: str = "adapter-updated"
    budget: int = 96
    seed: int = 0
    training: AdapterTrainingConfig = field(
        default_factory=lambda: AdapterTrainingConfig(steps=24, batch_size=8, max_length=64)
    )
    eval_texts: int = 64  # held-out texts per window for the gate (kept out of the selection)
    window_texts: int = 5000  # texts of a window read to draw the held-out sample from
    lease: timedelta = timedelta(minutes=2)  # renewed every third while the job runs
    max_attempts: int | None = 3  # claims of one job before it is marked failed
    gate: PromotionGate = field(default_factory=PromotionGate)
    worker_name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


@dataclass(frozen=True)
class Evaluation:
    """Candidate and live adapter on held-out usage: losses in nats per token (``new``: the
    drifted window, ``old``: the window before it), seconds, and how many texts."""

    live_new_loss: float
    live_old_loss: float
    candidate_new_loss: float
    candidate_old_loss: float
    training_seconds: float
    evaluation_seconds: float
    train_final_loss: float
    n_train_texts: int
    n_eval_new: int
    n_eval_old: int

    def metrics(self) -> dict[str, float]:
        """The version's ``metrics`` record and the announcement's: every *finite* value as a
        float. NaN and ±∞ (a diverged run) are left out — ``jsonb`` and the announcement's
        schema reject them — and :meth:`non_finite` names them for the version's notes."""
        return finite_metrics(asdict(self))[0]

    def non_finite(self) -> list[str]:
        """Names of the metrics that are NaN or ±∞ (sorted; empty for a sound run)."""
        return finite_metrics(asdict(self))[1]


@dataclass(frozen=True)
class TrainingOutcome:
    """A candidate saved in the artifact store, evaluated, with its PEFT settings."""

    folder: Path
    manifest: dict[str, str]
    manifest_sha256: str
    base_model_revision: str
    peft: PeftSettings
    evaluation: Evaluation
    paired: PairedLosses


@dataclass(frozen=True)
class SelectedData:
    """The selection step of one drift event: the adapter it updates and its live version, the
    drift window's usage counts per cluster (``target``, ``(k,)`` of the event's semantic map),
    the chosen pool texts and the sampler's report (``per_cluster``, ``per_language``), and the
    window as a sample (``reference``: what the version's drift reference will be), and the
    chosen texts' clusters."""

    adapter: AdapterRecord
    live: AdapterVersionRecord | None
    target: np.ndarray
    texts: list[str]
    report: dict[str, Any]
    reference: ReferenceCounts | None = None
    clusters: tuple[int, ...] = ()


@dataclass(frozen=True)
class WorkerOutcome:
    """What became of one drift event; ``evaluation`` and ``decision`` for a recorded version."""

    drift_id: uuid.UUID
    status: Literal["skipped", "promoted", "rejected", "failed", "stopped"]
    version: int | None = None
    evaluation: Evaluation | None = None
    decision: GateDecision | None = None
    reason: str = ""


class AdapterWorker:
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        pool: Pool,
        usage_texts: UsageTexts,
        settings: WorkerSettings,
        *,
        sampler: Sampler,
        artifacts: ArtifactStore,
    ) -> None:
        if pool.records is None:
            raise DataError("the worker's auxiliary pool needs its records (texts)")
        self._uow_factory = uow_factory
        self._pool = pool
        self._usage = usage_texts
        self._sampler = sampler
        self._artifacts = artifacts
        self.settings = settings
        self._base: Any = None

    # ------------------------------------------------------------------ the job
    def handle(self, drift: DriftEvent, stop: threading.Event | None = None) -> WorkerOutcome:
        """Claim and run the drift event's job; once ``stop`` is set, give it back unwritten."""
        s = self.settings
        with self._uow_factory() as uow:
            # the streams app records a drift event before publishing it; recording it again
            # (a no-op then) lets drift events from other producers reach the worker too
            uow.drift.record_drift_event(drift)
            job = uow.jobs.claim_job(
                drift.drift_id, s.worker_name, s.lease, max_attempts=s.max_attempts
            )
            uow.commit()
        if job is None:
            log.info("worker.job_skipped", drift_id=str(drift.drift_id))
            return WorkerOutcome(drift.drift_id, "skipped", reason="claimed or finished")
        try:
            with LeaseKeeper(self._uow_factory, job.job_id, s.worker_name, s.lease):
                outcome = self._run(drift, job.job_id, Checkpoint(stop))
        except JobStopped as stopped:
            self._base = None  # a stopped training may have left LoRA layers on the base model
            give_back(self._uow_factory, job.job_id, s.worker_name, stopped)
            return WorkerOutcome(drift.drift_id, "stopped", reason=str(stopped))
        except Exception as exc:
            metrics.job_stage("idle")
            with self._uow_factory() as uow:
                uow.jobs.fail_job(job.job_id, s.worker_name, f"{type(exc).__name__}: {exc}")
                uow.commit()
            log.exception("worker.job_failed", drift_id=str(drift.drift_id))
            return WorkerOutcome(drift.drift_id, "failed", reason=str(exc))
        return outcome

    def select(self, drift: DriftEvent, held_out: Sequence[UsageText] = ()) -> SelectedData:
        """The data a drift event's adapter update trains on: the window's usage counts (from
        the database, on the event's semantic map) as the target, the live adapter's reference
        distribution as the coverage, and the sampler's choice from the pool for them.

        ``held_out`` (the gate's texts of the window) are subtracted from the counts the sampler
        sees. Creates the adapter row of (language, base model) on first use; raises
        :class:`DataError` without a stored semantic map or without usage in the window."""
        s = self.settings
        with self._uow_factory() as uow:
            record = (
                uow.semantic_maps.get_semantic_map(drift.semantic_map_version)
                if drift.semantic_map_version is not None
                else uow.semantic_maps.active_semantic_map()
            )
            if record is None:
                raise DataError("no semantic map is stored; run the streams app first")
            semantic_map = record.semantic_map
            adapter = uow.adapters.get_or_create_adapter(drift.language, s.base_model_id)
            live = uow.adapters.active_version(drift.language, s.base_model_id)
            usage = uow.usage.usage_distribution(
                drift.language, drift.window_start, drift.window_end, record.version
            )
            by_block = uow.usage.usage_by_window(
                drift.language, drift.window_start, drift.window_end, record.version
            )
            uow.commit()
        target = counts_vector({c: v.total for c, v in usage.items() if c >= 0}, semantic_map.k)
        if target.sum() <= 0:
            raise DataError(f"no usage counted for {drift.language} in the drift window")
        coverage = None
        if live is not None and live.reference_distribution:
            coverage = counts_vector(live.reference_distribution, semantic_map.k) * target.sum()
        visible = without_held_out(target, held_out)
        if visible.sum() <= 0:
            raise DataError(
                f"no {drift.language} usage left in the window after the held-out texts"
            )
        texts, report, clusters = self._select(drift.language, semantic_map, visible, coverage)
        reference = reference_counts(usage, by_block, semantic_map.k)
        if reference is not None:
            reference = replace(
                reference, window_start=drift.window_start, window_end=drift.window_end
            )
        return SelectedData(adapter, live, target, texts, report, reference, tuple(clusters))

    def _run(self, drift: DriftEvent, job_id: int, checkpoint: Checkpoint) -> WorkerOutcome:
        s = self.settings
        started = time.perf_counter()
        map_version, salt = drift.semantic_map_version, str(drift.drift_id)
        window = self._usage.items(
            drift.language, drift.window_start, drift.window_end, s.window_texts,
            semantic_map_version=map_version,
        )  # fmt: skip
        before = self._usage.items(
            drift.language, drift.window_start - (drift.window_end - drift.window_start),
            drift.window_start, s.window_texts, semantic_map_version=map_version,
        )  # fmt: skip
        metrics.job_stage("sampling")
        gate_new = held_out_sample(window, s.eval_texts, salt)
        selected = self.select(drift, held_out=gate_new)
        adapter, live, target, texts = (
            selected.adapter, selected.live, selected.target, selected.texts
        )  # fmt: skip
        new_eval = [item.text for item in gate_new]
        old_eval = [item.text for item in held_out_sample(before, s.eval_texts, salt)]
        checkpoint.check("after selecting")
        trained = self._train_and_evaluate(drift, live, selected, new_eval, old_eval, checkpoint)
        metrics.job_stage("gating")
        evaluation = trained.evaluation
        non_finite = evaluation.non_finite()
        shares = target / target.sum()
        reference = {int(c): float(v) for c, v in enumerate(shares) if v > 0}
        with self._uow_factory() as uow:
            # read in the writing transaction: a pin set while the job trained still holds
            current = uow.adapters.get_adapter(adapter.language, adapter.base_model)
            pinned = current is not None and current.pinned
            decision = s.gate.judge(
                evaluation, others=asdict(evaluation), pinned=pinned, paired=trained.paired
            )
            notes = decision.reason
            if non_finite:  # never stored (jsonb has no NaN), so say which were left out
                notes += f"; non-finite metrics not stored: {', '.join(non_finite)}"
            version = uow.adapters.create_version(
                adapter.adapter_id,
                NewAdapterVersion(
                    artifact_uri=self._artifacts.uri(trained.folder),
                    artifact_sha256=trained.manifest_sha256,
                    sampler=self._sampler.name,
                    sampler_params={"budget": len(texts), "seed": s.seed, **selected.report},
                    reference_distribution=reference,
                    reference_counts=selected.reference,
                    metrics={**evaluation.metrics(), **decision.interval_metrics()},
                    drift_id=drift.drift_id,
                    parent_version=live.number if live else None,
                    base_model_revision=trained.base_model_revision,
                    manifest=trained.manifest,
                    peft_config=trained.peft.to_dict(),
                    training_seconds=evaluation.training_seconds,
                    evaluation_seconds=evaluation.evaluation_seconds,
                    status="candidate" if decision.promote or decision.pinned else "rejected",
                    notes=notes,
                ),
            )
            if decision.promote:
                version = uow.adapters.activate_version(adapter.adapter_id, version.number)
                message = announcement(
                    version, previous_version=live.number if live else None, action="promote",
                    reason=decision.reason,
                    message_id=announcement_id(version.version_id, version.artifact_sha256),
                )  # fmt: skip
                uow.outbox.add_outbox(
                    s.topic_adapter_updated, drift.language, message.model_dump(mode="json")
                )
                uow.adapters.record_event(
                    adapter.adapter_id, "promote", version=version.number,
                    reason=decision.reason, actor=s.worker_name,
                )  # fmt: skip
            uow.jobs.complete_job(job_id, s.worker_name, version.version_id)
            uow.commit()
        metrics.job_stage("idle")
        log.info(
            "worker.version_recorded",
            language=drift.language,
            version=version.number,
            promoted=decision.promote,
            reason=decision.reason,
            seconds=round(time.perf_counter() - started, 1),
        )
        status: Literal["promoted", "rejected"] = "promoted" if decision.promote else "rejected"
        return WorkerOutcome(
            drift.drift_id, status, version.number, evaluation, decision, decision.reason
        )

    # ------------------------------------------------------------------ steps
    def _select(
        self,
        language: str,
        semantic_map: SemanticMap,
        target: np.ndarray,
        coverage: np.ndarray | None,
    ) -> tuple[list[str], dict[str, Any], list[int]]:
        s = self.settings
        request = SelectionRequest(
            target_language=language,
            budget=min(s.budget, len(self._pool)),
            pool=self._pool,
            semantic_map=semantic_map,
            target_counts=target,
            coverage_counts=coverage,
            seed=s.seed,
        )
        selection = self._sampler.select(request)
        records = selection.records(self._pool)
        report = selection.report.to_dict()
        summary = {
            "per_cluster": report.get("per_cluster", {}),
            "per_language": report.get("per_language", {}),
        }
        clusters = self._pool.clusters[selection.indices].tolist()
        return [r.text for r in records], summary, clusters

    def _base_model(self) -> Any:
        if self._base is None:
            from compass.lm.models import load_causal_lm

            self._base = load_causal_lm(self.settings.base_model_id, self.settings.data_dir)
        return self._base

    def _train_and_evaluate(
        self,
        drift: DriftEvent,
        live: AdapterVersionRecord | None,
        selected: SelectedData,
        new_eval: Sequence[str],
        old_eval: Sequence[str],
        checkpoint: Checkpoint,
    ) -> TrainingOutcome:
        from compass.lm.evaluation.perplexity import TextNll, text_nll
        from compass.lm.training import continue_adapter, load_adapter, save_adapter, train_adapter

        s = self.settings
        base = self._base_model()
        texts = selected.texts
        if not new_eval:
            raise DataError(f"no {drift.language} usage texts to evaluate on")

        def score(model: Any, batch: Sequence[str]) -> TextNll:
            return text_nll(model, base.tokenizer, batch, s.training.max_length)

        empty = TextNll(np.zeros(0), np.zeros(0, dtype=np.int64))
        evaluation = 0.0
        earlier_texts: list[str] = []
        earlier_clusters: list[int] | None = None
        map_key = str(drift.semantic_map_version)
        metrics.job_stage("evaluating")
        clock = time.perf_counter()
        model_now = base.model
        if live is not None:
            live_dir = self._artifacts.local_path(live.artifact_uri)
            previous = load_adapter(live_dir, base, trainable=True)
            earlier_texts = read_training_texts(live_dir)
            earlier_clusters = read_training_clusters(live_dir, map_key)
            model_now = previous.model
        else:
            previous = None
        live_new = score(model_now, new_eval)
        live_old = score(model_now, old_eval) if old_eval else empty
        evaluation += time.perf_counter() - clock
        checkpoint.check("before training")

        provenance = {
            "language": drift.language,
            "sampler": self._sampler.name,
            "budget": len(texts),
            "drift_id": str(drift.drift_id),
        }
        metrics.job_stage("training")
        if previous is not None and earlier_texts:
            assert live is not None
            shares = {int(c): float(v) for c, v in live.reference_distribution.items()}
            candidate = continue_adapter(
                previous, texts, earlier_texts, s.training, earlier_clusters, progress=False,
                provenance=provenance, reference_shares=shares or None,
                on_step=checkpoint.on_step,
            )  # fmt: skip
        else:
            if previous is not None:
                previous.detach()
            candidate = train_adapter(base, texts, s.training, progress=False,
                                      provenance=provenance,
                                      on_step=checkpoint.on_step)  # fmt: skip
        metrics.job_stage("evaluating")
        clock = time.perf_counter()
        candidate_new = score(candidate.model, new_eval)
        candidate_old = score(candidate.model, old_eval) if old_eval else empty
        evaluation += time.perf_counter() - clock
        checkpoint.check("before saving the candidate")

        dtype = weights_dtype(candidate.model)  # before detach() takes the LoRA layers off
        adapter_dir = self._artifacts.version_dir(drift.language, str(drift.drift_id))
        manifest = save_adapter(candidate, adapter_dir)
        known = earlier_clusters if earlier_clusters is not None else [None] * len(earlier_texts)
        write_training_texts(
            adapter_dir, [*earlier_texts, *texts], [*known, *selected.clusters], map_key
        )
        candidate.detach()
        return TrainingOutcome(
            folder=adapter_dir,
            manifest=manifest,
            manifest_sha256=manifest_sha256(manifest),
            base_model_revision=base.revision,
            peft=candidate.config.peft_settings(dtype=dtype),
            paired=PairedLosses(
                *(x.per_text_loss() for x in (live_new, candidate_new, live_old, candidate_old))
            ),
            evaluation=Evaluation(
                live_new_loss=live_new.mean_loss,
                live_old_loss=live_old.mean_loss if old_eval else live_new.mean_loss,
                candidate_new_loss=candidate_new.mean_loss,
                candidate_old_loss=(
                    candidate_old.mean_loss if old_eval else candidate_new.mean_loss
                ),
                training_seconds=candidate.metrics.seconds,
                evaluation_seconds=evaluation,
                train_final_loss=candidate.metrics.final_loss,
                n_train_texts=len(texts),
                n_eval_new=len(new_eval),
                n_eval_old=len(old_eval),
            ),
        )
