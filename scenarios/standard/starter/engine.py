"""Starter engine for standard: plain greedy decoding, one request at a time, no cache reuse.

Correct and slow on purpose: requests wait in a FIFO, each is prefilled and decoded alone with a
fresh KV cache, one token per model forward. It honours ``top_logprobs``. The synthesis loop starts
here; everything it may import is the contract, torch and transformers.
"""

from collections import deque

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, Request


class GreedyEngine:
    capabilities = ("logprobs",)

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
            self.current = self.waiting.popleft()
            self.cache = DynamicCache()
            self.next_input = torch.tensor([self.current.prompt_token_ids], device=self.device)
            self.emitted = 0
        logits = self.model(
            input_ids=self.next_input, cache=self.cache, use_cache=True, logits_to_keep=1
        ).logits[0, -1]
        self.forwards += 1
        token = int(logits.argmax())
        self.emitted += 1
        request = self.current
        logprobs = None
        if request.top_logprobs > 0:
            values, ids = torch.log_softmax(logits.float(), dim=-1).topk(request.top_logprobs)
            top = {int(i): float(v) for i, v in zip(ids, values, strict=True)}
            logprobs = [top]
        finished = self.emitted >= request.max_new_tokens or token in request.stop_token_ids
        if finished:
            self.current = self.cache = self.next_input = None
        else:
            self.next_input = torch.tensor([[token]], device=self.device)
        return [Event(request.request_id, [token], finished, logprobs)]


def create_engine(spec: EngineSpec) -> GreedyEngine:
    return GreedyEngine(spec)
