"""Training a LoRA/DoRA adapter, and continuing one with the COMPASS-ECDA guards.

One loop serves both: a fresh adapter is a continual update with no guards. The loop runs on
``cuda`` when the base model was loaded there, otherwise on the CPU; nothing else differs.

ECDA (our reading of the paper's ``L = L_task + lambda*L_EWC + beta*L_replay``):
- replay: a buffer holding ``replay_share`` of the earlier training texts, stratified by semantic
  cluster (in proportion to the parent version's reference distribution when given); every step
  adds ``replay_batch_size`` buffer texts to the batch of new texts and their mean token loss is
  weighted by ``replay_weight`` (beta, paper: 0.1);
- EWC: ``lambda/2 * sum_i F_i (theta_i - theta*_i)^2`` over the adapter parameters (Kirkpatrick
  et al., 2017, eq. 3), where ``theta*`` are the previous adapter's weights and ``F`` the
  diagonal empirical Fisher ``F_i = mean_n (d log p(x_n) / d theta_i)^2`` over earlier texts
  ``x_n`` (``log p(x_n)`` the text's summed token log-likelihood) — the standard definition, so
  lambda = 2 is the paper's lambda (``fisher_normalisation="none"``, default). On LoRA weights
  this Fisher is small (its mean is recorded as ``fisher_mean``), so lambda = 2 holds the
  adapter only weakly. ``"mean"`` rescales F to mean 1 (the earlier behaviour): then lambda is
  scale-free and corresponds to a paper lambda of ``lambda / fisher_mean``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog
import torch
from tqdm.auto import tqdm

from compass.core.errors import CompassError, DataError
from compass.lm.models import LoadedModel
from compass.lm.training.config import AdapterTrainingConfig
from compass.lm.training.data import collate, encode_texts, replay_buffer, text_sha256, token_losses

if TYPE_CHECKING:
    from peft import PeftModel

log = structlog.get_logger(__name__)
StepCallback = Callable[[int, int, float], None]
"""``(step, steps, task_loss)`` after each optimizer step (1-based step, loss in nats/token)."""


@dataclass(frozen=True)
class TrainingMetrics:
    """What one training run measured (also written to the adapter metadata)."""

    steps: int
    samples: int
    seconds: float
    samples_per_second: float
    first_loss: float
    final_loss: float
    losses: tuple[float, ...]
    device: str
    replay_size: int = 0
    final_replay_loss: float | None = None
    final_ewc_penalty: float | None = None
    fisher_mean: float | None = None
    """Mean of the raw empirical Fisher over the adapter weights (before any rescaling)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "samples": self.samples,
            "seconds": round(self.seconds, 3),
            "samples_per_second": round(self.samples_per_second, 3),
            "first_loss": self.first_loss,
            "final_loss": self.final_loss,
            "losses": list(self.losses),
            "device": self.device,
            "replay_size": self.replay_size,
            "final_replay_loss": self.final_replay_loss,
            "final_ewc_penalty": self.final_ewc_penalty,
            "fisher_mean": self.fisher_mean,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingMetrics:
        values = dict(data)
        values["losses"] = tuple(values.get("losses", ()))
        return cls(**values)


@dataclass
class TrainedAdapter:
    """An adapter attached to its base model (in place: PEFT injects layers into the base).

    Call :meth:`detach` before attaching another adapter to the same base model.
    """

    base: LoadedModel
    model: PeftModel
    config: AdapterTrainingConfig
    metrics: TrainingMetrics
    data_hashes: dict[str, str]
    provenance: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None

    def state(self) -> dict[str, torch.Tensor]:
        """A detached CPU copy of the trainable adapter weights."""
        return {
            name: p.detach().to("cpu").clone()
            for name, p in self.model.named_parameters()
            if p.requires_grad
        }

    def detach(self) -> None:
        """Remove the adapter layers so ``base.model`` is the plain base model again."""
        self.model.unload()


def _lora_config(config: AdapterTrainingConfig) -> Any:
    from peft import LoraConfig, TaskType

    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=config.r,
        lora_alpha=config.alpha,  # type: ignore[arg-type]
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules),
        use_dora=config.method == "dora",
        bias="none",
    )


def has_adapter(module: torch.nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in module.modules())


