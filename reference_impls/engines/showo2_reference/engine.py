"""The reference itself as an engine: the model directory's ``modeling_showo2.generate``, one
image at a time, the original Show-o2 data flow in fp32 (the unified_multimodal baseline)."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import torch

from pytest_vibeserve.contract import EngineSpec, Event, ImageRequest, image_event
from reference_impls.showo2 import load_modeling


class ReferenceImageEngine:
    def __init__(self, spec: EngineSpec) -> None:
        torch.set_num_threads(spec.threads)
        self.modeling = load_modeling(Path(spec.model_path))
        self.model = self.modeling.load(spec.model_path, spec.device)
        self.waiting: deque[ImageRequest] = deque()
        self.forwards = 0

    def add_image(self, request: ImageRequest) -> None:
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting)

    def step(self) -> list[Event]:
        request = self.waiting.popleft()
        out = self.modeling.generate(
            self.model,
            request.prompt,
            seed=request.seed,
            steps=request.steps,
            guidance=request.guidance,
            probe_step=request.probe_step,
        )
        self.forwards += out.model_calls
        return [
            image_event(
                request.request_id,
                out.pixels,
                probe_latent=out.probe_latent,
                trajectory=out.trajectory,
                model_calls=out.model_calls,
                uncond_calls=out.uncond_calls,
                timings_ms={k: v * 1000 for k, v in out.timings_s.items()},
            )
        ]

    def counters(self) -> dict[str, int]:
        return {"model_forward_calls": self.forwards}


def create_engine(spec: EngineSpec) -> ReferenceImageEngine:
    started = time.perf_counter()
    engine = ReferenceImageEngine(spec)
    print(f"showo2_reference loaded in {time.perf_counter() - started:.1f} s", flush=True)
    return engine
