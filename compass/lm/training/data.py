"""Turning texts into padded causal-LM batches, and the distribution-anchored replay buffer.

Kept free of PEFT so the evaluation code reuses the same tokenisation: a text is scored exactly
as it was trained on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from compass.core.errors import DataError
from compass.core.samplers.allocation import allocate as weighted_allocation


def text_sha256(texts: Sequence[str]) -> str:
    """Order-independent hash of a text multiset (recorded in adapter metadata)."""
    digests = sorted(hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts)
    return hashlib.sha256(json.dumps(digests).encode()).hexdigest()


def encode_texts(tokenizer: object, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, with BOS (when the tokenizer adds one) and EOS, truncated."""
    if not texts:
        raise DataError("no texts to encode")
    empty = [i for i, t in enumerate(texts) if not t or not t.strip()]
    if empty:
        raise DataError(f"{len(empty)} empty text(s), first at index {empty[0]}")
    encoded = tokenizer(  # type: ignore[operator]
        list(texts), truncation=True, max_length=max_length, add_special_tokens=True
    )["input_ids"]
    eos = tokenizer.eos_token_id  # type: ignore[attr-defined]
    out: list[list[int]] = []
    for ids in encoded:
        ids = list(ids)
        if eos is not None and len(ids) < max_length and (not ids or ids[-1] != eos):
            ids.append(eos)
        out.append(ids)
    return out


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    def to(self, device: str) -> Batch:
        return Batch(
            self.input_ids.to(device), self.attention_mask.to(device), self.labels.to(device)
        )


def collate(sequences: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """Right-pad to the longest sequence; padded positions get label -100 (ignored)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    labels = torch.full((len(sequences), width), -100, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
        labels[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return Batch(ids, mask, labels)


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token next-token negative log-likelihood and its mask, shape (batch, len-1)."""
    shifted = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    mask = targets != -100
    nll = torch.nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)),
        targets.clamp(min=0).reshape(-1),
        reduction="none",
    ).view(targets.shape)
    return nll * mask, mask


def allocate(counts: Sequence[int], total: int) -> list[int]:
    """Split ``total`` over groups proportionally to ``counts`` (largest remainder), never
    taking more from a group than it has."""
    counts_arr = np.asarray(counts, dtype=float)
    if total <= 0 or counts_arr.sum() == 0:
        return [0] * len(counts)
    total = min(total, int(counts_arr.sum()))
    exact = counts_arr / counts_arr.sum() * total
    base = np.minimum(np.floor(exact).astype(int), counts_arr.astype(int))
    remainder = exact - base
    for index in np.argsort(-remainder, kind="stable"):
        if base.sum() >= total:
            break
        if base[index] < counts_arr[index]:
            base[index] += 1
    return [int(x) for x in base]


def replay_buffer(
    earlier_texts: Sequence[str],
    share: float,
    seed: int,
    clusters: Sequence[int] | None = None,
    reference_shares: Mapping[int, float] | None = None,
) -> list[str]:
    """Distribution-anchored replay: keep ``share`` of the earlier training texts, stratified by
    semantic cluster (a random 5 % would drift away from small clusters).

    Strata sizes follow ``reference_shares`` (cluster → share: the distribution the previous
    adapter was built for, its version's reference distribution) when given, capped by the
    earlier texts each cluster has — what a cluster cannot fill goes to the others in
    proportion to their counts; without it, the cluster mix of the earlier texts is kept.
    """
    if not earlier_texts:
        raise DataError("replay needs the earlier training texts, got none")
    if clusters is not None and len(clusters) != len(earlier_texts):
        raise DataError("clusters must have one label per earlier text")
    size = max(1, round(share * len(earlier_texts)))
    rng = np.random.default_rng(seed)
    labels = np.zeros(len(earlier_texts), dtype=int) if clusters is None else np.asarray(clusters)
    groups = sorted(set(labels.tolist()))
    members = [np.flatnonzero(labels == g) for g in groups]
    counts = [len(m) for m in members]
    if clusters is not None and reference_shares:
        weights = np.array([max(0.0, float(reference_shares.get(g, 0.0))) for g in groups])
        take = weighted_allocation(size, weights, np.array(counts)).tolist()
        rest = size - sum(take)
        if rest > 0:  # the reference's clusters ran out of earlier texts
            spare = [c - t for c, t in zip(counts, take, strict=True)]
            take = [t + e for t, e in zip(take, allocate(spare, rest), strict=True)]
    else:
        take = allocate(counts, size)
    chosen: list[int] = []
    for idx, k in zip(members, take, strict=True):
        if k:
            chosen.extend(rng.choice(idx, size=k, replace=False).tolist())
    rng.shuffle(chosen)
    return [earlier_texts[i] for i in chosen]
