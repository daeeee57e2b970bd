"""Multiple-choice accuracy by log-likelihood over the answer options.

Scoring (cloze style, as small models need): for each option the model scores the option's
*text* as a continuation of the prompt, ``sum_t log p(option_t | prompt, option_<t)``. Options
differ in length, and a raw sum penalises every extra token, so a short wrong option would beat
a long right one. We therefore length-normalise:

- ``"token"`` (default): mean log-probability per option token;
- ``"char"``: summed log-probability divided by the option's length in characters (independent
  of the tokenizer, like lm-eval-harness's ``acc_norm`` per byte);
- ``"none"``: the raw sum (kept for comparison).

Every option of an item is scored on the same, full context (:func:`plan_option_sequences`):
``max_length`` bounds the prompt, never the prompt plus the option.

Rows in the Global-MMLU / MMLU-ProX format (question, options A-D or a list, answer as a letter
or an index, language, subject) load from JSONL, CSV or Parquet with :func:`load_mc_items`, so a
user who has those files can run the real benchmark with ``compass eval --mc FILE``.
"""

from __future__ import annotations

import csv
import json
import string
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch

from compass.core.errors import DataError
from compass.lm.training.data import collate

Normalization = Literal["token", "char", "none"]
LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question; ``answer`` is the index of the right option."""

    question: str
    options: tuple[str, ...]
    answer: int
    language: str | None = None
    subject: str | None = None
    item_id: str | None = None

    def __post_init__(self) -> None:
        if len(self.options) < 2:
            raise DataError(f"item {self.item_id or self.question[:30]!r} has < 2 options")
        if not 0 <= self.answer < len(self.options):
            raise DataError(f"item {self.item_id or self.question[:30]!r}: answer out of range")


def _answer_index(value: Any, n_options: int) -> int:
    if isinstance(value, int | np.integer):
        return int(value)
    text = str(value).strip()
    if len(text) == 1 and text.upper() in LETTERS[:n_options]:
        return LETTERS.index(text.upper())
    if text.isdigit():
        return int(text)
    raise DataError(f"answer {value!r} is neither a letter A-{LETTERS[n_options - 1]} nor an index")


def _row_options(row: dict[str, Any]) -> list[str]:
    if isinstance(row.get("options"), list | tuple | np.ndarray):
        return [str(x) for x in row["options"] if x is not None and str(x) != ""]
    for pattern in ("option_{l}", "option_{L}", "{L}"):
        found = []
        for index in range(10):
            key = pattern.format(l=LETTERS[index].lower(), L=LETTERS[index])
            value = row.get(key)
            if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
                break
            found.append(str(value))
        if found:
            return found
    found = []
    for index in range(10):  # MMLU-ProX: option_0 .. option_9
        value = row.get(f"option_{index}")
        if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
            break
        found.append(str(value))
    return found


def mc_item_from_row(row: dict[str, Any], position: int = 0) -> MCItem:
    """Read one Global-MMLU / MMLU-ProX style row."""
    options = _row_options(row)
    if "question" not in row or not options:
        raise DataError(f"row {position}: expected 'question' and options (A-D or option_a-d)")
    answer_value = row.get("answer", row.get("answer_index"))
    if answer_value is None:
        raise DataError(f"row {position}: no 'answer'")
    return MCItem(
        question=str(row["question"]),
        options=tuple(options),
        answer=_answer_index(answer_value, len(options)),
        language=row.get("language") or row.get("lang"),
        subject=row.get("subject") or row.get("category"),
        item_id=str(row.get("sample_id") or row.get("question_id") or position),
    )


def load_mc_items(path: Path | str, language: str | None = None) -> list[MCItem]:
    """Load a multiple-choice file (``.jsonl``, ``.json``, ``.csv`` or ``.parquet``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"multiple-choice file {path} does not exist")
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]]
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]
    elif suffix == ".json":
        loaded = json.loads(path.read_text("utf-8"))
        rows = loaded if isinstance(loaded, list) else [loaded]
    elif suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        raise DataError(
            f"unsupported multiple-choice file type {suffix!r} (jsonl/json/csv/parquet)"
        )
    items = [mc_item_from_row(row, i) for i, row in enumerate(rows)]
    if language is not None:
        items = [item for item in items if item.language == language]
    if not items:
        raise DataError(
            f"no multiple-choice items in {path}" + (f" for {language}" if language else "")
        )
    return items


def mmlu_prompt(item: MCItem) -> str:
    """The question with its lettered options, ending where the answer text is scored."""
    lines = [item.question.strip()]
    lines += [f"{LETTERS[i]}. {option}" for i, option in enumerate(item.options)]
    lines.append("Answer:")
    return "\n".join(lines)


def plain_prompt(item: MCItem) -> str:
    """The question alone: the options are scored as its continuation (offline sets)."""
    return item.question


@dataclass(frozen=True)
class MCReport:
    n_items: int
    accuracy: float
    per_language: dict[str, float]
    per_subject: dict[str, float]
    predictions: tuple[int, ...]
    normalization: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_items": self.n_items,
            "accuracy": self.accuracy,
            "per_language": self.per_language,
            "per_subject": self.per_subject,
            "normalization": self.normalization,
        }


class OptionScore(NamedTuple):
    """One option's score: summed log-probability (nats) of its scored tokens, how many tokens
    were scored, and the scored text (the whole option unless it was cut to
    ``max_option_length`` tokens), whose length ``"char"`` normalisation divides by."""

    logprob: float
    n_tokens: int
    text: str


