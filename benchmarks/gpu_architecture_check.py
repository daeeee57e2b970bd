"""GPU vs CPU adapter training on the SmolLM2-135M architecture, in one run on one machine.

The lent GPU machine has no network and takes at most 64 MiB of files, so the 98 MB GGUF
weights cannot travel. This check builds the exact SmolLM2-135M architecture from its
``config.json`` (carried, with the real tokenizer) with random weights: the floating-point work
per step is identical to the real model, so steps/s and samples/s are the real training
throughput; the losses are those of a random model and only show that training descends.

It runs the library's own code path (``train_adapter`` / ``continue_adapter``: LoRA, DoRA,
replay + EWC) on CUDA and on the CPU, and prints one JSON object (also written to ``--out``)::

    python benchmarks/gpu_architecture_check.py --config-dir .gpu/smollm2-config \
        --texts .gpu/texts.jsonl --gpu-steps 200 --cpu-steps 8 --out result.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def _texts(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def _random_model(config_dir: Path, device: str, seed: int) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from compass.lm.models import LoadedModel

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(str(config_dir))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(config_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    model.eval()
    return LoadedModel("smollm2-135m-architecture", f"random-init-{seed}", model, tokenizer, device)


def _timed(device: str, fn: Any) -> tuple[Any, float]:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


def run(device: str, steps: int, args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    from compass.lm.training import AdapterTrainingConfig, continue_adapter, train_adapter

    base = _random_model(args.config_dir, device, args.seed)
    config = AdapterTrainingConfig(
        steps=steps, batch_size=args.batch_size, max_length=args.max_length, seed=args.seed
    )
    warm = train_adapter(base, texts, config.replace(steps=2), progress=False)
    warm.detach()
    adapter, seconds = _timed(device, lambda: train_adapter(base, texts, config, progress=False))
    m = adapter.metrics
    out: dict[str, Any] = {
        "device": device,
        "steps": m.steps,
        "seconds": round(seconds, 3),
        "steps_per_s": round(m.steps / seconds, 3),
        "samples_per_s": round(m.steps * args.batch_size / seconds, 2),
        "first_loss": round(m.first_loss, 4),
        "final_loss": round(m.final_loss, 4),
    }
    half = len(texts) // 2
    continual, seconds = _timed(
        device,
        lambda: continue_adapter(
            adapter, texts[half:], texts[:half], config.replace(steps=max(2, steps // 2)),
            progress=False,
        ),
    )  # fmt: skip
    cm = continual.metrics
    out["continual_replay_ewc"] = {
        "steps": cm.steps,
        "steps_per_s": round(cm.steps / seconds, 3),
        "final_loss": round(cm.final_loss, 4),
        "final_ewc_penalty": cm.final_ewc_penalty,
        "replay_size": cm.replay_size,
    }
    continual.detach()
    dora, seconds = _timed(
        device,
        lambda: train_adapter(
            base, texts, config.replace(method="dora", steps=max(2, steps // 4)), progress=False
        ),
    )
    out["dora"] = {
        "steps": dora.metrics.steps,
        "steps_per_s": round(dora.metrics.steps / seconds, 3),
        "final_loss": round(dora.metrics.final_loss, 4),
    }
    dora.detach()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-dir", type=Path, required=True)
    parser.add_argument("--texts", type=Path, required=True)
    parser.add_argument("--gpu-steps", type=int, default=200)
    parser.add_argument("--cpu-steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    texts = _texts(args.texts)
    result: dict[str, Any] = {
        "model": "SmolLM2-135M architecture, random init (weights cannot travel)",
        "torch": torch.__version__,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "texts": len(texts),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)
        result["cuda"] = run("cuda", args.gpu_steps, args, texts)
    result["cpu"] = run("cpu", args.cpu_steps, args, texts)
    if "cuda" in result:
        result["gpu_over_cpu_samples_per_s"] = round(
            result["cuda"]["samples_per_s"] / result["cpu"]["samples_per_s"], 1
        )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
