"""Evaluation on the real SmolLM2-135M: multiple-choice scoring, file formats, perplexity."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compass.core.errors import DataError
from compass.lm.evaluation import (
    MCItem,
    Retention,
    continuation_items,
    load_mc_items,
    mc_accuracy,
    perplexity_report,
    split_for_continuation,
)
from compass.lm.models import LoadedModel, load_causal_lm

ROOT = Path(__file__).resolve().parents[2]

# Hand-made items whose answers a 135M model knows. The last two pair a long right answer with
# a one-token wrong one: a raw log-likelihood sum pays for every extra token and picks the short
# option, which is what length normalisation is for.
HAND_MADE = [
    ("The capital of France is", ["Paris.", "a kind of fish that lives in deep water.", "green."]),
    ("The opposite of hot is", ["cold.", "mathematics.", "a bicycle.", "Tuesday."]),
    ("Cats and dogs are common household", ["pets.", "volcanoes.", "equations.", "planets."]),
    ("The sun rises in the", ["east.", "refrigerator.", "alphabet.", "sandwich."]),
    ("To be or not to be, that is the", ["question.", "potato.", "highway.", "chemistry."]),
    ("Monday, Tuesday, Wednesday,", ["Thursday, Friday, Saturday and Sunday.", "dog.", "42"]),
    ("One, two, three, four,", ["five, six, seven, eight, nine, ten, eleven, twelve.", "and"]),
    (
        "Water freezes at zero degrees",
        ["Celsius and boils at one hundred degrees Celsius at sea level.", "is", "banana"],
    ),
]
LONG_RIGHT_SHORT_WRONG = {6, 7}


def hand_made_items(seed: int = 0) -> list[MCItem]:
    rng = random.Random(seed)
    items = []
    for index, (question, options) in enumerate(HAND_MADE):
        order = list(range(len(options)))
        rng.shuffle(order)
        items.append(
            MCItem(
                question=question,
                options=tuple(options[i] for i in order),
                answer=order.index(0),
                language="en",
                subject="general",
                item_id=str(index),
            )
        )
    return items


@pytest.fixture(scope="module")
def base() -> LoadedModel:
    # Evaluation never attaches an adapter, so one load serves the module.
    return load_causal_lm("smollm2-135m", ROOT / ".data", device="cpu")


def test_scorer_gets_hand_made_items_right(base: LoadedModel) -> None:
    items = hand_made_items()
    report = mc_accuracy(base.model, base.tokenizer, items, prompt_style="plain")
    assert report.accuracy == 1.0, report.predictions
    assert report.per_language == {"en": 1.0}
    # The answer does not depend on where the right option sits.
    shuffled = mc_accuracy(
        base.model, base.tokenizer, hand_made_items(seed=7), prompt_style="plain"
    )
    assert shuffled.accuracy == 1.0


def test_length_normalisation_is_fair_to_long_options(base: LoadedModel) -> None:
    items = hand_made_items()
    raw = mc_accuracy(base.model, base.tokenizer, items, normalization="none", prompt_style="plain")
    wrong = {
        i
        for i, (p, item) in enumerate(zip(raw.predictions, items, strict=True))
        if p != item.answer
    }
    assert wrong == LONG_RIGHT_SHORT_WRONG  # the raw sum prefers the one-token wrong option
    per_char = mc_accuracy(
        base.model, base.tokenizer, items, normalization="char", prompt_style="plain"
    )
    assert per_char.accuracy == 1.0


def test_global_mmlu_and_mmlu_prox_rows_load_from_every_format(tmp_path: Path) -> None:
    global_mmlu = [
        {
            "sample_id": "q1",
            "question": "2 + 2 = ?",
            "option_a": "3",
            "option_b": "4",
            "option_c": "5",
            "option_d": "22",
            "answer": "B",
            "language": "sw",
            "subject": "elementary_mathematics",
        }
    ]
    (tmp_path / "g.jsonl").write_text("\n".join(json.dumps(r) for r in global_mmlu) + "\n")
    with (tmp_path / "g.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(global_mmlu[0]))
        writer.writeheader()
        writer.writerows(global_mmlu)
    prox = {
        "question_id": 7,
        "question": "Which is a prime?",
        **{f"option_{i}": str(v) for i, v in enumerate([4, 6, 7, 8, 9])},
        "answer": "C",
        "answer_index": 2,
        "category": "math",
        "language": "ja",
    }
    pq.write_table(pa.Table.from_pylist([prox]), tmp_path / "p.parquet")
    from_jsonl = load_mc_items(tmp_path / "g.jsonl")
    from_csv = load_mc_items(tmp_path / "g.csv")
    assert from_jsonl == from_csv
    assert from_jsonl[0].options == ("3", "4", "5", "22") and from_jsonl[0].answer == 1
    assert from_jsonl[0].subject == "elementary_mathematics"
    from_parquet = load_mc_items(tmp_path / "p.parquet", language="ja")
    assert from_parquet[0].options[2] == "7" and from_parquet[0].answer == 2
    assert from_parquet[0].subject == "math"
    with pytest.raises(DataError, match="no multiple-choice items"):
        load_mc_items(tmp_path / "g.jsonl", language="fr")
    with pytest.raises(DataError, match="does not exist"):
        load_mc_items(tmp_path / "absent.jsonl")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "x", "answer": "A"}) + "\n")
    with pytest.raises(DataError, match="options"):
        load_mc_items(tmp_path / "bad.jsonl")


def test_perplexity_per_cluster_adds_up_and_ranks_text(base: LoadedModel) -> None:
    fluent = [
        "The weather is nice today, so we are going for a walk in the park.",
        "Please remember to close the door when you leave the office tonight.",
        "She bought fresh bread and a bottle of milk at the shop on the corner.",
    ]
    rng = random.Random(0)
    scrambled = []
    for text in fluent:
        words = text.split()
        rng.shuffle(words)
        scrambled.append(" ".join(words))
    report = perplexity_report(
        base.model, base.tokenizer, fluent + scrambled, clusters=[0, 0, 0, 1, 1, 1]
    )
    by_cluster = {c.cluster: c for c in report.per_cluster}
    assert by_cluster[0].perplexity < by_cluster[1].perplexity
    weighted = sum(c.loss * c.n_tokens for c in report.per_cluster) / report.n_tokens
    assert math.isclose(weighted, report.loss, rel_tol=1e-9)
    assert math.isclose(report.perplexity, math.exp(report.loss))


def test_continuation_items_use_other_clusters_as_distractors() -> None:
    """Clusters 1-3 have one text each, so their distractors come from other clusters; the
    two texts of cluster 0 get one same-cluster distractor each (issue 15, see the test
    below)."""
    texts = [
        "Open the Format menu and choose Paragraph to change the spacing of the text.",
        "Select the cells, then choose Data and Sort to order the rows of the sheet.",
        "Insert a chart from the Insert menu and pick the chart type you need.",
        "The formula editor lets you type mathematical expressions in a markup language.",
        "Use the Navigator to jump between headings, tables and images in a document.",
    ]
    clusters = [0, 1, 2, 3, 0]
    items = continuation_items(texts, clusters, "en", n_options=3, seed=1)
    assert len(items) == 5
    for item in items:
        source = int(item.item_id or 0)
        head, tail = split_for_continuation(texts[source]) or ("", "")
        assert item.question == head and item.options[item.answer] == tail
        origins = [
            next(i for i, t in enumerate(texts) if t.endswith(option))
            for k, option in enumerate(item.options)
            if k != item.answer
        ]
        same = [clusters[o] == clusters[source] for o in origins]
        assert sum(same) == (1 if clusters[source] == 0 else 0)
    head, tail = split_for_continuation(
        "ツールメニューからオプションを選択して設定を変更します。"
    ) or ("", "")
    assert head and tail and " " not in head  # unspaced scripts split by characters
    assert Retention(before=0.62, after=0.55).forgetting_points == pytest.approx(7.0)


def test_continuation_distractors_come_from_the_same_and_from_other_clusters() -> None:
    """Issue 15: other-cluster distractors can be told apart by topic alone; with four options
    half the three distractors (rounded up: two) come from the text's own cluster."""
    texts = [f"Topic {i % 3} paragraph {i} says: alpha{i} beta{i} gamma{i} delta{i} omega{i}."
             for i in range(12)]  # fmt: skip
    clusters = [i % 3 for i in range(12)]
    items = continuation_items(texts, clusters, "en", n_options=4, seed=2)
    assert len(items) == 12
    for item in items:
        source = int(item.item_id or 0)
        distractors = [o for k, o in enumerate(item.options) if k != item.answer]
        origins = [next(i for i, t in enumerate(texts) if t.endswith(o)) for o in distractors]
        same = sum(clusters[o] == clusters[source] for o in origins)
        assert same == 2 and len(set(origins)) == 3 and source not in origins
    only_other = continuation_items(texts, clusters, "en", n_options=4, same_cluster_share=0.0)
    for item in only_other:
        source = int(item.item_id or 0)
        distractors = [o for k, o in enumerate(item.options) if k != item.answer]
        origins = [next(i for i, t in enumerate(texts) if t.endswith(o)) for o in distractors]
        assert all(clusters[o] != clusters[source] for o in origins)


