"""Peer engine ``hf_generate``: how a transformers user serves, ``model.generate`` per request.

Requests run one at a time, FIFO, each through ``generate`` (greedy, its own static defaults)
on a background thread; a streamer hands tokens to ``step()`` as generate produces them, so the
parent sees real first-token and per-token times. No batching across requests.
"""

from __future__ import annotations

import queue
import threading
from collections import deque

import torch
from transformers import AutoModelForCausalLM, LogitsProcessorList
from transformers.generation.streamers import BaseStreamer

from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, Request

DONE = object()


class TokenQueue(BaseStreamer):
    """Receives generate's tokens (the prompt first, then one per step) into a queue."""

    def __init__(self) -> None:
        self.tokens: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate streams the prompt first
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.tokens.put(int(token))

    def end(self) -> None:
        self.tokens.put(DONE)


class HFGenerateEngine:
    def __init__(self, spec: EngineSpec) -> None:
        torch.set_num_threads(spec.threads)
        self.model = AutoModelForCausalLM.from_pretrained(
            spec.model_path, dtype=getattr(torch, spec.dtype)
        )
        self.model.to(spec.device).eval()
        self.device = spec.device
        self.waiting: deque[Request] = deque()
        self.current: tuple[Request, TokenQueue, threading.Thread] | None = None
        self.emitted = 0
        self.forwards = 0
        self.error: BaseException | None = None

    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return self.current is not None or bool(self.waiting)

    def counters(self) -> dict[str, int]:
        return {FORWARD_COUNTER: self.forwards}

    def logits_processors(self, request: Request, prompt_len: int) -> LogitsProcessorList:
        """What generate applies to the scores besides greedy choice (none here; a subclass may
        constrain them, as hf_guided does)."""
        return LogitsProcessorList()

    def _generate(self, request: Request, streamer: TokenQueue) -> None:
        prompt = torch.tensor([request.prompt_token_ids], device=self.device)
        try:
            processors = self.logits_processors(request, prompt.shape[1])
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

    def step(self) -> list[Event]:
        if self.current is None:
            request = self.waiting.popleft()
            streamer = TokenQueue()
            thread = threading.Thread(target=self._generate, args=(request, streamer), daemon=True)
            self.current = (request, streamer, thread)
            self.emitted = 0
            thread.start()
        request, streamer, thread = self.current
        tokens = [streamer.tokens.get()]
        while not streamer.tokens.empty():
            tokens.append(streamer.tokens.get_nowait())
        if self.error is not None:
            raise self.error
        done = tokens[-1] is DONE
        tokens = [t for t in tokens if t is not DONE]
        self.emitted += len(tokens)
        self.forwards += len(tokens)  # one forward per generated token
        finished = done or self.emitted >= request.max_new_tokens
        if finished:
            thread.join()
            self.current = None
        return [Event(request.request_id, tokens, finished)] if tokens or finished else []


def create_engine(spec: EngineSpec) -> HFGenerateEngine:
    return HFGenerateEngine(spec)
