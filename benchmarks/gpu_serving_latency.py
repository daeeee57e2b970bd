"""Time from an ``adapter-updated`` message to the first completion by the new adapter (issue 11),
for a lent GPU machine, with serve-sync's own code path: decode and validate the message, check
it against the engine, fetch and verify every file against the manifest, load the adapter,
switch the route, answer.

Two steps, because the GPU machine has no PostgreSQL, broker or registry access:

``prepare`` (here, on CPU) trains ``--adapters`` small SmolLM2 LoRA adapters on real French chat
text and writes, per adapter, its artifact folder and the ``adapter-updated`` message bytes the
worker would announce (unique name ``fr-v<n>-<manifest hash>``), into ``--out``.

``run`` (there) builds the ``peft`` engine on ``--device`` (default: CUDA when visible), answers
once with the base model (warm-up, outside the clock), then for each message: the clock starts
when the message bytes are handed to serve-sync and stops when the first completion of the new
adapter is returned. Artifact URIs are re-pointed at the staged folder (as an object store would
hand it to the engine's cache). Prints one JSON document; ``--out`` writes it too.

vLLM on CUDA is the issue's first choice; it is not on the lent machine and its CUDA wheels are
larger than what one call can carry, so the script uses vLLM only when ``--engine vllm`` is given
with ``--engine-url`` of a running server, and the in-process ``peft`` engine otherwise.

    .venv/bin/python benchmarks/gpu_serving_latency.py prepare --out .gpu/serving
    python3 benchmarks/gpu_serving_latency.py run --bundle .gpu/serving --out $OUT/serving.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run from a checkout without installing it: make the repository's ``compass`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BASE = "smollm2-135m"
PROMPT = "Bonjour, je voudrais réserver une table pour deux personnes ce soir."


def prepare(out: Path, adapters: int, data_dir: Path) -> None:
    from compass.core.events import encode
    from compass.core.naming import announcement_id, manifest_sha256
    from compass.corpora.chatterbot import load_chatterbot
    from compass.lifecycle import announcement
    from compass.lm.training.artifacts import read_metadata
    from compass.lm.training.config import AdapterTrainingConfig
    from compass.lm.training.service import train_to_folder
    from compass.ports.storage import AdapterVersionRecord

    texts = [r.text for r in load_chatterbot(["fr"], limit_per_language=32 * adapters)]
    out.mkdir(parents=True, exist_ok=True)
    for number in range(1, adapters + 1):
        config = AdapterTrainingConfig(
            r=8, alpha=16.0, steps=3, batch_size=4, max_length=32, learning_rate=1e-2,
            seed=number, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        )  # fmt: skip
        part = texts[(number - 1) * 32 : number * 32]
        folder = train_to_folder(
            part, out / f"artifact-v{number}", base_model_id=BASE, data_dir=data_dir,
            config=config, progress=False,
        ).path  # fmt: skip
        meta = read_metadata(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        now = datetime.now(UTC)
        # the version as the worker would have stored and activated it (no database here)
        version = AdapterVersionRecord(
            version_id=number, adapter_id=1, language="fr", base_model=BASE, number=number,
            status="active", artifact_uri=folder.resolve().as_uri(),
            artifact_sha256=manifest_sha256(manifest), sampler="compass", sampler_params={},
            reference_distribution={}, metrics={}, drift_id=None,
            parent_version=number - 1 or None, base_model_revision=meta["base_model_revision"],
            manifest=manifest, peft_config=meta["peft"], training_seconds=None,
            evaluation_seconds=None, notes="", created_at=now, activated_at=now, retired_at=None,
        )  # fmt: skip
        message = announcement(
            version, previous_version=number - 1 or None, action="promote", reason="",
            # a fresh version id per run, as a new database row would get
            message_id=announcement_id(uuid.uuid4(), version.artifact_sha256),
        )  # fmt: skip
        (out / f"message-v{number}.json").write_bytes(encode(message))
    print(f"prepared {adapters} adapters and messages in {out}")


def run(
    bundle: Path, device: str | None, engine_name: str, engine_url: str | None
) -> dict[str, Any]:
    import torch

    from compass.core.events import AdapterUpdated, decode
    from compass.serving import ServeSync, build_engine

    started = time.perf_counter()
    options: dict[str, Any] = {"base_model": BASE, "data_dir": Path(tempfile.mkdtemp())}
    if engine_name == "peft":
        options["device"] = device
    else:
        options["url"] = engine_url
    engine = build_engine(engine_name, **options)
    engine_seconds = time.perf_counter() - started
    cache = Path(tempfile.mkdtemp())
    sync = ServeSync(engine, cache, grace_s=0.0)
    sync.answer("fr", PROMPT)  # warm-up: the base model's first completion
    base_started = time.perf_counter()
    base_answer = sync.answer("fr", PROMPT)
    base_seconds = time.perf_counter() - base_started
    rows: list[dict[str, Any]] = []
    for path in sorted(bundle.glob("message-v*.json")):
        raw = path.read_bytes()
        # the artifact as staged on this machine (the URI in the message names the CPU machine)
        staged = bundle / f"artifact-v{json.loads(raw)['version']}"
        raw = json.dumps({**json.loads(raw), "artifact_uri": staged.resolve().as_uri()}).encode()
        t0 = time.perf_counter()
        message = decode(raw, AdapterUpdated)
        outcome = sync.handle(message)
        t1 = time.perf_counter()
        answer = sync.answer("fr", PROMPT)
        t2 = time.perf_counter()
        rows.append({
            "adapter_name": message.adapter_name, "status": outcome.status,
            "reason": outcome.reason, "handle_s": round(t1 - t0, 4),
            "fetch_verify_load_s": round(outcome.seconds, 4), "first_answer_s": round(t2 - t1, 4),
            "message_to_first_answer_s": round(t2 - t0, 4),
            "answer_differs_from_base": answer != base_answer,
        })  # fmt: skip
    sync.close()
    shutil.rmtree(cache, ignore_errors=True)
    applied = [float(r["message_to_first_answer_s"]) for r in rows if r["status"] == "applied"]
    return {
        "benchmark": "gpu_serving_latency",
        "engine": engine_name,
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "machine": platform.node(),
        "engine_start_s": round(engine_seconds, 2),
        "base_answer_s": round(base_seconds, 4),
        "messages": rows,
        "median_message_to_first_answer_s": round(statistics.median(applied), 4)
        if applied
        else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, default=Path(".gpu/serving"))
    p.add_argument("--adapters", type=int, default=3)
    p.add_argument("--data-dir", type=Path, default=Path(".data"))
    r = sub.add_parser("run")
    r.add_argument("--bundle", type=Path, default=Path(".gpu/serving"))
    r.add_argument("--device", default=None, choices=(None, "cpu", "cuda"))
    r.add_argument("--engine", default="peft", choices=("peft", "vllm"))
    r.add_argument("--engine-url", default=None)
    r.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out, args.adapters, args.data_dir)
        return
    result = run(args.bundle, args.device, args.engine, args.engine_url)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