def _exact_tokens(tokenizer: object, word: str, n: int, *, prompt: bool) -> str:
    """A text of exactly ``n`` tokens as the scorer counts them (prompts with special tokens,
    options with a leading space and none)."""
    text = ""
    for _ in range(4 * n):
        candidate = (text + " " + word).strip()
        ids = (
            tokenizer(candidate, add_special_tokens=True)["input_ids"]  # type: ignore[operator]
            if prompt
            else tokenizer(" " + candidate, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
        )
        if len(ids) > n:
            break
        text = candidate
    return text


def test_every_option_is_scored_on_the_same_full_context(base: LoadedModel) -> None:
    """Issue 15: a 20-token question with options of 40 and 5 tokens and a 32-token limit. The
    old scorer gave the long option 1 token of context and the short one 20; now both get the
    whole question and the long option is scored in full — equal to scoring the concatenation
    by hand."""
    import torch

    from compass.lm.evaluation import option_logprobs

    tok = base.tokenizer
    question = _exact_tokens(tok, "river", 20, prompt=True)
    long_option = _exact_tokens(tok, "stone", 40, prompt=False)
    short_option = _exact_tokens(tok, "tree", 5, prompt=False)
    q_ids = tok(question, add_special_tokens=True)["input_ids"]
    long_ids = tok(" " + long_option, add_special_tokens=False)["input_ids"]
    short_ids = tok(" " + short_option, add_special_tokens=False)["input_ids"]
    assert (len(q_ids), len(long_ids), len(short_ids)) == (20, 40, 5)

    scores = option_logprobs(
        base.model, tok, [question], [[long_option, short_option]], max_length=32
    )[0]

    def by_hand(option_ids: list[int]) -> float:
        ids = torch.tensor([q_ids + option_ids])
        with torch.no_grad():
            logits = base.model(input_ids=ids).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = ids[0, 1:]
        picked = logprobs[torch.arange(len(targets)), targets]
        return float(picked[len(q_ids) - 1 :].sum())

    assert scores[0][1] == len(long_ids) and scores[1][1] == len(short_ids)
    assert scores[0][0] == pytest.approx(by_hand(long_ids), abs=1e-3)
    assert scores[1][0] == pytest.approx(by_hand(short_ids), abs=1e-3)
