"""Readable names for the clusters of a semantic map, computed when the map is fitted.

A cluster id says nothing to a person; one sample text in a random language says little more.
Each cluster therefore gets a :class:`ClusterLabel`:

* **top terms by class-based TF-IDF** (c-TF-IDF, Grootendorst 2022, "BERTopic: Neural topic
  modeling with a class-based TF-IDF procedure", arXiv:2203.05794, eq. 1): all members of a
  cluster form one document; the weight of term ``t`` in cluster ``c`` is
  ``W_{t,c} = tf_{t,c} · log(1 + A / f_t)`` with ``tf_{t,c}`` the frequency of ``t`` in ``c``
  divided by the number of terms in ``c`` (L1, as BERTopic does), ``f_t`` the frequency of ``t``
  over all clusters and ``A`` the average number of terms per cluster. A term must occur in at
  least two members of a cluster of four or more (**our choice**: one odd paragraph does not
  name a cluster). Tokens are lower-cased runs of three or more letters; English stop words
  (scikit-learn's list) are dropped;
* **its most central texts**: the members with the highest cosine similarity to the centroid
  (in the map's language-neutral space), de-duplicated.

Both are computed over *display texts*: the English text of a member where a parallel English
text exists (same ``parallel_key``), else the member's own text — so a map fitted on German,
Spanish and Polish gettext messages is still labelled in English. :func:`english_where_parallel`
builds them; corpora that know the English source of a key (gettext's msgid) pass it in.

Labels are for people only: they are not part of the map's content version (two maps with the
same centroids assign identically whatever their labels say).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compass.core.errors import DataError

_TOKEN = re.compile(r"[^\W\d_]{3,}")


@dataclass(frozen=True)
class ClusterLabel:
    """The name of one cluster: ``terms`` (best first) and ``texts`` (most central first), both
    in English where a parallel English text existed; ``size``: members at fit time."""

    cluster: int
    size: int
    terms: tuple[str, ...] = ()
    texts: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """A short one-line name: the top three terms, else the most central text (clipped),
        else ``cluster <id>``."""
        if self.terms:
            return " · ".join(self.terms[:3])
        if self.texts:
            return clip(self.texts[0], 40)
        return f"cluster {self.cluster}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "size": self.size,
            "terms": list(self.terms),
            "texts": list(self.texts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClusterLabel:
        try:
            return cls(
                cluster=int(data["cluster"]),
                size=int(data.get("size", 0)),
                terms=tuple(str(t) for t in data.get("terms", ())),
                texts=tuple(str(t) for t in data.get("texts", ())),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"not a valid cluster label: {exc}") from None


def clip(text: str, width: int) -> str:
    """``text`` on one line, at most ``width`` characters (an ellipsis marks a cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def label_title(labels: Sequence[ClusterLabel], cluster: int) -> str:
    """The title of ``cluster`` among ``labels`` (empty when the map has no label for it)."""
    for label in labels:
        if label.cluster == cluster:
            return label.title
    return ""


def english_where_parallel(
    texts: Sequence[str],
    languages: Sequence[str],
    parallel_keys: Sequence[str | None],
    english_of_key: Callable[[str], str | None] | None = None,
) -> list[str]:
    """One display text per item: the English text sharing its ``parallel_key`` (an item in
    ``en`` or ``en-*`` among the inputs, else ``english_of_key(key)``), else its own text."""
    if not len(texts) == len(languages) == len(parallel_keys):
        raise DataError(
            f"{len(texts)} texts, {len(languages)} languages, {len(parallel_keys)} parallel keys"
        )
    english: dict[str, str] = {}
    for text, language, key in zip(texts, languages, parallel_keys, strict=True):
        if key and (language == "en" or language.startswith("en-")):
            english.setdefault(key, text)
    out = []
    for text, key in zip(texts, parallel_keys, strict=True):
        shown = english.get(key) if key else None
        if shown is None and key and english_of_key is not None:
            shown = english_of_key(key)
        out.append(shown or text)
    return out


def _tokens(text: str, stop_words: frozenset[str]) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in stop_words]


