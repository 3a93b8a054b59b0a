"""Peer engine ``hf_guided``: how a transformers user constrains output, ``model.generate`` with
llguidance's mask as a logits processor (per token: every token sampled under the mask, none
fast-forwarded; the scenario's compile options), one request at a time. Its tokens may differ
from the reference's (forced tokens are tokenized as the model picks them), so only the schema
validity of its documents is checked."""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from pytest_vibeserve.contract import EngineSpec, Request
from reference_impls.constrained import allowed_tokens, new_matcher
from reference_impls.engines.hf_generate.engine import HFGenerateEngine


class GrammarMask(LogitsProcessor):
    """Consumes the token generate chose last, then masks the scores to what the grammar allows."""

    def __init__(self, matcher, prompt_len: int, vocab: int) -> None:
        self.matcher = matcher
        self.prompt_len = prompt_len
        self.vocab = vocab

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.prompt_len:
            self.matcher.consume_token(int(input_ids[0, -1]))
        allowed = torch.from_numpy(allowed_tokens(self.matcher, self.vocab))
        return scores.masked_fill(~allowed[: scores.shape[-1]], float("-inf"))


class HFGuidedEngine(HFGenerateEngine):
    capabilities = ("response_format",)

    def __init__(self, spec: EngineSpec) -> None:
        super().__init__(spec)
        self.model_dir = spec.model_path
        self.vocab = int(self.model.config.vocab_size)

    def logits_processors(self, request: Request, prompt_len: int) -> LogitsProcessorList:
        processors = LogitsProcessorList()
        if request.response_format is not None:
            matcher = new_matcher(self.model_dir, request.response_format)
            processors.append(GrammarMask(matcher, prompt_len, self.vocab))
        return processors


def create_engine(spec: EngineSpec) -> HFGuidedEngine:
    return HFGuidedEngine(spec)
