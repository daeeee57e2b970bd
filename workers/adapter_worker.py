"""The adapter worker: one drift event in, at most one evaluated adapter version out.

For a drift event it claims the training job (one per drift event, leased), turns the drifted
window's usage counts and the live adapter's reference distribution into a COMPASS selection
from the auxiliary pool, continues the live adapter on it (replay + EWC, COMPASS-ECDA) or trains
the first one, evaluates candidate and live adapter on the new usage and on the old, and writes
the version, its promotion and the ``adapter-updated`` outbox row in one transaction.

The promotion gate is ours (the paper's is not published): the candidate must lower the held-out
loss on the new usage by ``min_gain`` nats or more, and may raise the loss on the earlier usage
by at most ``max_forgetting`` nats. A candidate that fails is stored as ``rejected`` with its
metrics, so the history shows why nothing changed.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import structlog

from compass.core.distributions import counts_vector
from compass.core.errors import DataError
from compass.core.events import AdapterUpdated, DriftEvent, PeftInfo
from compass.core.samplers.base import Pool, SelectionRequest, get_sampler
from compass.core.semantic_map import SemanticMap
from compass.lm.training.config import AdapterTrainingConfig
from compass.ports.storage import AdapterVersionRecord, NewAdapterVersion, UnitOfWork

log = structlog.get_logger(__name__)

TRAINING_TEXTS_FILE = "training_texts.jsonl"


class UsageTexts(Protocol):
    """Recent prompt texts of a language (for evaluation), newest first."""

    def texts(self, language: str, since: datetime, until: datetime, limit: int) -> list[str]: ...


@dataclass(frozen=True)
class WorkerSettings:
    base_model_id: str
    artifacts_dir: Path
    data_dir: Path
    topic_adapter_updated: str = "adapter-updated"
    sampler: str = "compass"
    budget: int = 96
    seed: int = 0
    training: AdapterTrainingConfig = field(
        default_factory=lambda: AdapterTrainingConfig(steps=24, batch_size=8, max_length=64)
    )
    eval_texts: int = 64
    lease: timedelta = timedelta(minutes=30)
    min_gain: float = 0.0
    max_forgetting: float = 0.05
    worker_name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")


@dataclass(frozen=True)
class WorkerOutcome:
    drift_id: uuid.UUID
    status: Literal["skipped", "promoted", "rejected", "failed"]
    version: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""


def gate(metrics: dict[str, float], min_gain: float, max_forgetting: float) -> tuple[bool, str]:
    """Promote only if better on the new usage and not worse (beyond a tolerance) on the old."""
    gain = metrics["live_new_loss"] - metrics["candidate_new_loss"]
    forgetting = metrics.get("candidate_old_loss", 0.0) - metrics.get("live_old_loss", 0.0)
    if gain <= min_gain:
        return False, f"no gain on the new usage ({gain:+.4f} nats, need > {min_gain})"
    if forgetting > max_forgetting:
        return False, f"forgets the earlier usage ({forgetting:+.4f} nats > {max_forgetting})"
    return True, f"gain {gain:+.4f} nats on new usage, forgetting {forgetting:+.4f} nats"


class AdapterWorker:
    def __init__(
        self,
        uow_factory: Callable[[], UnitOfWork],
        pool: Pool,
        usage_texts: UsageTexts,
        settings: WorkerSettings,
    ) -> None:
        if pool.records is None:
            raise DataError("the worker's auxiliary pool needs its records (texts)")
        self._uow_factory = uow_factory
        self._pool = pool
        self._usage = usage_texts
        self.settings = settings
        self._base: Any = None

    # ------------------------------------------------------------------ the job
    def handle(self, drift: DriftEvent) -> WorkerOutcome:
        s = self.settings
        with self._uow_factory() as uow:
            # the streams app records a drift event before publishing it; recording it again
            # (a no-op then) lets drift events from other producers reach the worker too
            uow.drift.record_drift_event(drift)
            job = uow.jobs.claim_job(drift.drift_id, s.worker_name, s.lease)
            uow.commit()
        if job is None:
            log.info("worker.job_skipped", drift_id=str(drift.drift_id))
            return WorkerOutcome(drift.drift_id, "skipped", reason="claimed or finished")
        try:
            outcome = self._run(drift, job.job_id)
        except Exception as exc:
            with self._uow_factory() as uow:
                uow.jobs.fail_job(job.job_id, s.worker_name, f"{type(exc).__name__}: {exc}")
                uow.commit()
            log.exception("worker.job_failed", drift_id=str(drift.drift_id))
            return WorkerOutcome(drift.drift_id, "failed", reason=str(exc))
        return outcome

    def _run(self, drift: DriftEvent, job_id: int) -> WorkerOutcome:
        s = self.settings
        started = time.perf_counter()
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
            uow.commit()
        target = counts_vector({c: v.total for c, v in usage.items() if c >= 0}, semantic_map.k)
        if target.sum() <= 0:
            raise DataError(f"no usage counted for {drift.language} in the drift window")
        coverage = None
        if live is not None and live.reference_distribution:
            coverage = counts_vector(live.reference_distribution, semantic_map.k) * target.sum()
        texts, selection_report = self._select(drift.language, semantic_map, target, coverage)

        new_eval = self._usage.texts(
            drift.language, drift.window_start, drift.window_end, s.eval_texts
        )
        old_eval = self._usage.texts(
            drift.language, drift.window_start - (drift.window_end - drift.window_start),
            drift.window_start, s.eval_texts,
        )  # fmt: skip
        metrics, adapter_dir, trained = self._train_and_evaluate(
            drift, live, texts, new_eval, old_eval
        )
        accepted, reason = gate(metrics, s.min_gain, s.max_forgetting)
        shares = target / target.sum()
        reference = {int(c): float(v) for c, v in enumerate(shares) if v > 0}
        with self._uow_factory() as uow:
            version = uow.adapters.create_version(
                adapter.adapter_id,
                NewAdapterVersion(
                    artifact_uri=adapter_dir.resolve().as_uri(),
                    artifact_sha256=trained["manifest_sha256"],
                    sampler=s.sampler,
                    sampler_params={"budget": len(texts), "seed": s.seed, **selection_report},
                    reference_distribution=reference,
                    metrics=metrics,
                    drift_id=drift.drift_id,
                    parent_version=live.number if live else None,
                    base_model_revision=trained["base_model_revision"],
                    manifest=trained["manifest"],
                    peft_config=trained["peft"],
                    training_seconds=metrics.get("training_seconds"),
                    evaluation_seconds=metrics.get("evaluation_seconds"),
                    status="candidate" if accepted else "rejected",
                    notes=reason,
                ),
            )
            if accepted:
                version = uow.adapters.activate_version(adapter.adapter_id, version.number)
                message = self._announcement(version, live, drift, trained["peft"])
                uow.outbox.add_outbox(
                    s.topic_adapter_updated, drift.language, message.model_dump(mode="json")
                )
            uow.jobs.complete_job(job_id, s.worker_name, version.version_id)
            uow.commit()
        log.info(
            "worker.version_recorded",
            language=drift.language,
            version=version.number,
            promoted=accepted,
            reason=reason,
            seconds=round(time.perf_counter() - started, 1),
        )
        status: Literal["promoted", "rejected"] = "promoted" if accepted else "rejected"
        return WorkerOutcome(drift.drift_id, status, version.number, metrics, reason)

    # ------------------------------------------------------------------ steps
    def _select(
        self,
        language: str,
        semantic_map: SemanticMap,
        target: np.ndarray,
        coverage: np.ndarray | None,
    ) -> tuple[list[str], dict[str, Any]]:
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
        selection = get_sampler(s.sampler).select(request)
        records = selection.records(self._pool)
        report = selection.report.to_dict()
        summary = {
            "per_cluster": report.get("per_cluster", {}),
            "per_language": report.get("per_language", {}),
        }
        return [r.text for r in records], summary

    def _base_model(self) -> Any:
        if self._base is None:
            from compass.lm.models import load_causal_lm

            self._base = load_causal_lm(self.settings.base_model_id, self.settings.data_dir)
        return self._base

    def _train_and_evaluate(
        self,
        drift: DriftEvent,
        live: AdapterVersionRecord | None,
        texts: Sequence[str],
        new_eval: Sequence[str],
        old_eval: Sequence[str],
    ) -> tuple[dict[str, float], Path, dict[str, Any]]:
        from compass.lm.evaluation.perplexity import text_nll
        from compass.lm.training import continue_adapter, load_adapter, save_adapter, train_adapter

        s = self.settings
        base = self._base_model()
        if not new_eval:
            raise DataError(f"no {drift.language} usage texts to evaluate on")

        def loss(model: Any, batch: Sequence[str]) -> float:
            return text_nll(model, base.tokenizer, batch, s.training.max_length).mean_loss

        evaluation = 0.0
        earlier_texts: list[str] = []
        clock = time.perf_counter()
        if live is not None:
            live_dir = _uri_path(live.artifact_uri)
            previous = load_adapter(live_dir, base, trainable=True)
            earlier_texts = _read_texts(live_dir / TRAINING_TEXTS_FILE)
            live_new = loss(previous.model, new_eval)
            live_old = loss(previous.model, old_eval) if old_eval else live_new
        else:
            previous = None
            live_new = loss(base.model, new_eval)
            live_old = loss(base.model, old_eval) if old_eval else live_new
        evaluation += time.perf_counter() - clock

        provenance = {"language": drift.language, "sampler": s.sampler, "budget": len(texts),
                      "drift_id": str(drift.drift_id)}  # fmt: skip
        if previous is not None and earlier_texts:
            candidate = continue_adapter(
                previous, texts, earlier_texts, s.training, progress=False, provenance=provenance
            )
        else:
            if previous is not None:
                previous.detach()
            candidate = train_adapter(base, texts, s.training, progress=False,
                                      provenance=provenance)  # fmt: skip
        clock = time.perf_counter()
        candidate_new = loss(candidate.model, new_eval)
        candidate_old = loss(candidate.model, old_eval) if old_eval else candidate_new
        evaluation += time.perf_counter() - clock

        adapter_dir = s.artifacts_dir / drift.language / str(drift.drift_id)
        manifest = save_adapter(candidate, adapter_dir)
        _write_texts(adapter_dir / TRAINING_TEXTS_FILE, [*earlier_texts, *texts])
        candidate.detach()
        metrics = {
            "live_new_loss": live_new,
            "live_old_loss": live_old,
            "candidate_new_loss": candidate_new,
            "candidate_old_loss": candidate_old,
            "training_seconds": candidate.metrics.seconds,
            "evaluation_seconds": evaluation,
            "train_final_loss": candidate.metrics.final_loss,
            "n_train_texts": float(len(texts)),
            "n_eval_new": float(len(new_eval)),
            "n_eval_old": float(len(old_eval)),
        }
        cfg = candidate.config
        trained = {
            "manifest": manifest,
            "manifest_sha256": _manifest_digest(manifest),
            "base_model_revision": base.revision,
            "peft": {"type": "LORA", "r": cfg.r, "alpha": cfg.alpha,
                     "target_modules": list(cfg.target_modules), "use_dora": cfg.method == "dora"},
        }  # fmt: skip
        return metrics, adapter_dir, trained

    def _announcement(
        self,
        version: AdapterVersionRecord,
        live: AdapterVersionRecord | None,
        drift: DriftEvent,
        peft: dict[str, Any],
    ) -> AdapterUpdated:
        return AdapterUpdated(
            message_id=uuid.uuid5(uuid.NAMESPACE_URL, f"adapter-version:{version.version_id}"),
            language=version.language,
            base_model=version.base_model,
            base_model_revision=version.base_model_revision,
            adapter_id=f"{version.language}:{version.base_model}",
            version=version.number,
            adapter_name=version.adapter_name,
            artifact_uri=version.artifact_uri,
            manifest=version.manifest,
            peft=PeftInfo(
                type=str(peft["type"]),
                r=int(peft["r"]),
                alpha=float(peft["alpha"]),
                target_modules=list(peft["target_modules"]),
            ),
            metrics={k: float(v) for k, v in version.metrics.items()},
            previous_version=live.number if live else None,
            drift_id=drift.drift_id,
        )


def _uri_path(uri: str) -> Path:
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise DataError(f"this worker reads file:// adapter artifacts, not {uri!r}")
    return Path(unquote(parsed.path))


def _manifest_digest(manifest: dict[str, str]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _write_texts(path: Path, texts: Sequence[str]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")


def _read_texts(path: Path) -> list[str]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]
