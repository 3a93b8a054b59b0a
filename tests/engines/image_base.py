"""unified_multimodal engines for the harness's tests: the reference's own ``generate`` (the model
directory's ``modeling_showo2``) behind the engine contract, with hooks a wrong engine overrides.

``ImageEngine.answer(request)`` makes one image's event: by default it runs ``generate`` with the
request's own schedule, guidance and probe step, counts its model calls as forwards and reports
them honestly. A wrong engine overrides ``answer`` (or calls ``run``/``event`` with other values)
to inject one fault. ``rendered_module`` gives the synthesis loop's rendered image engine of given
features instead (what the loop itself would try).
"""

from __future__ import annotations

import types
from collections import deque
from pathlib import Path
from typing import Any

import torch

from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, ImageRequest, image_event
from reference_impls.showo2 import load_modeling


class ImageEngine:
    def __init__(self, spec: EngineSpec) -> None:
        torch.set_num_threads(spec.threads)
        self.modeling = load_modeling(Path(spec.model_path))
        self.model = self.modeling.load(spec.model_path, spec.device)
        self.waiting: deque[ImageRequest] = deque()
        self.forwards = 0

    # -- the contract --------------------------------------------------------------------------
    def add_image(self, request: ImageRequest) -> None:
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting)

    def step(self) -> list[Event]:
        return [self.answer(self.waiting.popleft())] if self.waiting else []

    def counters(self) -> dict[str, int]:
        return {FORWARD_COUNTER: self.forwards}

    # -- hooks -----------------------------------------------------------------------------------
    def answer(self, request: ImageRequest) -> Event:
        """One image's event (override to inject a fault)."""
        return self.event(request, self.run(request))

    def run(self, request: ImageRequest, **overrides: Any) -> Any:
        """``modeling.generate`` for ``request`` (``overrides``: steps, guidance, probe_step...),
        its real model calls added to the forward counter; returns the ``Generation``."""
        args = dict(
            seed=request.seed,
            steps=request.steps,
            guidance=request.guidance,
            probe_step=request.probe_step,
        )
        args.update(overrides)
        out = self.modeling.generate(self.model, request.prompt, **args)
        self.forwards += out.model_calls
        return out

    def run_cut(self, request: ImageRequest, fewer: int = 2) -> Any:
        """``run`` on a schedule of ``fewer`` points less (its probe step clamped into it)."""
        steps = request.steps - fewer
        return self.run(request, steps=steps, probe_step=min(request.probe_step, steps - 2))

    def event(self, request: ImageRequest, out: Any, **claims: Any) -> Event:
        """The event of ``out`` answering ``request``; ``claims`` replace what it reports
        (model_calls, uncond_calls, trajectory)."""
        fields = dict(
            probe_latent=out.probe_latent,
            trajectory=out.trajectory,
            model_calls=out.model_calls,
            uncond_calls=out.uncond_calls,
            timings_ms={k: v * 1000 for k, v in out.timings_s.items()},
        )
        fields.update(claims)
        return image_event(request.request_id, out.pixels, **fields)


def rendered_module(**features: Any) -> types.ModuleType:
    """The synthesis loop's rendered image engine (agents/recipes/image_engine.py) of
    ``features``, loaded as a module."""
    from agents.recipes.image_engine import ImageFeatures, render_engine

    source = render_engine(ImageFeatures(**features))
    module = types.ModuleType("image_rendered")
    exec(compile(source, "image_rendered.py", "exec"), module.__dict__)
    return module
