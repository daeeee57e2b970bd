"""Evaluation: held-out perplexity (overall and per cluster), multiple-choice accuracy by
length-normalised log-likelihood, an offline multiple-choice set from held-out text, retention."""

from compass.lm.evaluation.multiple_choice import (
    MCItem,
    MCReport,
    OptionScore,
    load_mc_items,
    mc_accuracy,
    mc_item_from_row,
    option_logprobs,
    plan_option_sequences,
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
    "OptionScore",
    "PerplexityReport",
    "Retention",
    "TextNll",
    "continuation_items",
    "load_mc_items",
    "mc_accuracy",
    "mc_item_from_row",
    "option_logprobs",
    "perplexity_report",
    "plan_option_sequences",
    "split_for_continuation",
    "text_nll",
]
