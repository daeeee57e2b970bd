"""The embedder interface every part of COMPASS uses.

One rule holds everywhere: the semantic map, the pool, target sets and live prompts are embedded
with the *same* embedder and the same ``kind``, or their vectors are not comparable. e5 models
distinguish ``query:`` from ``passage:`` inputs; for symmetric tasks such as clustering the e5
authors recommend the query form, so :data:`DEFAULT_KIND` is ``"query"``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import numpy as np

from compass.core.errors import DataError

EmbeddingKind = Literal["passage", "query"]
DEFAULT_KIND: EmbeddingKind = "query"
_KINDS = ("passage", "query")
# Above this many texts a progress bar appears unless the caller says otherwise.
PROGRESS_THRESHOLD = 2000


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32, in place when possible."""
    out = np.asarray(vectors, dtype=np.float32)
    if out.ndim != 2:
        raise DataError(f"expected a 2-d array of vectors, got shape {out.shape}")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    if not out.flags.writeable:
        out = out.copy()
    out /= norms
    return out


def check_texts(texts: Sequence[str]) -> list[str]:
    """A list of strings, or :class:`DataError` naming the first bad item."""
    if isinstance(texts, str):
        raise DataError("embed() takes a sequence of texts, not a single string")
    items = list(texts)
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise DataError(f"text #{index} is {type(text).__name__}, not str")
    return items


def check_kind(kind: str) -> EmbeddingKind:
    if kind not in _KINDS:
        raise DataError(f"embedding kind must be 'passage' or 'query', got {kind!r}")
    return kind  # type: ignore[return-value]


class Embedder(ABC):
    """Texts → float32 ``(n, dim)`` L2-normalised vectors.

    A subclass sets two attributes, on the class or in ``__init__`` once its model is loaded:
    ``model_id``, which names the model *and* its version (embedding-cache keys include it), and
    ``dim``, the vector dimension (the vector store is created with it). It implements
    :meth:`_embed_batch`; :meth:`embed` adds validation, batching and an optional progress bar
    and keeps its own overhead to a few microseconds per batch.
    """

    model_id: str
    dim: int
    batch_size: int = 64

    @abstractmethod
    def _embed_batch(self, texts: list[str], kind: EmbeddingKind) -> np.ndarray:
        """Embed one batch; return float32 ``(len(texts), dim)`` (need not be normalised)."""

    def embed(
        self,
        texts: Sequence[str],
        kind: EmbeddingKind = DEFAULT_KIND,
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Embed ``texts``; ``progress=None`` shows a bar only for long runs."""
        items = check_texts(texts)
        kind = check_kind(kind)
        n = len(items)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        size = max(1, batch_size or self.batch_size)
        show = progress if progress is not None else n >= PROGRESS_THRESHOLD
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=n, desc=f"embed {self.model_id}", unit="text", leave=False)
        try:
            for start in range(0, n, size):
                chunk = items[start : start + size]
                out[start : start + len(chunk)] = self._embed_batch(chunk, kind)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
        return l2_normalise(out)

    def leave_a_core(self, leave: bool) -> None:
        """A hint for the calls that follow from the calling thread: ``True`` — another thread
        of this process needs a core now (the stream's consumer, while it is saturated), so use
        one CPU thread fewer than the default; ``False`` — the default again. Embedders without
        a CPU thread pool of their own ignore it (this default does nothing)."""
        return None

    def embed_one(self, text: str, kind: EmbeddingKind = DEFAULT_KIND) -> np.ndarray:
        """One text → ``(dim,)`` vector."""
        return self.embed([text], kind)[0]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r}, dim={self.dim})"
