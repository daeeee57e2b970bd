"""Evaluation: held-out perplexity (overall and per cluster), multiple-choice accuracy by
length-normalised log-likelihood, an offline multiple-choice set from held-out text, retention."""

from compass.lm.evaluation.multiple_choice import (
    MCItem,
    MCReport,
    load_mc_items,
    mc_accuracy,
    mc_item_from_row,
    option_logprobs,
)
from compass.lm.evaluation.offline import Retention, continuation_items, split_for_continuation
from compass.lm.evaluation.perplexity import (
    ClusterPerplexity,
    PerplexityReport,
    TextNll,
    perplexity_report,
    text_nll,
)

__all__ = [
    "ClusterPerplexity",
    "MCItem",
    "MCReport",
    "PerplexityReport",
    "Retention",
    "TextNll",
    "continuation_items",
    "load_mc_items",
    "mc_accuracy",
    "mc_item_from_row",
    "option_logprobs",
    "perplexity_report",
    "split_for_continuation",
    "text_nll",
]
