"""A multiple-choice set built from held-out real text, and retention.

No Global-MMLU or MMLU-ProX file can be fetched here, so the offline experiment asks the model to
pick the true *continuation* of a held-out paragraph among continuations of other paragraphs of
the same language. Distractors come from the *same* semantic cluster and from *other* ones
(issue 15): an other-cluster distractor can be rejected by its topic alone, a same-cluster one
only by knowing how such text goes on in that language — the ability an adapter for that usage
should improve. With ``same_cluster_share = 0.5`` (default) half the distractors (rounded up)
are same-cluster when the cluster has enough other texts; the rest, and any shortfall, come
from other clusters. Options have different lengths, so scoring is length-normalised
(:mod:`compass.lm.evaluation.multiple_choice`).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compass.core.errors import DataError
from compass.lm.evaluation.multiple_choice import MCItem


def _is_spaced(text: str) -> bool:
    """Whether a script separates words by spaces (False for Chinese and Japanese)."""
    cjk = sum(
        1 for ch in text if unicodedata.name(ch, "").startswith(("CJK", "HIRAGANA", "KATAKANA"))
    )
    return cjk < 0.2 * max(len(text), 1)


def split_for_continuation(text: str, share: float = 0.5) -> tuple[str, str] | None:
    """Split ``text`` near ``share`` of its length at a word boundary (a character boundary for
    unspaced scripts); ``None`` when a side would be too short to score."""
    text = " ".join(text.split())
    if _is_spaced(text):
        words = text.split(" ")
        if len(words) < 6:
            return None
        cut = max(3, min(len(words) - 3, round(len(words) * share)))
        return " ".join(words[:cut]), " ".join(words[cut:])
    if len(text) < 12:
        return None
    cut = max(5, min(len(text) - 5, round(len(text) * share)))
    return text[:cut], text[cut:]


def continuation_items(
    texts: Sequence[str],
    clusters: Sequence[int],
    language: str,
    n_options: int = 4,
    seed: int = 0,
    subject_prefix: str = "cluster",
    same_cluster_share: float = 0.5,
) -> list[MCItem]:
    """One item per usable text: its first half is the question, its second half the right
    option, and ``n_options - 1`` second halves of other texts the distractors — about
    ``same_cluster_share`` of them (rounded up) from the text's own cluster, the rest from other
    clusters (see the module docstring)."""
    if len(texts) != len(clusters):
        raise DataError("clusters must have one label per text")
    if not 0.0 <= same_cluster_share <= 1.0:
        raise DataError(f"same_cluster_share must be in [0, 1], got {same_cluster_share}")
    want_same = math.ceil(same_cluster_share * (n_options - 1))
    rng = np.random.default_rng(seed)
    splits = [split_for_continuation(t) for t in texts]
    usable = [i for i, s in enumerate(splits) if s is not None]
    labels = np.asarray(clusters)
    items: list[MCItem] = []
    for i in usable:
        split = splits[i]
        assert split is not None
        same = [j for j in usable if labels[j] == labels[i] and j != i]
        others = [j for j in usable if labels[j] != labels[i]]
        if len(same) + len(others) < n_options - 1:
            continue
        n_same = min(want_same, len(same))
        n_other = min(n_options - 1 - n_same, len(others))
        n_same = n_options - 1 - n_other  # fewer other-cluster texts: more same-cluster ones
        picked = rng.choice(same, size=n_same, replace=False).tolist() if n_same else []
        picked += rng.choice(others, size=n_other, replace=False).tolist() if n_other else []
        options = [split[1]] + [splits[j][1] for j in picked]
        order = rng.permutation(n_options).tolist()
        shuffled = tuple(options[k] for k in order)
        items.append(
            MCItem(
                question=split[0],
                options=shuffled,
                answer=order.index(0),
                language=language,
                subject=f"{subject_prefix}{int(labels[i])}",
                item_id=str(i),
            )
        )
    if not items:
        raise DataError(f"no continuation items could be built for {language}")
    return items


@dataclass(frozen=True)
class Retention:
    """How a metric on an earlier distribution moved after an update (in points for accuracy)."""

    before: float
    after: float

    @property
    def change(self) -> float:
        return self.after - self.before

    @property
    def forgetting_points(self) -> float:
        """Accuracy lost on the earlier distribution, in percentage points (positive = forgot)."""
        return 100.0 * (self.before - self.after)
