"""A hybrid prefix-caching engine with a pluggable cache policy, for wrong engines to get wrong.

It serves one request at a time like the hybrid_ssm starter, but splits each prompt at
``len(prompt) - TAIL`` (the tiny workload's tail length), restores a deep copy of a cached model
cache (attention KV and Mamba2 conv/SSM state) for the part before the split when ``lookup``
finds one, and otherwise prefills that part and hands a snapshot to ``store``.
"""

import copy
from collections import deque

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, Request

TAIL = 8  # tail_tokens of the hybrid_ssm tiny workload


class PrefixCachingEngine:
    def __init__(self, spec: EngineSpec) -> None:
        torch.set_num_threads(spec.threads)
        self.model = AutoModelForCausalLM.from_pretrained(spec.model_path, dtype=torch.float32)
        self.model.eval()
        self.waiting: deque[Request] = deque()
        self.forwards = 0

    # the policy: subclasses decide what a prefix is keyed by and what is kept
    def lookup(self, prefix: tuple[int, ...]) -> DynamicCache | None:
        raise NotImplementedError

    def store(self, prefix: tuple[int, ...], cache: DynamicCache) -> None:
        raise NotImplementedError

    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting)

    def counters(self) -> dict[str, int]:
        return {FORWARD_COUNTER: self.forwards}

    def _forward(self, tokens, cache) -> torch.Tensor:
        self.forwards += 1
        ids = torch.tensor([list(tokens)])
        return self.model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits

    @torch.inference_mode()
    def step(self) -> list[Event]:
        if not self.waiting:
            return []
        request = self.waiting.popleft()
        prompt = request.prompt_token_ids
        split = max(1, len(prompt) - TAIL)
        prefix, tail = prompt[:split], prompt[split:]
        cached = self.lookup(prefix)
        if cached is None:
            cache = DynamicCache(config=self.model.config)
            self._forward(prefix, cache)
            self.store(prefix, copy.deepcopy(cache))
        else:
            cache = copy.deepcopy(cached)
        logits = self._forward(tail, cache)
        tokens = []
        while True:
            token = int(logits[0, -1].argmax())
            tokens.append(token)
            if len(tokens) == request.max_new_tokens or token in request.stop_token_ids:
                break
            logits = self._forward([token], cache)
        return [Event(request.request_id, tokens, True)]
