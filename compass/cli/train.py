"""``compass train`` and ``compass eval`` (``compass experiment``: :mod:`compass.cli.experiment`).

Heavy imports (torch, transformers, PEFT) happen inside the commands so ``compass --help`` stays
fast. Texts come from a records file (JSONL/Parquet with ``text`` and ``language``) or a plain
``.txt`` file with one text per line.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from compass.core.errors import DataError


def _read_texts(path: Path, language: str | None) -> list[str]:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix.lower() == ".txt":
        texts = [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
    else:
        from compass.corpora import read_records

        texts = [r.text for r in read_records(path, language=language)]
    if not texts:
        raise DataError(f"{path}: no texts" + (f" in language {language}" if language else ""))
    return texts


def train(
    texts: Path = typer.Option(..., help="Training texts: .jsonl/.parquet records or .txt."),
    out: Path = typer.Option(..., help="Folder to write the adapter to."),
    language: str | None = typer.Option(None, help="Keep only records of this language."),
    model: str | None = typer.Option(None, help="Base model id (default: settings)."),
    config: Path | None = typer.Option(None, help="AdapterTrainingConfig JSON to start from."),
    method: str | None = typer.Option(None, help="'lora' or 'dora'."),
    steps: int | None = typer.Option(None, help="Optimizer steps."),
    batch_size: int | None = typer.Option(None, help="Texts per step."),
    learning_rate: float | None = typer.Option(None, help="AdamW learning rate."),
    rank: int | None = typer.Option(None, "--r", help="LoRA rank."),
    max_length: int | None = typer.Option(None, help="Tokens per text."),
    seed: int | None = typer.Option(None, help="Random seed."),
    continue_from: Path | None = typer.Option(
        None, help="Continue this adapter (COMPASS-ECDA) instead of training a fresh one."
    ),
    earlier: Path | None = typer.Option(
        None, help="The earlier training texts (for replay and EWC) when continuing."
    ),
    replay: bool = typer.Option(True, help="Replay guard when continuing."),
    ewc: bool = typer.Option(True, help="EWC guard when continuing."),
    ewc_lambda: float | None = typer.Option(None, help="EWC weight lambda."),
    replay_share: float | None = typer.Option(None, help="Share of earlier data replayed."),
    sampler: str | None = typer.Option(None, help="Recorded in the metadata: which sampler."),
    budget: int | None = typer.Option(None, help="Recorded in the metadata: the budget."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Train a LoRA/DoRA adapter (or continue one) and save it in PEFT format."""
    from compass.config import load_settings
    from compass.lm.training import train_to_folder, training_config

    settings = load_settings()
    training = training_config(
        config, method=method, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
        r=rank, max_length=max_length, seed=seed, ewc_lambda=ewc_lambda,
        replay_share=replay_share, replay=replay, ewc=ewc,
    )  # fmt: skip
    train_texts = _read_texts(texts, language)
    earlier_texts: list[str] = []
    if continue_from is not None and earlier is not None:
        earlier_texts = _read_texts(earlier, language)
    provenance = {"language": language, "sampler": sampler, "budget": budget}
    saved = train_to_folder(
        train_texts, out, base_model_id=model or settings.base_model_id,
        data_dir=settings.data_dir, config=training, continue_from=continue_from,
        earlier_texts=earlier_texts, progress=progress,
        provenance={k: v for k, v in provenance.items() if v is not None},
    )  # fmt: skip
    m = saved.metrics
    typer.echo(
        f"adapter saved to {out} ({len(saved.manifest)} files): {m.steps} steps on {m.device}, "
        f"loss {m.first_loss:.3f} -> {m.final_loss:.3f}, {m.samples_per_second:.1f} samples/s"
    )


def evaluate(
    model: str | None = typer.Option(None, help="Base model id (default: settings)."),
    adapter: Path | None = typer.Option(None, help="Adapter folder (omit for the base model)."),
    texts: Path | None = typer.Option(None, help="Held-out texts for loss/perplexity."),
    mc: Path | None = typer.Option(
        None, help="Multiple-choice file in Global-MMLU/MMLU-ProX row format."
    ),
    language: str | None = typer.Option(None, help="Keep only this language."),
    normalization: str = typer.Option("token", help="MC length normalisation: token|char|none."),
    prompt_style: str = typer.Option("mmlu", help="MC prompt: 'mmlu' (lettered) or 'plain'."),
    max_length: int = typer.Option(128, help="Tokens per held-out text."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Held-out perplexity and/or multiple-choice accuracy of a base model or an adapter."""
    from compass.config import load_settings
    from compass.lm.evaluation import load_mc_items, mc_accuracy, perplexity_report
    from compass.lm.models import load_causal_lm
    from compass.lm.training import load_adapter

    if texts is None and mc is None:
        raise DataError("give --texts (perplexity) and/or --mc (multiple choice)")
    if normalization not in ("token", "char", "none") or prompt_style not in ("mmlu", "plain"):
        raise DataError("--normalization is token|char|none and --prompt-style mmlu|plain")
    settings = load_settings()
    base = load_causal_lm(model or settings.base_model_id, settings.data_dir)
    scored = load_adapter(adapter, base).model if adapter else base.model
    result: dict[str, object] = {"model": base.model_id, "adapter": str(adapter or "")}
    if texts is not None:
        report = perplexity_report(
            scored, base.tokenizer, _read_texts(texts, language), max_length=max_length
        )
        result["perplexity"] = report.perplexity
        result["loss"] = report.loss
        result["n_texts"] = report.n_texts
    if mc is not None:
        items = load_mc_items(mc, language)
        mc_report = mc_accuracy(
            scored, base.tokenizer, items, normalization,  # type: ignore[arg-type]
            prompt_style,  # type: ignore[arg-type]
        )  # fmt: skip
        result["mc"] = mc_report.to_dict()
    if as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    for key, value in result.items():
        typer.echo(f"{key:<12} {value}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate)
