"""The baseline of json_decoding: the reference's own constrained greedy decoding, one request at
a time, FIFO, through ``ConstrainedStepper``, the code path that computes the reference outputs
(reference_impls/constrained.py), so its tokens equal the reference's by construction. Reports the
tokens the grammar forced (each still costs this engine a model forward)."""

from __future__ import annotations

from collections import deque

from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, Request
from reference_impls.constrained import ConstrainedStepper
from reference_impls.greedy import GreedyStepper, load_model


class HFConstrainedEngine:
    capabilities = ("response_format",)

    def __init__(self, spec: EngineSpec) -> None:
        self.model_dir = spec.model_path
        self.model = load_model(
            spec.model_path, device=spec.device, dtype=spec.dtype, threads=spec.threads
        )
        self._waiting: deque[Request] = deque()
        self._active: tuple[Request, ConstrainedStepper | GreedyStepper] | None = None
        self._forwards_done = 0
        self._forced_done = 0

    def add_request(self, request: Request) -> None:
        self._waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return self._active is not None or bool(self._waiting)

    def _start(self, request: Request) -> ConstrainedStepper | GreedyStepper:
        if request.response_format is None:
            return GreedyStepper(
                self.model,
                request.prompt_token_ids,
                request.max_new_tokens,
                stop_token_ids=request.stop_token_ids,
            )
        return ConstrainedStepper(
            self.model,
            self.model_dir,
            request.prompt_token_ids,
            request.max_new_tokens,
            request.response_format,
            stop_token_ids=request.stop_token_ids,
        )

    def step(self) -> list[Event]:
        if self._active is None:
            if not self._waiting:
                return []
            request = self._waiting.popleft()
            self._active = (request, self._start(request))
        request, stepper = self._active
        result = stepper.step()
        if result.finished:
            self._forwards_done += stepper.forward_calls
            self._forced_done += getattr(stepper, "forced_tokens", 0)
            self._active = None
        return [Event(request.request_id, [result.token], result.finished)]

    def counters(self) -> dict:
        stepper = self._active[1] if self._active is not None else None
        return {
            FORWARD_COUNTER: self._forwards_done + (stepper.forward_calls if stepper else 0),
            "grammar_forced_tokens": self._forced_done + getattr(stepper, "forced_tokens", 0),
        }


def create_engine(spec: EngineSpec) -> HFConstrainedEngine:
    return HFConstrainedEngine(spec)
