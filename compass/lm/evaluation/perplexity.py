"""Held-out loss and perplexity, overall and per semantic cluster.

Loss is the mean next-token negative log-likelihood over all tokens of all texts (token-weighted,
so a long text counts for more than a short one); perplexity is ``exp(loss)``. Texts are
tokenised exactly as in training (BOS when the tokenizer adds one, EOS, truncation).
Perplexities are only comparable between runs that use the same tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from compass.core.errors import DataError
from compass.lm.training.data import collate, encode_texts, token_losses


@dataclass(frozen=True)
class TextNll:
    """Summed NLL and token count per text, in input order."""

    nll_sum: np.ndarray
    tokens: np.ndarray

    @property
    def mean_loss(self) -> float:
        return float(self.nll_sum.sum() / max(int(self.tokens.sum()), 1))

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_loss)

    def per_text_loss(self) -> np.ndarray:
        return self.nll_sum / np.maximum(self.tokens, 1)


@torch.no_grad()
def text_nll(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int = 128,
    batch_size: int = 16,
) -> TextNll:
    """Score every text; batches are formed by length to waste little padding."""
    encoded = encode_texts(tokenizer, texts, max_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    nll_sum = np.zeros(len(encoded), dtype=np.float64)
    tokens = np.zeros(len(encoded), dtype=np.int64)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collate([encoded[i] for i in rows], tokenizer.pad_token_id).to(str(device))
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        nll, mask = token_losses(logits, batch.labels)
        nll_sum[rows] = nll.sum(dim=1).double().cpu().numpy()
        tokens[rows] = mask.sum(dim=1).cpu().numpy()
    model.train(was_training)
    return TextNll(nll_sum, tokens)


@dataclass(frozen=True)
class ClusterPerplexity:
    cluster: int
    n_texts: int
    n_tokens: int
    loss: float
    perplexity: float


@dataclass(frozen=True)
class PerplexityReport:
    n_texts: int
    n_tokens: int
    loss: float
    perplexity: float
    per_cluster: tuple[ClusterPerplexity, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_texts": self.n_texts,
            "n_tokens": self.n_tokens,
            "loss": self.loss,
            "perplexity": self.perplexity,
            "per_cluster": [c.__dict__ for c in self.per_cluster],
        }


def perplexity_report(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    clusters: Sequence[int] | None = None,
    max_length: int = 128,
    batch_size: int = 16,
) -> PerplexityReport:
    """Loss and perplexity over ``texts``, and per cluster when labels are given."""
    if clusters is not None and len(clusters) != len(texts):
        raise DataError("clusters must have one label per text")
    scores = text_nll(model, tokenizer, texts, max_length, batch_size)
    per_cluster: list[ClusterPerplexity] = []
    if clusters is not None:
        labels = np.asarray(clusters)
        for cluster in sorted(set(labels.tolist())):
            rows = labels == cluster
            n_tokens = int(scores.tokens[rows].sum())
            loss = float(scores.nll_sum[rows].sum() / max(n_tokens, 1))
            per_cluster.append(
                ClusterPerplexity(int(cluster), int(rows.sum()), n_tokens, loss, math.exp(loss))
            )
    return PerplexityReport(
        n_texts=len(texts),
        n_tokens=int(scores.tokens.sum()),
        loss=scores.mean_loss,
        perplexity=scores.perplexity,
        per_cluster=tuple(per_cluster),
    )