def attach_adapter(base: LoadedModel, config: AdapterTrainingConfig) -> PeftModel:
    """Wrap the base model with a fresh adapter, initialised from ``config.seed``."""
    from peft import get_peft_model

    if has_adapter(base.model):
        raise CompassError("the base model already carries an adapter; detach it first")
    names = {name.rsplit(".", 1)[-1] for name, _ in base.model.named_modules()}
    missing = [m for m in config.target_modules if m not in names]
    if missing:
        raise CompassError(
            f"target_modules {missing} do not exist in {base.model_id} ({base.family})"
        )
    torch.manual_seed(config.seed)
    model = get_peft_model(base.model, _lora_config(config))
    return model


def _batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[list[int]]:
    """Index batches for ``steps`` steps: shuffled epochs, concatenated (deterministic)."""
    order: list[int] = []
    need = steps * batch_size
    while len(order) < need:
        order.extend(torch.randperm(n, generator=generator).tolist())
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def estimate_fisher(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    device: str,
    normalisation: str = "none",
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the trainable parameters: the mean over ``texts`` of the
    squared gradient of each text's summed token log-likelihood, one text per backward pass
    (Kirkpatrick et al., 2017). ``normalisation="mean"`` rescales it to mean 1 over all
    parameters. Shapes: one tensor per trainable parameter, same shape."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id
    n_texts = 0
    for ids in encode_texts(tokenizer, texts, max_length):
        batch = collate([ids], pad).to(device)
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        nll, _ = token_losses(logits, batch.labels)
        nll.sum().backward()  # -log p(x_n): the text's summed token NLL
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2
        n_texts += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    fisher = {n: f / max(n_texts, 1) for n, f in fisher.items()}
    if normalisation == "mean":
        mean = fisher_mean(fisher)
        if mean > 0:
            fisher = {n: f / mean for n, f in fisher.items()}
    elif normalisation != "none":
        raise DataError(f"unknown Fisher normalisation {normalisation!r}; use 'none' or 'mean'")
    return fisher


def fisher_mean(fisher: dict[str, torch.Tensor]) -> float:
    """Mean Fisher value over all parameters."""
    total = sum(float(f.sum()) for f in fisher.values())
    return total / max(sum(f.numel() for f in fisher.values()), 1)


@dataclass(frozen=True)
class _Guards:
    replay_ids: list[list[int]]
    anchor: dict[str, torch.Tensor] | None
    fisher: dict[str, torch.Tensor] | None
    fisher_mean: float | None = None


def _run(
    model: PeftModel,
    base: LoadedModel,
    texts: Sequence[str],
    config: AdapterTrainingConfig,
    guards: _Guards,
    progress: bool,
    description: str,
    on_step: StepCallback | None = None,
) -> TrainingMetrics:
    tokenizer = base.tokenizer
    device = base.device
    encoded = encode_texts(tokenizer, texts, config.max_length)
    steps = config.total_steps(len(encoded))
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    plan = _batches(len(encoded), config.batch_size, steps, generator)
    replay_plan: list[list[int]] = []
    if guards.replay_ids:
        replay_plan = _batches(len(guards.replay_ids), config.replay_batch_size, steps, generator)
    params = [p for p in model.parameters() if p.requires_grad]
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, min(10, steps // 10))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup)
    )
    pad = tokenizer.pad_token_id
    losses: list[float] = []
    replay_loss_value: float | None = None
    ewc_value: float | None = None
    samples = 0
    model.train()
    started = time.perf_counter()
    bar = tqdm(total=steps, desc=description, disable=not progress, leave=False, unit="step")
    try:
        for step, rows in enumerate(plan):
            sequences = [encoded[i] for i in rows]
            n_new = len(sequences)
            if replay_plan:
                sequences += [guards.replay_ids[i] for i in replay_plan[step]]
            batch = collate(sequences, pad).to(device)
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            nll, mask = token_losses(logits, batch.labels)
            task = nll[:n_new].sum() / mask[:n_new].sum().clamp(min=1)
            loss = task
            if replay_plan:
                replay_loss = nll[n_new:].sum() / mask[n_new:].sum().clamp(min=1)
                loss = loss + config.replay_weight * replay_loss
                replay_loss_value = float(replay_loss.detach())
            if guards.anchor is not None and guards.fisher is not None:
                penalty = torch.zeros((), device=device)
                for name, p in named.items():
                    penalty = penalty + (guards.fisher[name] * (p - guards.anchor[name]) ** 2).sum()
                penalty = 0.5 * config.ewc_lambda * penalty
                loss = loss + penalty
                ewc_value = float(penalty.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(task.detach()))
            if on_step is not None:
                on_step(step + 1, steps, losses[-1])
            samples += len(sequences)
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{losses[-1]:.3f}", samples_s=f"{samples / elapsed:.1f}")
            bar.update(1)
    finally:
        bar.close()
    model.eval()
    seconds = time.perf_counter() - started
    tail = losses[-max(1, len(losses) // 10) :]
    return TrainingMetrics(
        steps=steps,
        samples=samples,
        seconds=seconds,
        samples_per_second=samples / max(seconds, 1e-9),
        first_loss=losses[0],
        final_loss=sum(tail) / len(tail),
        losses=tuple(round(x, 5) for x in losses),
        device=device,
        replay_size=len(guards.replay_ids),
        final_replay_loss=replay_loss_value,
        final_ewc_penalty=ewc_value,
        fisher_mean=guards.fisher_mean,
    )


def train_adapter(
    base: LoadedModel,
    texts: Sequence[str],
    config: AdapterTrainingConfig,
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
    on_step: StepCallback | None = None,
) -> TrainedAdapter:
    """Train a fresh adapter on ``texts``; the base model stays frozen.

    Deterministic for a given seed on a given device. ``provenance`` (sampler, budget, language
    ...) is stored verbatim in the adapter metadata. ``on_step(step, steps, task_loss)`` is
    called after each optimizer step (progress displays, metrics).
    """
    if not texts:
        raise DataError("no training texts")
    model = attach_adapter(base, config)
    guards = _Guards([], None, None)
    metrics = _run(model, base, texts, config, guards, progress, "train", on_step)
    log.info(
        "adapter_trained",
        base=base.model_id,
        steps=metrics.steps,
        first_loss=round(metrics.first_loss, 4),
        final_loss=round(metrics.final_loss, 4),
        seconds=round(metrics.seconds, 1),
    )
    return TrainedAdapter(
        base=base,
        model=model,
        config=config,
        metrics=metrics,
        data_hashes={"train": text_sha256(texts)},
        provenance=dict(provenance or {}),
    )


def continue_adapter(
    previous: TrainedAdapter,
    new_texts: Sequence[str],
    earlier_texts: Sequence[str],
    config: AdapterTrainingConfig,
    earlier_clusters: Sequence[int] | None = None,
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
    reference_shares: Mapping[int, float] | None = None,
    on_step: StepCallback | None = None,
) -> TrainedAdapter:
    """COMPASS-ECDA: continue ``previous`` on ``new_texts`` with replay of ``earlier_texts``
    and an EWC anchor to its current weights (each guard switched by the config).

    ``earlier_clusters`` (one semantic cluster per earlier text) stratify the replay buffer;
    ``reference_shares`` (cluster → share, the parent version's reference distribution) make
    the strata follow the distribution the previous adapter was built for
    (:func:`~compass.lm.training.data.replay_buffer`).

    Trains the same PEFT model in place; take :meth:`TrainedAdapter.state` first if the previous
    weights are needed again. The adapter shape (rank, targets, method) comes from ``previous``.
    """
    if not new_texts:
        raise DataError("no new training texts")
    if (config.replay or config.ewc) and not earlier_texts:
        raise DataError("the replay and EWC guards need the earlier training texts")
    base = previous.base
    model = previous.model
    buffer_texts: list[str] = []
    replay_ids: list[list[int]] = []
    if config.replay:
        buffer_texts = replay_buffer(
            earlier_texts, config.replay_share, config.seed, earlier_clusters, reference_shares
        )
        replay_ids = encode_texts(base.tokenizer, buffer_texts, config.max_length)
    anchor = fisher = None
    raw_mean: float | None = None
    if config.ewc and config.ewc_lambda > 0:
        generator = torch.Generator().manual_seed(config.seed + 1)
        pick = torch.randperm(len(earlier_texts), generator=generator)[: config.fisher_samples]
        fisher = estimate_fisher(
            model,
            base.tokenizer,
            [earlier_texts[i] for i in pick.tolist()],
            config.max_length,
            base.device,
        )
        raw_mean = fisher_mean(fisher)
        if config.fisher_normalisation == "mean" and raw_mean > 0:
            fisher = {n: f / raw_mean for n, f in fisher.items()}
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    guards = _Guards(replay_ids, anchor, fisher, raw_mean)
    metrics = _run(model, base, new_texts, config, guards, progress, "continue", on_step)
    hashes = {
        "train": text_sha256(new_texts),
        **{f"previous_{k}": v for k, v in previous.data_hashes.items()},
    }
    if buffer_texts:
        hashes["replay"] = text_sha256(buffer_texts)
    return TrainedAdapter(
        base=base,
        model=model,
        config=config,
        metrics=metrics,
        data_hashes=hashes,
        provenance=dict(provenance or {}),
        parent=previous.provenance.get("name"),
    )
