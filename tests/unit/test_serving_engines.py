"""Serving engines without a model: the compatibility checks, the artifact fetch, the sync
steps over a recording engine, and the HTTP engines' request shapes.

The vLLM/SGLang tests here are PROTOCOL tests against a tiny local stub server: they check the
paths and JSON bodies we send and how we read status codes, NOT that a real vLLM or SGLang
server accepts our adapters (that needs the real-server test of issue 11, not in this module)."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from compass.core.errors import ConfigError
from compass.core.events import AdapterUpdated, PeftInfo
from compass.serving import (
    ArtifactError,
    EngineAbilities,
    EngineError,
    ServeSync,
    ServingEngine,
    available_engines,
    build_engine,
    compatibility,
    fetch_artifact,
)
from compass.serving.http_engines import SglangEngine, VllmEngine
from compass.serving.routes_http import RoutesServer

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class RecordingEngine(ServingEngine):
    """A fake engine (unit tests only): records loads and unloads."""

    name = "recording"

    def __init__(self, max_rank: int = 16, dora: bool = False) -> None:
        self.base_model = "smollm2-135m"
        self.base_model_revision = "rev-1"
        self.abilities = EngineAbilities(
            max_rank=max_rank,
            target_modules=frozenset({"q_proj", "v_proj"}),
            dora=dora,
            modules_to_save=False,
        )
        self.calls: list[tuple[str, str]] = []
        self._names: set[str] = set()

    def load(self, adapter_name: str, path: Path) -> None:
        self.calls.append(("load", adapter_name))
        self._names.add(adapter_name)

    def unload(self, adapter_name: str) -> None:
        self.calls.append(("unload", adapter_name))
        self._names.discard(adapter_name)

    def loaded(self) -> set[str]:
        return set(self._names)


def _artifact(root: Path, name: str, payload: bytes = b"weights") -> tuple[Path, dict[str, str]]:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "adapter_model.safetensors").write_bytes(payload)
    manifest = {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())
    }
    return folder, manifest


def _message(folder: Path, manifest: dict[str, str], version: int, **peft: Any) -> AdapterUpdated:
    info = {"type": "LORA", "r": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"]}
    info.update(peft)
    return AdapterUpdated(
        message_id=uuid.uuid4(),
        language="fr",
        base_model="smollm2-135m",
        base_model_revision="rev-1",
        adapter_id="fr:smollm2-135m",
        version=version,
        adapter_name=f"fr-v{version}-{manifest['adapter_model.safetensors'][:8]}",
        artifact_uri=folder.resolve().as_uri(),
        manifest=manifest,
        peft=PeftInfo.model_validate(info),
        created_at=T0 + timedelta(minutes=version),
    )


# ---------------------------------------------------------------- checks
def test_compatibility_names_one_reason(tmp_path: Path) -> None:
    engine = RecordingEngine(max_rank=16)
    folder, manifest = _artifact(tmp_path, "a")
    ok = _message(folder, manifest, 1)
    assert compatibility(engine, ok) is None
    cases = {
        "base_model_mismatch": ok.model_copy(update={"base_model": "gemma3-270m"}),
        "revision_mismatch": ok.model_copy(update={"base_model_revision": "rev-2"}),
        "rank_too_high": _message(folder, manifest, 1, r=32),
        "unsupported_target_modules": _message(folder, manifest, 1, target_modules=["o_proj"]),
        "dora_unsupported": _message(folder, manifest, 1, use_dora=True),
        "modules_to_save_unsupported": _message(folder, manifest, 1, modules_to_save=["lm_head"]),
    }
    for code, message in cases.items():
        reason = compatibility(engine, message)
        assert reason is not None and reason.startswith(code + ":"), (code, reason)
    assert "r=32 > the engine's maximum 16" in str(compatibility(engine, cases["rank_too_high"]))
    # an empty engine revision is "not known": not checked
    engine.base_model_revision = ""
    assert compatibility(engine, cases["revision_mismatch"]) is None


def test_registry() -> None:
    assert {"peft", "vllm", "sglang"} <= set(available_engines())
    with pytest.raises(ConfigError, match="unknown serving engine 'nope'"):
        build_engine("nope")
    engine = build_engine("vllm", engine_url="http://127.0.0.1:1", base_model="m")
    assert isinstance(engine, VllmEngine) and engine.abilities.max_rank == 16
    assert not engine.abilities.dora and not engine.abilities.modules_to_save


# ---------------------------------------------------------------- fetch
def test_fetch_verifies_every_file(tmp_path: Path) -> None:
    folder, manifest = _artifact(tmp_path / "src", "a")
    cache = tmp_path / "cache"
    local = fetch_artifact(folder.resolve().as_uri(), manifest, cache, "fr-v1-x")
    assert local == cache / "fr-v1-x"
    assert (local / "adapter_model.safetensors").read_bytes() == b"weights"
    # a plain path works too, and a verified cached copy is reused
    assert fetch_artifact(str(folder), manifest, cache, "fr-v1-x") == local
    # one byte changed at the source: refused, nothing left in the cache
    (folder / "adapter_model.safetensors").write_bytes(b"weightz")
    with pytest.raises(ArtifactError, match=r"artifact_corrupt: adapter_model\.safetensors"):
        fetch_artifact(str(folder), manifest, cache, "fr-v2-x")
    assert not (cache / "fr-v2-x").exists()
    assert [p.name for p in cache.iterdir()] == ["fr-v1-x"]
    with pytest.raises(ArtifactError, match="manifest_incomplete"):
        fetch_artifact(str(folder), {"adapter_config.json": "0"}, cache, "fr-v3")
    with pytest.raises(ArtifactError, match="unsafe_name"):
        fetch_artifact(str(folder), {**manifest, "../x": "0"}, cache, "fr-v3")
    with pytest.raises(ArtifactError, match="artifact_missing"):
        fetch_artifact(str(tmp_path / "gone"), manifest, cache, "fr-v4")


# ---------------------------------------------------------------- the sync steps
def test_sync_switches_refuses_and_skips(tmp_path: Path) -> None:
    engine = RecordingEngine(max_rank=16)
    sync = ServeSync(engine, tmp_path / "cache", grace_s=0.0)
    f1, m1 = _artifact(tmp_path / "src", "v1", b"one")
    f2, m2 = _artifact(tmp_path / "src", "v2", b"two")
    first, second = _message(f1, m1, 1), _message(f2, m2, 2)
    assert sync.handle(first).status == "applied"
    assert sync.routes() == {"fr": first.adapter_name}
    assert sync.handle(first).reason == "already_live"  # a redelivery changes nothing
    too_big = _message(f2, m2, 3, r=64)
    refused = sync.handle(too_big)
    assert refused.status == "refused" and refused.reason.startswith("rank_too_high")
    assert sync.routes() == {"fr": first.adapter_name}  # the previous one keeps serving
    applied = sync.handle(second)
    assert applied.status == "applied" and applied.previous == first.adapter_name
    assert engine.calls == [
        ("load", first.adapter_name), ("load", second.adapter_name),
        ("unload", first.adapter_name),
    ]  # fmt: skip
    assert sync.handle(first).reason.startswith("stale")  # an old message replayed
    rollback = first.model_copy(update={"message_id": uuid.uuid4(), "created_at": T0.replace(
        hour=13)})  # fmt: skip
    assert sync.handle(rollback).status == "applied"  # a newer message for an older version
    assert sync.routes() == {"fr": first.adapter_name}
    assert sync.stats.applied == 3 and dict(sync.stats.refused) == {"rank_too_high": 1}


def test_grace_waits_for_requests_in_flight(tmp_path: Path) -> None:
    class Slow(RecordingEngine):
        @property
        def tracks_requests(self) -> bool:
            return True

        def generate(self, prompt: str, adapter_name: str | None, max_new_tokens: int = 24) -> str:
            started.set()
            release.wait(5)
            return f"{adapter_name}:{prompt}"

    started, release = threading.Event(), threading.Event()
    engine = Slow()
    sync = ServeSync(engine, tmp_path / "cache", grace_s=5.0)
    f1, m1 = _artifact(tmp_path / "src", "v1", b"one")
    f2, m2 = _artifact(tmp_path / "src", "v2", b"two")
    first, second = _message(f1, m1, 1), _message(f2, m2, 2)
    sync.handle(first)
    answers: list[str] = []
    request = threading.Thread(target=lambda: answers.append(sync.answer("fr", "bonjour")))
    request.start()
    assert started.wait(5)
    switch = threading.Thread(target=sync.handle, args=(second,))
    switch.start()
    switch.join(0.3)
    assert switch.is_alive()  # waiting for the request in flight on the old adapter
    assert ("unload", first.adapter_name) not in engine.calls
    assert sync.routes() == {"fr": second.adapter_name}  # new requests already go to v2
    release.set()
    switch.join(5)
    request.join(5)
    assert answers == [f"{first.adapter_name}:bonjour"]
    assert engine.calls[-1] == ("unload", first.adapter_name)


def test_routes_endpoint(tmp_path: Path) -> None:
    import urllib.request

    server = RoutesServer("127.0.0.1", 0, lambda: {"fr": "fr-v2-abcd1234"}).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/routes", timeout=5) as r:
            assert json.loads(r.read()) == {"fr": "fr-v2-abcd1234"}
    finally:
        server.stop()


# ---------------------------------------------------------------- protocol (stub server)
class _Stub:
    """A local HTTP stub that records requests and answers like the documented API."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.loaded: set[str] = set()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, body))
                status, answer = stub.answer(self.path, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path.endswith("/load_lora_adapter"):
            if body["lora_name"] in self.loaded:  # vLLM: an existing name is 400
                return 400, {"message": "already loaded"}
            self.loaded.add(body["lora_name"])
            return 200, "ok"
        if path.endswith("/unload_lora_adapter"):
            if body["lora_name"] not in self.loaded:
                return 404, {"message": "not found"}
            self.loaded.discard(body["lora_name"])
            return 200, "ok"
        if path == "/v1/completions":
            return 200, {"choices": [{"text": f"<{body['model']}>"}]}
        if path == "/generate":
            return 200, {"text": f"<{body.get('lora_path', 'base')}>"}
        return 404, {}


@pytest.fixture
def stub() -> Iterator[_Stub]:
    server = _Stub()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_vllm_protocol_against_a_stub(stub: _Stub, tmp_path: Path) -> None:
    engine = VllmEngine(stub.url, "smollm2-135m", served_model_name="base")
    engine.load("fr-v1-abcd1234", tmp_path / "fr-v1")
    assert stub.requests[-1] == (
        "/v1/load_lora_adapter",
        {"lora_name": "fr-v1-abcd1234", "lora_path": str(tmp_path / "fr-v1")},
    )
    with pytest.raises(EngineError, match="refused to load fr-v1-abcd1234: 400"):
        engine.load("fr-v1-abcd1234", tmp_path / "fr-v1")
    assert engine.generate("Bonjour", "fr-v1-abcd1234", 5) == "<fr-v1-abcd1234>"
    path, body = stub.requests[-1]
    assert path == "/v1/completions" and body["temperature"] == 0 and body["max_tokens"] == 5
    assert engine.generate("Bonjour", None) == "<base>"
    engine.unload("fr-v1-abcd1234")
    assert stub.requests[-1] == ("/v1/unload_lora_adapter", {"lora_name": "fr-v1-abcd1234"})
    engine.unload("fr-v1-abcd1234")  # 404: already gone, not an error
    assert engine.loaded() == set()


def test_sglang_protocol_against_a_stub(stub: _Stub, tmp_path: Path) -> None:
    engine = SglangEngine(stub.url, "smollm2-135m")
    engine.load("fr-v1-abcd1234", tmp_path)
    assert stub.requests[-1][0] == "/load_lora_adapter"
    assert engine.generate("Bonjour", "fr-v1-abcd1234") == "<fr-v1-abcd1234>"
    assert stub.requests[-1][1]["lora_path"] == "fr-v1-abcd1234"
    engine.unload("fr-v1-abcd1234")
    assert stub.requests[-1] == ("/unload_lora_adapter", {"lora_name": "fr-v1-abcd1234"})


def test_unreachable_engine_is_retried_not_refused(tmp_path: Path) -> None:
    from compass.serving import EngineUnavailable

    engine = VllmEngine("http://127.0.0.1:9", "smollm2-135m", base_model_revision="rev-1",
                        target_modules=None, timeout_s=2)  # fmt: skip
    sync = ServeSync(engine, tmp_path / "cache", grace_s=0)
    folder, manifest = _artifact(tmp_path / "src", "v1")
    with pytest.raises(EngineUnavailable):
        sync.handle(_message(folder, manifest, 1))
    assert sync.routes() == {} and not sync.stats.refused
