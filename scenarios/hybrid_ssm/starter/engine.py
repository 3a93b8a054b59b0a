"""Starter engine for hybrid_ssm: plain greedy decoding, one request at a time, nothing shared.

Correct and slow on purpose: every request prefills its whole prompt (the long shared prefix
included) from scratch, then decodes alone, one token per model forward. The synthesis loop
starts here; everything it may import is the contract, torch and transformers.
"""

from collections import deque

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, Request


class GreedyEngine:
    def __init__(self, spec: EngineSpec) -> None:
        torch.set_num_threads(spec.threads)
        dtype = getattr(torch, spec.dtype)
        self.device = torch.device(spec.device)
        self.model = AutoModelForCausalLM.from_pretrained(spec.model_path, dtype=dtype)
        self.model.to(self.device).eval()
        self.waiting: deque[Request] = deque()
        self.current: Request | None = None
        self.cache: DynamicCache | None = None
        self.next_input: torch.Tensor | None = None
        self.emitted = 0
        self.forwards = 0

    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return self.current is not None or bool(self.waiting)

    def counters(self) -> dict[str, int]:
        return {FORWARD_COUNTER: self.forwards}

    @torch.inference_mode()
    def step(self) -> list[Event]:
        if self.current is None:
            if not self.waiting:
                return []
            self.current = self.waiting.popleft()
            # A hybrid model's cache: keys/values for attention layers, conv and SSM state for
            # the Mamba2 layers (the config says which layer is which).
            self.cache = DynamicCache(config=self.model.config)
            self.next_input = torch.tensor([self.current.prompt_token_ids], device=self.device)
            self.emitted = 0
        logits = self.model(
            input_ids=self.next_input, cache=self.cache, use_cache=True, logits_to_keep=1
        ).logits  # [1, 1, vocab]
        self.forwards += 1
        token = int(logits[0, -1].argmax())
        self.emitted += 1
        request = self.current
        finished = self.emitted >= request.max_new_tokens or token in request.stop_token_ids
        if finished:
            self.current = self.cache = self.next_input = None
        else:
            self.next_input = torch.tensor([[token]], device=self.device)
        return [Event(request.request_id, [token], finished)]


def create_engine(spec: EngineSpec) -> GreedyEngine:
    return GreedyEngine(spec)
