"""A text-to-image engine with no model, for the server's tests: deterministic answers, fast.

Its pixels and probe latent are drawn by numpy from the request's seed and prompt, so the same
request gets the same image from any process; the trajectory is ``steps - 1`` lists of 16 zeros.
``spec.options["crash_on_prompt"]``: a prompt that makes ``step`` raise (a crashing engine).
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from pathlib import Path

import numpy as np

from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, ImageRequest, image_event

LATENT_CHANNELS = 16
VAE_SCALE = 8  # pixels per latent position along each side


class ImageFake:
    def __init__(self, spec: EngineSpec) -> None:
        config = json.loads((Path(spec.model_path) / "config.json").read_text())
        self.image_size = int(config["image_size"])
        self.crash_on_prompt = spec.options.get("crash_on_prompt")
        self.waiting: deque[ImageRequest] = deque()
        self.forwards = 0

    def add_image(self, request: ImageRequest) -> None:
        self.waiting.append(request)

    def step(self) -> list[Event]:
        if not self.waiting:
            return []
        request = self.waiting.popleft()
        if request.prompt == self.crash_on_prompt:
            raise RuntimeError(f"image_fake crashes on the prompt {request.prompt!r} (on purpose)")
        key = hashlib.sha256(f"{request.seed}\0{request.prompt}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(key[:8], "little"))
        size, side = self.image_size, self.image_size // VAE_SCALE
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        probe = rng.standard_normal((LATENT_CHANNELS, side, side), dtype=np.float32)
        calls = request.model_calls
        self.forwards += calls
        return [
            image_event(
                request.request_id,
                pixels,
                probe_latent=probe,
                trajectory=[[0.0] * LATENT_CHANNELS for _ in range(calls)],
                model_calls=calls,
                uncond_calls=calls,
                timings_ms={"denoise": float(calls)},  # not measured: the same in every run
            )
        ]

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting)

    def counters(self) -> dict[str, int]:
        return {FORWARD_COUNTER: self.forwards}


def create_engine(spec: EngineSpec) -> ImageFake:
    return ImageFake(spec)
