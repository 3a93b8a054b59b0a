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
from reference_impls.engines.hf_generate.engine import HFGenerateEngine, TokenQueue


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

    def _generate(self, request: Request, streamer: TokenQueue) -> None:
        prompt = torch.tensor([request.prompt_token_ids], device=self.device)
        processors = LogitsProcessorList()
        try:
            if request.response_format is not None:
                matcher = new_matcher(self.model_dir, request.response_format)
                processors.append(GrammarMask(matcher, prompt.shape[1], self.vocab))
            with torch.inference_mode():
                self.model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=request.max_new_tokens,
                    min_new_tokens=0,
                    do_sample=False,
                    eos_token_id=list(request.stop_token_ids) or None,
                    pad_token_id=0,
                    streamer=streamer,
                    logits_processor=processors,
                )
        except BaseException as error:  # noqa: BLE001 - re-raised in step(), in the worker
            self.error = error
            streamer.end()


def create_engine(spec: EngineSpec) -> HFGuidedEngine:
    return HFGuidedEngine(spec)
