"""Starter engine for json_decoding: the model plus llguidance's mask, one token per forward.

Correct and slow on purpose. Requests wait in a FIFO; each is prefilled alone with a fresh KV cache
and its schema compiled afresh (no grammar cache). Then, per token, one model forward, and:

- if the grammar forces tokens (``compute_ff_tokens``: the bytes it fully determines), the next of
  them is emitted as it is (the forward still runs: it writes that token's keys and values);
- otherwise the mask of allowed tokens is computed *after* the forward (no overlap) and the token
  is the argmax of the logits over it.

This is the scenario's pinned configuration (llguidance, compact separators, forced tokens taken),
so its tokens are the reference's. It reports ``grammar_forced_tokens`` and ``grammar_mask_ms``.
A request without a ``response_format`` is decoded unconstrained. The synthesis loop starts here;
everything it may import is the contract, torch, transformers, numpy and llguidance.
"""

import time
from collections import deque

import llguidance
import llguidance.hf
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, Request

COMPILE_OPTIONS = {"whitespace_flexible": False}  # compact JSON: "," and ":", no free whitespace


def schema_of(response_format: dict) -> dict:
    if response_format.get("type") == "json_object":
        return {"type": "object"}
    return response_format["json_schema"]["schema"]


class JsonEngine:
    capabilities = ("response_format",)

    def __init__(self, spec: EngineSpec) -> None:
        torch.set_num_threads(spec.threads)
        self.device = torch.device(spec.device)
        self.model = AutoModelForCausalLM.from_pretrained(
            spec.model_path, dtype=getattr(torch, spec.dtype)
        )
        self.model.to(self.device).eval()
        self.vocab = int(self.model.config.vocab_size)
        tokenizer = AutoTokenizer.from_pretrained(spec.model_path)
        self.ll_tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=max(self.vocab, len(tokenizer))
        )
        self.waiting: deque[Request] = deque()
        self.current: Request | None = None
        self.matcher = None
        self.forced: list[int] = []
        self.cache: DynamicCache | None = None
        self.next_input: torch.Tensor | None = None
        self.emitted = 0
        self.forwards = 0
        self.forced_tokens = 0
        self.mask_ms = 0.0

    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return self.current is not None or bool(self.waiting)

    def counters(self) -> dict:
        return {
            FORWARD_COUNTER: self.forwards,
            "grammar_forced_tokens": self.forced_tokens,
            "grammar_mask_ms": self.mask_ms,
        }

    def _start(self, request: Request) -> None:
        self.current = request
        self.cache = DynamicCache()
        self.next_input = torch.tensor([request.prompt_token_ids], device=self.device)
        self.emitted = 0
        self.forced = []
        self.matcher = None
        if request.response_format is not None:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                schema_of(request.response_format), defaults=COMPILE_OPTIONS
            )
            self.matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
            if self.matcher.is_error():
                raise ValueError(f"cannot compile the schema: {self.matcher.get_error()}")

    def _choose(self, logits: torch.Tensor) -> int:
        matcher = self.matcher
        if matcher is None:
            return int(logits.argmax())
        started = time.perf_counter()
        if not self.forced:
            self.forced = list(matcher.compute_ff_tokens())
        if self.forced:
            token = self.forced.pop(0)
            self.forced_tokens += 1
        else:
            bits = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)
            allowed = np.unpackbits(bits, bitorder="little")[: self.vocab].astype(bool)
            if allowed.sum() == 1:
                self.forced_tokens += 1
            masked = torch.where(torch.from_numpy(allowed), logits.float(), float("-inf"))
            token = int(masked.argmax())
        matcher.consume_token(token)
        self.mask_ms += (time.perf_counter() - started) * 1000
        return token

    @torch.inference_mode()
    def step(self) -> list[Event]:
        if self.current is None:
            self._start(self.waiting.popleft())
        logits = self.model(
            input_ids=self.next_input, cache=self.cache, use_cache=True, logits_to_keep=1
        ).logits[0, -1]
        self.forwards += 1
        token = self._choose(logits)
        self.emitted += 1
        request = self.current
        finished = (
            self.emitted >= request.max_new_tokens
            or token in request.stop_token_ids
            or (self.matcher is not None and self.matcher.is_stopped())
        )
        if finished:
            self.current = self.cache = self.next_input = self.matcher = None
        else:
            self.next_input = torch.tensor([[token]], device=self.device)
        return [Event(request.request_id, [token], finished)]


def create_engine(spec: EngineSpec) -> JsonEngine:
    return JsonEngine(spec)
