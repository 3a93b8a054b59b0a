"""Correctness checkers: pure functions that compare engine outputs with a reference."""

from .images import check_images
from .json_schema import check_json_schema
from .logprobs import check_logprob_closeness
from .result import CheckResult, Failure
from .tokens import ExpectedTokens, check_token_equality
from .words import check_word_overlap, normalise_words, word_overlap

__all__ = [
    "CheckResult",
    "ExpectedTokens",
    "Failure",
    "check_images",
    "check_json_schema",
    "check_logprob_closeness",
    "check_token_equality",
    "check_word_overlap",
    "normalise_words",
    "word_overlap",
]