def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def class_tfidf_terms(
    documents: Sequence[Sequence[str]], n_terms: int = 5, min_member_df: int = 2
) -> list[tuple[str, ...]]:
    """Top ``n_terms`` per class by c-TF-IDF (module docstring); ``documents[c]`` are the
    member texts of class ``c``. A class of at least ``2 * min_member_df`` members only takes
    terms found in ``min_member_df`` or more of them. Ties break alphabetically."""
    stop_words = _stop_words()
    vocabulary: dict[str, int] = {}
    per_class: list[tuple[dict[int, int], dict[int, int]]] = []
    for members in documents:
        counts: dict[int, int] = {}
        member_df: dict[int, int] = {}
        for text in members:
            seen: set[int] = set()
            for token in _tokens(text, stop_words):
                index = vocabulary.setdefault(token, len(vocabulary))
                counts[index] = counts.get(index, 0) + 1
                seen.add(index)
            for index in seen:
                member_df[index] = member_df.get(index, 0) + 1
        per_class.append((counts, member_df))
    if not vocabulary:
        return [() for _ in documents]
    tf = np.zeros((len(documents), len(vocabulary)), dtype=np.float64)
    for row, (counts, _) in enumerate(per_class):
        for index, count in counts.items():
            tf[row, index] = count
    term_frequency = tf.sum(axis=0)  # f_t
    average_terms = tf.sum() / max(len(documents), 1)  # A
    idf = np.log1p(average_terms / np.maximum(term_frequency, 1.0))
    lengths = tf.sum(axis=1, keepdims=True)
    weights = np.divide(tf, lengths, out=np.zeros_like(tf), where=lengths > 0) * idf
    names = sorted(vocabulary, key=vocabulary.__getitem__)
    out: list[tuple[str, ...]] = []
    for row, (members, (_, member_df)) in enumerate(zip(documents, per_class, strict=True)):
        scores = weights[row].copy()
        if len(members) >= 2 * min_member_df:
            for term in np.flatnonzero(scores).tolist():
                if member_df.get(term, 0) < min_member_df:
                    scores[term] = 0.0
        candidates = [int(i) for i in np.flatnonzero(scores > 0)]
        candidates.sort(key=lambda i: (-scores[i], names[i]))
        out.append(tuple(names[i] for i in candidates[:n_terms]))
    return out


def label_clusters(
    display_texts: Sequence[str],
    cluster_ids: np.ndarray,
    similarities: np.ndarray,
    k: int,
    *,
    n_terms: int = 5,
    n_texts: int = 3,
) -> tuple[ClusterLabel, ...]:
    """One :class:`ClusterLabel` per cluster ``0..k-1`` from the fit data: ``display_texts``
    (one per row, see :func:`english_where_parallel`), ``cluster_ids`` ``(n,)`` and the cosine
    ``similarities`` ``(n,)`` of each row to its centroid. Clusters without members get an empty
    label (``title`` falls back to ``cluster <id>``)."""
    ids = np.asarray(cluster_ids, dtype=np.int64)
    sims = np.asarray(similarities, dtype=np.float64)
    if not len(display_texts) == ids.shape[0] == sims.shape[0]:
        raise DataError(
            f"{len(display_texts)} texts, {ids.shape[0]} cluster ids, {sims.shape[0]} similarities"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= k):
        raise DataError(f"cluster ids outside 0..{k - 1}")
    members: list[list[int]] = [[] for _ in range(k)]
    for row in np.lexsort((np.arange(ids.size), -sims, ids)):  # by cluster, most central first
        members[int(ids[row])].append(int(row))
    terms = class_tfidf_terms([[display_texts[i] for i in rows] for rows in members], n_terms)
    labels = []
    for cluster, rows in enumerate(members):
        central: list[str] = []
        for row in rows:
            text = " ".join(display_texts[row].split())
            if text and text not in central:
                central.append(text)
            if len(central) >= n_texts:
                break
        labels.append(ClusterLabel(cluster, len(rows), terms[cluster], tuple(central)))
    return tuple(labels)
