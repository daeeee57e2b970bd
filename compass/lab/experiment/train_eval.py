"""Experiment v2, train + evaluate: one LoRA per (unit, method, regime), bits per byte on the unit's
held-out usage texts, multiple choice as the secondary metric.

Stand-alone on purpose: it imports only the standard library, numpy, torch, transformers, peft
(and gguf, through transformers, to read the model), so it runs on a lent GPU machine that has
none of COMPASS's other dependencies::

    python compass/lab/experiment/train_eval.py --bundle runs/bundle-v2 \
        --gguf /path/SmolLM2-135M-Instruct.Q4_1.gguf --results runs/v2/results.jsonl \
        --device cuda
    # on a CPU, one shard of four (each process skips the lines already in the results file):
    python compass/lab/experiment/train_eval.py ... --device cpu --shard 0/4 --threads 1

The bundle comes from ``compass experiment prepare`` (see ``prepare.py`` for its files). Every
finished job appends one JSON line to the results file and is skipped on the next run, so an
interrupted run resumes. Jobs are ordered by split draw, so a run stopped by ``--deadline-s``
leaves whole draws behind it.

Primary metric: bits per byte = sum over the scored tokens of -log2 p(token | context), divided
by the UTF-8 bytes of the scored text (the text decoded from the kept tokens when it was cut at
``max_length``). Every text starts after one separator token, so its first token is scored too.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this folder would come first on sys.path and its modules (config.py,
# stats.py, ...) would shadow same-named top-level modules of the libraries below.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import numpy as np  # noqa: E402

LN2 = math.log(2.0)
SEPARATORS = ("<|endoftext|>",)


def load_bundle(folder: Path) -> tuple[dict[str, Any], dict[int, dict[str, Any]], list[dict]]:
    """``(manifest, texts by id, units)``."""
    manifest = json.loads((folder / "manifest.json").read_text())
    texts = {}
    for line in (folder / "texts.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts[int(row["i"])] = row
    units = [json.loads(x) for x in (folder / "units.jsonl").read_text().splitlines() if x]
    return manifest, texts, units


def job_key(unit: str, regime: str, method: str) -> str:
    return f"{unit}|{regime}|{method}"


def list_jobs(manifest: dict[str, Any], units: list[dict]) -> list[tuple[dict, str, str]]:
    """``(unit, regime, method)`` in draw order; zero-shot and v0 have regime ``-``."""
    methods = manifest["methods"]
    order = sorted(units, key=lambda u: (u["draw"], manifest["units"].index(u["unit"])))
    jobs = []
    for unit in order:
        for method in methods:
            if method in ("zero-shot", "v0"):
                jobs.append((unit, "-", method))
                continue
            for regime in manifest["config"]["regimes"]:
                if f"{method}/{regime}" in unit["selections"]:
                    jobs.append((unit, regime, method))
    return jobs


def done_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {json.loads(x)["key"] for x in path.read_text().splitlines() if x.strip()}


class Runner:
    """The model with one LoRA whose weights are re-initialised per job (same seed for every
    method of a unit, so the comparison is paired down to the initial adapter)."""

    def __init__(self, gguf: Path, plan: dict[str, Any], device: str, cache: Path | None) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

        self.torch = torch
        self.plan = plan
        self.device = device
        if cache is not None and (cache / "config.json").exists():
            tokenizer = PreTrainedTokenizerFast.from_pretrained(cache)
            model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
        else:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32
            )
            # The GGUF weights are dequantised on load, but transformers still marks the model
            # as quantised (and then refuses save_pretrained): drop the mark.
            model.hf_quantizer = None  # type: ignore[assignment]
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            if hasattr(model, "is_quantized"):
                model.is_quantized = False  # type: ignore[assignment]
            if cache is not None:
                model.save_pretrained(cache)
                tokenizer.save_pretrained(cache)
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        candidates = [vocab.get(s) for s in SEPARATORS]
        candidates += [tokenizer.bos_token_id, tokenizer.eos_token_id]
        self.start = next(int(c) for c in candidates if c is not None)
        config = LoraConfig(
            r=plan["lora_r"],
            lora_alpha=plan["lora_alpha"],
            lora_dropout=plan["lora_dropout"],
            target_modules=list(plan["target_modules"]),
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(model, config).to(device)
        self.lora = [(n, p) for n, p in self.model.named_parameters() if "lora_" in n]
        self.ids: dict[int, list[int]] = {}
        self.nbytes: dict[int, int] = {}

    def tokenize(self, texts: dict[int, dict[str, Any]]) -> None:
        """Token ids cut to ``max_length - 1`` (room for the separator) and scored bytes."""
        limit = self.plan["max_length"] - 1
        for i, row in texts.items():
            ids = self.tokenizer(row["text"], add_special_tokens=False)["input_ids"]
            if len(ids) > limit:
                ids = ids[:limit]
                kept = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
                self.nbytes[i] = len(str(kept).encode("utf-8"))
            else:
                self.nbytes[i] = len(row["text"].encode("utf-8"))
            self.ids[i] = ids

    def reset(self, seed: int) -> None:
        """LoRA A ~ U(+-1/sqrt(fan_in)) (PEFT's default Kaiming bound), B = 0: the base model."""
        generator = self.torch.Generator().manual_seed(seed)
        with self.torch.no_grad():
            for name, param in self.lora:
                if "lora_A" in name:
                    bound = 1.0 / math.sqrt(param.shape[1])
                    values = self.torch.rand(param.shape, generator=generator) * 2 - 1
                    param.copy_((values * bound).to(param.device, param.dtype))
                elif "lora_B" in name:
                    param.zero_()

    def _batch(self, rows: list[list[int]]) -> tuple[Any, Any]:
        torch = self.torch
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.start, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for k, row in enumerate(rows):
            ids[k, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[k, : len(row)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _autocast(self) -> Any:
        enabled = self.device.startswith("cuda")
        return self.torch.autocast("cuda", dtype=self.torch.bfloat16, enabled=enabled)

    def _token_logprobs(self, rows: list[list[int]]) -> list[np.ndarray]:
        """Per sequence, log p(token_t | tokens_<t) in nats for t >= 1."""
        torch = self.torch
        ids, mask = self._batch(rows)
        with torch.no_grad(), self._autocast():
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1).cpu().numpy()
        return [picked[k, : len(row) - 1] for k, row in enumerate(rows)]

    def train(self, text_ids: list[int], seed: int) -> dict[str, float]:
        """``steps`` AdamW steps of ``batch_size`` texts, cycling through shuffled epochs."""
        torch = self.torch
        plan = self.plan
        self.model.train()
        params = [p for _, p in self.lora]
        optimizer = torch.optim.AdamW(params, lr=plan["learning_rate"], weight_decay=0.0)
        rng = np.random.default_rng(seed)
        order: list[int] = []
        losses = []
        started = time.perf_counter()
        for _ in range(plan["steps"]):
            batch: list[int] = []
            while len(batch) < plan["batch_size"]:
                if not order:
                    order = [text_ids[k] for k in rng.permutation(len(text_ids))]
                batch.append(order.pop())
            ids, mask = self._batch([[self.start, *self.ids[i]] for i in batch])
            labels = ids.masked_fill(mask == 0, -100)
            with self._autocast():
                loss = self.model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
        self.model.eval()
        return {
            "train_loss_first": losses[0],
            "train_loss_last": float(np.mean(losses[-max(1, len(losses) // 8) :])),
            "train_seconds": time.perf_counter() - started,
        }

    def bits_per_byte(self, text_ids: list[int], clusters: dict[int, int]) -> dict[str, Any]:
        """Pooled bits per byte and, per cluster, ``[bits, bytes]``."""
        size = self.plan["eval_batch_size"]
        per_cluster: dict[str, list[float]] = {}
        total_bits = total_bytes = 0.0
        for start in range(0, len(text_ids), size):
            chunk = text_ids[start : start + size]
            scores = self._token_logprobs([[self.start, *self.ids[i]] for i in chunk])
            for i, logp in zip(chunk, scores, strict=True):
                bits = float(-logp.sum() / LN2)
                cell = per_cluster.setdefault(str(clusters[i]), [0.0, 0.0])
                cell[0] += bits
                cell[1] += self.nbytes[i]
                total_bits += bits
                total_bytes += self.nbytes[i]
        return {"bits": total_bits, "bytes": total_bytes, "bpb": total_bits / total_bytes,
                "per_cluster": per_cluster}  # fmt: skip

    def multiple_choice(self, items: list[list[int]]) -> dict[str, Any]:
        """Prefix = first half of the true text (at most ``mc_prefix_tokens``), identical for
        every option; options = ``mc_option_tokens`` tokens after each text's own cut; score =
        mean log-probability per option token; item correct when the true option wins."""
        prefix_cap, option_cap = self.plan["mc_prefix_tokens"], self.plan["mc_option_tokens"]
        sequences: list[list[int]] = []
        starts: list[int] = []
        for item in items:
            cut = {i: max(1, min(len(self.ids[i]) // 2, prefix_cap)) for i in item}
            options = [self.ids[i][cut[i] : cut[i] + option_cap] for i in item]
            if any(not o for o in options):
                continue
            prefix = [self.start, *self.ids[item[0]][: cut[item[0]]]]
            sequences += [prefix + o for o in options]
            starts += [len(prefix) - 1] * len(options)
        size = self.plan["eval_batch_size"]
        means = []
        for first in range(0, len(sequences), size):
            scores = self._token_logprobs(sequences[first : first + size])
            means += [float(s[b:].mean()) for s, b in zip(scores, starts[first:], strict=False)]
        n_options = len(items[0]) if items else 4
        grid = np.array(means).reshape(-1, n_options)
        scored = len(grid)
        correct = int(np.sum(np.argmax(grid, axis=1) == 0)) if scored else 0
        return {"mc_correct": correct, "mc_items": scored,
                "mc_accuracy": correct / scored if scored else None}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    manifest, texts, units = load_bundle(args.bundle)
    plan = dict(manifest["training"])
    for name in ("steps", "batch_size", "eval_batch_size", "max_length"):
        if getattr(args, name) is not None:
            plan[name] = getattr(args, name)
    index, count = (int(x) for x in args.shard.split("/"))
    jobs = list_jobs(manifest, units)
    if args.methods:
        jobs = [j for j in jobs if j[2] in args.methods.split(",")]
    if args.regimes:
        jobs = [j for j in jobs if j[1] in ("-", *args.regimes.split(","))]
    if args.draws:
        jobs = [j for j in jobs if str(j[0]["draw"]) in args.draws.split(",")]
    jobs = [j for k, j in enumerate(jobs) if k % count == index]
    args.results.parent.mkdir(parents=True, exist_ok=True)
    done = done_keys(args.results)
    todo = [j for j in jobs if job_key(j[0]["unit"], j[1], j[2]) not in done]
    print(f"{len(jobs)} jobs in shard {args.shard}, {len(todo)} to run", flush=True)
    if not todo:
        return 0
    started = time.perf_counter()
    runner = Runner(args.gguf, plan, args.device, args.model_cache)
    runner.tokenize(texts)
    clusters = {i: int(row["cluster"]) for i, row in texts.items()}
    load_seconds = time.perf_counter() - started
    durations: list[float] = []
    for unit, regime, method in todo:
        elapsed = time.perf_counter() - started
        if args.deadline_s and durations and elapsed + np.mean(durations) > args.deadline_s:
            print(f"deadline: stopping with {len(durations)} jobs done", flush=True)
            break
        job_started = time.perf_counter()
        runner.reset(int(unit["seed"]))
        row: dict[str, Any] = {"train_seconds": 0.0}
        if method != "zero-shot":
            mix = list(unit["coverage"])
            if method != "v0":
                mix += unit["selections"][f"{method}/{regime}"]["ids"]
            row = runner.train(mix, int(unit["seed"]))
            row["n_train_texts"] = len(mix)
        eval_started = time.perf_counter()
        heldout = unit["heldout"]  # handbook texts first, then help texts: subsample evenly
        if args.heldout_limit and len(heldout) > args.heldout_limit:
            step = len(heldout) / args.heldout_limit
            heldout = [heldout[int(k * step)] for k in range(args.heldout_limit)]
        row.update(runner.bits_per_byte(heldout, clusters))
        row["n_heldout"] = len(heldout)
        items = unit["mc_items"] if args.mc_items is None else unit["mc_items"][: args.mc_items]
        row.update(runner.multiple_choice(items))
        row["eval_seconds"] = time.perf_counter() - eval_started
        row.update(
            key=job_key(unit["unit"], regime, method), unit=unit["unit"],
            language=unit["language"], draw=unit["draw"], regime=regime, method=method,
            device=args.device, steps=plan["steps"], batch_size=plan["batch_size"],
            max_length=plan["max_length"], load_seconds=round(load_seconds, 1),
            job_seconds=time.perf_counter() - job_started, finished_at=time.time(),
        )  # fmt: skip
        with args.results.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
        durations.append(time.perf_counter() - job_started)
        print(f"{row['key']}: bpb {row['bpb']:.4f} ({durations[-1]:.1f} s)", flush=True)
    print(f"done: {len(durations)} jobs in {time.perf_counter() - started:.0f} s", flush=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True, help="folder from 'prepare'")
    parser.add_argument("--gguf", type=Path, required=True, help="SmolLM2 GGUF file")
    parser.add_argument("--results", type=Path, required=True, help="JSONL to append to")
    parser.add_argument("--device", default="cpu", help="cuda or cpu (cuda:N works too)")
    parser.add_argument("--shard", default="0/1", help="i/n: every n-th job from the i-th")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--model-cache", type=Path, default=None,
                        help="folder for the dequantised model (fast reloads)")  # fmt: skip
    parser.add_argument("--deadline-s", type=float, default=0.0,
                        help="start no job that would end after this many seconds")  # fmt: skip
    parser.add_argument("--methods", default="", help="only these methods (comma-separated)")
    parser.add_argument("--regimes", default="", help="only these pool regimes (without,with)")
    parser.add_argument("--steps", type=int, default=None, help="override the bundle's plan")
    parser.add_argument("--batch-size", type=int, default=None, help="override the plan")
    parser.add_argument("--max-length", type=int, default=None, help="override the plan")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="eval batch override")
    parser.add_argument("--draws", default="", help="only these split draws (comma-separated)")
    parser.add_argument("--mc-items", type=int, default=0, help="score at most this many MC items")
    parser.add_argument("--heldout-limit", type=int, default=0,
                        help="score only the first N held-out texts (CPU pilots only)")  # fmt: skip
    args = parser.parse_args(argv)
    index, _, count = args.shard.partition("/")
    if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        parser.error(f"--shard must be i/n with 0 <= i < n, got {args.shard!r}")
    return args


if __name__ == "__main__":
    sys.exit(run(parse_args()))
