"""SmolLM2-135M vs Gemma 3 270M as the default base model: speed and multilingual fit.

For each shipped model, on the same real text (Debian handbook paragraphs in de, ru, ja,
clipped as in the experiment): tokens per character (how much of a context a language eats),
zero-shot loss in nats per *character* (comparable across tokenizers), and the seconds per
training step of the library's trainer (batch 8, 48 tokens). Prints a table and the ratios
Gemma/SmolLM2 measured in the same run. Needs ``compass data fetch`` to have unpacked the corpora.

    python benchmarks/model_choice.py [--texts 40] [--steps 4]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=".data")
    parser.add_argument("--texts", type=int, default=40)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from compass.corpora import load_corpus
    from compass.lab.experiment.dataset import clip_text
    from compass.lm.evaluation import text_nll
    from compass.lm.models import load_causal_lm
    from compass.lm.training import AdapterTrainingConfig, train_adapter

    data_dir = Path(args.data_dir)
    languages = ["de", "ru", "ja"]
    records = load_corpus(
        "debian-handbook", languages, data_dir=data_dir, limit_per_language=args.texts
    )
    texts = {
        code: [clip_text(r.text, 150, 60) for r in records if r.language == code]
        for code in languages
    }
    rows = {}
    for model_id in ("smollm2-135m", "gemma3-270m"):
        started = time.perf_counter()
        base = load_causal_lm(model_id, data_dir, device="cpu")
        load_s = time.perf_counter() - started
        row: dict[str, float] = {"load_s": load_s}
        for code, batch in texts.items():
            chars = sum(len(t) for t in batch)
            ids = base.tokenizer(batch)["input_ids"]
            row[f"{code}_tok_per_char"] = sum(len(x) for x in ids) / chars
            scores = text_nll(base.model, base.tokenizer, batch, max_length=512)
            row[f"{code}_nats_per_char"] = float(scores.nll_sum.sum()) / chars
        config = AdapterTrainingConfig(steps=args.steps, batch_size=8, max_length=48)
        all_texts = [t for batch in texts.values() for t in batch]
        adapter = train_adapter(base, all_texts, config, progress=False)
        row["s_per_step"] = adapter.metrics.seconds / adapter.metrics.steps
        rows[model_id] = row
        del adapter, base
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    keys = list(next(iter(rows.values())))
    print(f"{'metric':<22}" + "".join(f"{m:>16}" for m in rows) + f"{'gemma/smollm2':>16}")
    for key in keys:
        values = [rows[m][key] for m in rows]
        ratio = values[1] / values[0] if values[0] else float("nan")
        print(f"{key:<22}" + "".join(f"{v:>16.3f}" for v in values) + f"{ratio:>16.2f}")


if __name__ == "__main__":
    main()
