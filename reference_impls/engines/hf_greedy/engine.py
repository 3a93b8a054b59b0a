"""The baseline engine: the reference's own greedy decoding, one request at a time, FIFO.

Each `step()` runs one model forward and emits one token, through `GreedyStepper`, the code path
that computes the reference outputs, so this engine's tokens equal the reference's by construction.
"""

from __future__ import annotations

from collections import deque

from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, Request
from reference_impls.greedy import GreedyStepper, load_model


class HFGreedyEngine:
    def __init__(self, spec: EngineSpec) -> None:
        self.model = load_model(
            spec.model_path, device=spec.device, dtype=spec.dtype, threads=spec.threads
        )
        self._waiting: deque[Request] = deque()
        self._active: tuple[Request, GreedyStepper] | None = None
        self._forwards_done = 0  # by steppers already finished

    def add_request(self, request: Request) -> None:
        self._waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return self._active is not None or bool(self._waiting)

    def step(self) -> list[Event]:
        if self._active is None:
            if not self._waiting:
                return []
            request = self._waiting.popleft()
            stepper = GreedyStepper(
                self.model,
                request.prompt_token_ids,
                request.max_new_tokens,
                stop_token_ids=request.stop_token_ids,
                top_k=request.top_logprobs,
            )
            self._active = (request, stepper)
        request, stepper = self._active
        result = stepper.step()
        if result.finished:
            self._forwards_done += stepper.forward_calls
            self._active = None
        return [
            Event(
                request_id=request.request_id,
                token_ids=[result.token],
                finished=result.finished,
                logprobs=[result.top_logprobs] if request.top_logprobs > 0 else None,
            )
        ]

    def counters(self) -> dict[str, int]:
        active = self._active[1].forward_calls if self._active is not None else 0
        return {FORWARD_COUNTER: self._forwards_done + active}


def create_engine(spec: EngineSpec) -> HFGreedyEngine:
    return HFGreedyEngine(spec)