@dataclass(frozen=True)
class OptionSequence:
    """What is fed to the model for one (prompt, option): ``context + option`` token ids."""

    prompt: int
    option: int
    ids: list[int]
    context_length: int
    text: str


def plan_option_sequences(
    tokenizer: Any,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    max_length: int = 256,
    max_option_length: int = 64,
) -> list[OptionSequence]:
    """Token sequences for every option of every prompt, with **one context per item**.

    The context is the prompt's tokens, cut from the left to ``max_length`` tokens when the
    prompt alone is longer — the same cut for every option, decided without looking at the
    options, so the context is never shortened to make room for an option (issue 15: with a
    total budget of 32 tokens an option of 31+ tokens was scored after one token of context,
    and options of one item were scored on different contexts). An option longer than
    ``max_option_length`` tokens is scored on its first ``max_option_length`` tokens; its
    scored text is kept for ``"char"`` normalisation. Sequences are at most
    ``max_length + max_option_length`` tokens long.
    """
    if max_length < 1 or max_option_length < 1:
        raise DataError("max_length and max_option_length must be at least 1")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    out: list[OptionSequence] = []
    for p, (ids, opts) in enumerate(zip(prompt_ids, options, strict=True)):
        context = list(ids)[-max_length:]
        option_ids = tokenizer([" " + o.strip() for o in opts], add_special_tokens=False)[
            "input_ids"
        ]
        for o, (oid, option) in enumerate(zip(option_ids, opts, strict=True)):
            if not oid:
                raise DataError(f"option {o} of prompt {p} is empty")
            scored = list(oid)[:max_option_length]
            text = option if len(scored) == len(oid) else tokenizer.decode(scored).strip()
            out.append(OptionSequence(p, o, context + scored, len(context), text))
    return out


@torch.no_grad()
def option_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    options: Sequence[Sequence[str]],
    max_length: int = 256,
    batch_size: int = 16,
    max_option_length: int = 64,
) -> list[list[OptionScore]]:
    """:class:`OptionScore` of every option of every prompt (sequences from
    :func:`plan_option_sequences`: one context per item; ``max_length`` bounds the context).

    Prompt and option are tokenised separately and concatenated, so the option's tokens are
    exactly the ones scored.
    """
    device = str(next(model.parameters()).device)
    sequences = plan_option_sequences(tokenizer, prompts, options, max_length, max_option_length)
    results: list[list[OptionScore]] = [[OptionScore(0.0, 0, "")] * len(o) for o in options]
    was_training = model.training
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].ids))
    for start in range(0, len(order), batch_size):
        chunk = [sequences[i] for i in order[start : start + batch_size]]
        batch = collate([s.ids for s in chunk], tokenizer.pad_token_id).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logprobs = torch.log_softmax(logits[:, :-1, :].float(), dim=-1)
        targets = batch.input_ids[:, 1:]
        picked = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for row, seq in enumerate(chunk):
            # Option tokens sit at positions context_length..len(ids)-1; position j is
            # predicted by logits at j-1, i.e. index j-1 of `picked`.
            span = picked[row, seq.context_length - 1 : len(seq.ids) - 1]
            results[seq.prompt][seq.option] = OptionScore(
                float(span.sum()), len(seq.ids) - seq.context_length, seq.text
            )
    model.train(was_training)
    return results


def normalise(logprob: float, n_tokens: int, option: str, normalization: Normalization) -> float:
    if normalization == "token":
        return logprob / max(n_tokens, 1)
    if normalization == "char":
        return logprob / max(len(option.strip()), 1)
    if normalization == "none":
        return logprob
    raise DataError(f"unknown normalization {normalization!r} (token, char, none)")


def mc_accuracy(
    model: Any,
    tokenizer: Any,
    items: Sequence[MCItem],
    normalization: Normalization = "token",
    prompt_style: Literal["mmlu", "plain"] = "mmlu",
    max_length: int = 256,
    batch_size: int = 16,
    max_option_length: int = 64,
) -> MCReport:
    """Accuracy over ``items``: the predicted option has the highest normalised score.
    ``max_length`` bounds the context (the prompt), ``max_option_length`` the scored option
    tokens (:func:`plan_option_sequences`)."""
    if not items:
        raise DataError("no multiple-choice items")
    render = mmlu_prompt if prompt_style == "mmlu" else plain_prompt
    scores = option_logprobs(
        model,
        tokenizer,
        [render(item) for item in items],
        [item.options for item in items],
        max_length,
        batch_size,
        max_option_length,
    )
    predictions: list[int] = []
    by_language: dict[str, list[bool]] = defaultdict(list)
    by_subject: dict[str, list[bool]] = defaultdict(list)
    for item, option_scores in zip(items, scores, strict=True):
        values = [normalise(lp, n, text, normalization) for lp, n, text in option_scores]
        predicted = int(np.argmax(values))
        predictions.append(predicted)
        by_language[item.language or "?"].append(predicted == item.answer)
        by_subject[item.subject or "?"].append(predicted == item.answer)
    correct = [p == item.answer for p, item in zip(predictions, items, strict=True)]
    return MCReport(
        n_items=len(items),
        accuracy=float(np.mean(correct)),
        per_language={k: float(np.mean(v)) for k, v in sorted(by_language.items())},
        per_subject={k: float(np.mean(v)) for k, v in sorted(by_subject.items())},
        predictions=tuple(predictions),
        normalization=normalization,
    )
