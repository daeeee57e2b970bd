"""The OpenAI-compatible remote embedder against a real local HTTP server
(tests/embeddings_server.py): batching and order, retries with back-off on transient failures,
and one clear error per mistake (unknown model, wrong key, wrong dimension, a server that stays
down)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from compass.core.errors import (
    ConfigError,
    DataError,
    ModelLoadError,
    TransientError,
    is_transient,
)
from compass.embedders.openai_compatible import EmbeddingServerChanged, OpenAICompatibleEmbedder
from compass.ports.embedder import l2_normalise
from tests.embeddings_server import EmbeddingsServer, embeddings_server, trigram_vectors

MODEL = "test-embedder"


@pytest.fixture
def server() -> Iterator[EmbeddingsServer]:
    with embeddings_server(trigram_vectors) as running:
        yield running


def _embedder(server: EmbeddingsServer, **options: object) -> OpenAICompatibleEmbedder:
    options.setdefault("sleep", lambda _s: None)  # back-off delays are checked, not slept
    return OpenAICompatibleEmbedder(server.url, MODEL, **options)  # type: ignore[arg-type]


def test_batches_keep_input_order_and_normalise(server: EmbeddingsServer) -> None:
    embedder = _embedder(server, batch_size=4)
    texts = [f"sentence number {i} about {'cats' if i % 2 else 'dogs'}" for i in range(10)]
    vectors = embedder.embed(texts)
    assert embedder.dim == 32 and vectors.shape == (10, 32)
    np.testing.assert_allclose(vectors, l2_normalise(trigram_vectors(texts)), atol=1e-6)
    # one probe at start, then ceil(10 / 4) = 3 requests of 4, 4 and 2 texts
    assert server.recorded.batches == [1, 4, 4, 2]
    assert set(server.recorded.models) == {MODEL}
    embedder.close()


def test_e5_models_get_their_prefixes(server: EmbeddingsServer) -> None:
    server.behaviour.models = ("intfloat/multilingual-e5-small",)
    embedder = OpenAICompatibleEmbedder(server.url + "/v1", "intfloat/multilingual-e5-small")
    query = embedder.embed(["bonjour"], "query")
    passage = embedder.embed(["bonjour"], "passage")
    np.testing.assert_allclose(query, l2_normalise(trigram_vectors(["query: bonjour"])), atol=1e-6)
    expected = l2_normalise(trigram_vectors(["passage: bonjour"]))
    np.testing.assert_allclose(passage, expected, atol=1e-6)


def test_transient_failures_are_retried_with_backoff(server: EmbeddingsServer) -> None:
    embedder = _embedder(server)
    slept: list[float] = []
    embedder._sleep = slept.append
    server.behaviour.fail_first = len(server.recorded.statuses) + 3  # the next 3 requests fail
    vectors = embedder.embed(["un", "deux"])
    assert vectors.shape == (2, 32)
    assert server.recorded.statuses[-4:] == [503, 503, 503, 200]
    assert embedder.retries == 3 and len(slept) == 3
    # full jitter: each delay lies in [0, min(cap, base * 2^attempt)]
    for attempt, delay in enumerate(slept):
        assert 0.0 <= delay <= min(embedder.max_backoff_s, embedder.backoff_s * 2**attempt)


def test_retry_after_is_honoured_up_to_the_cap(server: EmbeddingsServer) -> None:
    embedder = _embedder(server, max_backoff_s=5.0)
    slept: list[float] = []
    embedder._sleep = slept.append
    server.behaviour.fail_status, server.behaviour.retry_after = 429, "2"
    server.behaviour.fail_first = len(server.recorded.statuses) + 1
    embedder.embed(["trois"])
    server.behaviour.retry_after = "120"
    server.behaviour.fail_first = len(server.recorded.statuses) + 1
    embedder.embed(["quatre"])
    assert slept == [2.0, 5.0]


def test_a_server_that_stays_down_is_a_transient_error(server: EmbeddingsServer) -> None:
    embedder = _embedder(server, max_retries=2)
    server.behaviour.fail_first = 10_000
    with pytest.raises(TransientError, match=r"failed 3 times; last: HTTP 503"):
        embedder.embed(["cinq"])
    assert server.recorded.statuses[-3:] == [503, 503, 503]


def test_timeouts_are_retried_then_transient(server: EmbeddingsServer) -> None:
    embedder = _embedder(server, timeout_s=0.2, max_retries=1)
    server.behaviour.delay_s = 0.6
    with pytest.raises(TransientError, match="timeout"):
        embedder.embed(["six"])
    assert embedder.retries == 1


def test_an_unreachable_server_fails_at_start() -> None:
    with embeddings_server(trigram_vectors) as stopped:
        url = stopped.url
    with pytest.raises(TransientError, match="unreachable"):
        OpenAICompatibleEmbedder(url, MODEL, max_retries=1, sleep=lambda _s: None)


def test_an_unknown_model_names_the_served_ones(server: EmbeddingsServer) -> None:
    with pytest.raises(ModelLoadError, match=r"does not serve model 'nope'; it serves \['test-"):
        OpenAICompatibleEmbedder(server.url, "nope")
    server.behaviour.list_models = False  # a server without /v1/models (TEI): the 404 says it
    with pytest.raises(ModelLoadError, match="model 'nope' not served"):
        OpenAICompatibleEmbedder(server.url, "nope")
    assert server.recorded.statuses == [404]  # no retry of a 404


def test_a_wrong_or_missing_key_is_a_config_error(server: EmbeddingsServer) -> None:
    server.behaviour.api_key = "s3cret"
    with pytest.raises(ConfigError, match="HTTP 401 invalid API key"):
        OpenAICompatibleEmbedder(server.url, MODEL)
    assert OpenAICompatibleEmbedder(server.url, MODEL, api_key="s3cret").dim == 32


def test_a_wrong_dimension_is_refused(server: EmbeddingsServer) -> None:
    with pytest.raises(ModelLoadError, match="returns 32-d vectors, expected 384"):
        OpenAICompatibleEmbedder(server.url, MODEL, dim=384)
    embedder = _embedder(server)
    server.behaviour.dim_override = 16  # the server's model changed under us
    with pytest.raises(EmbeddingServerChanged, match="now returns 16-d vectors, expected 32") as e:
        embedder.embed(["sept"])
    # not the events' fault: the stream keeps them and retries instead of dead-lettering them
    assert isinstance(e.value, ModelLoadError) and is_transient(e.value)


def test_a_model_removed_after_start_is_transient(server: EmbeddingsServer) -> None:
    embedder = _embedder(server)
    server.behaviour.models = ("another-model",)
    with pytest.raises(EmbeddingServerChanged, match=r"not served .*serves \['another-model'\]"):
        embedder.embed(["neuf"])
    server.behaviour.models, server.behaviour.api_key = (MODEL,), "rotated"
    with pytest.raises(EmbeddingServerChanged, match="HTTP 401"):
        embedder.embed(["dix"])
    assert embedder.retries == 0


def test_a_bad_request_is_a_data_error_without_retry(server: EmbeddingsServer) -> None:
    embedder = _embedder(server)
    server.behaviour.fail_status = 400
    server.behaviour.fail_first = len(server.recorded.statuses) + 1
    with pytest.raises(DataError, match="HTTP 400 busy"):
        embedder.embed(["huit"])
    assert embedder.retries == 0


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="http"):
        OpenAICompatibleEmbedder("localhost:8000", MODEL)
    with pytest.raises(ConfigError, match="model name"):
        OpenAICompatibleEmbedder("http://localhost:8000", " ")


def test_registered_and_configured_from_the_environment(
    server: EmbeddingsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from compass.embedders import available_embedders, load_embedder

    assert "openai-compatible" in available_embedders()
    monkeypatch.delenv("COMPASS_REMOTE_EMBEDDER_URL", raising=False)
    with pytest.raises(ConfigError, match="COMPASS_REMOTE_EMBEDDER_URL"):
        load_embedder("openai-compatible", reuse=False)
    server.behaviour.api_key = "from-a-file"
    secret = tmp_path / "key"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("COMPASS_REMOTE_EMBEDDER_URL", server.url)
    monkeypatch.setenv("COMPASS_REMOTE_EMBEDDER_MODEL", MODEL)
    monkeypatch.setenv("COMPASS_REMOTE_EMBEDDER_API_KEY_FILE", str(secret))
    monkeypatch.setenv("COMPASS_REMOTE_EMBEDDER_BATCH_SIZE", "3")
    embedder = load_embedder("openai-compatible", reuse=False)
    assert embedder.model_id == f"openai-compatible:{MODEL}" and embedder.dim == 32
    embedder.embed(["a", "b", "c", "d"])
    assert server.recorded.batches[-2:] == [3, 1]
