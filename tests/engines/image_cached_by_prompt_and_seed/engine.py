"""Wrong on purpose: a cache of whole answers keyed by (prompt, seed), honest about a hit: it
reports 0 model calls (and 0 unconditional ones) with the cached pixels, probe latent and
trajectory. A repeated prompt and seed with another probe step is answered from the cache."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from image_base import ImageEngine

from pytest_vibeserve.contract import Event


class CachedByPromptAndSeed(ImageEngine):
    def __init__(self, spec):
        super().__init__(spec)
        self.cache = {}

    def answer(self, request):
        key = (request.prompt, request.seed)  # the fault: the key lacks the probe step
        if key not in self.cache:
            self.cache[key] = payload = super().answer(request).payload
            return Event(request.request_id, [], finished=True, payload=payload)
        payload = {**self.cache[key], "model_calls": 0, "uncond_calls": 0}
        return Event(request.request_id, [], finished=True, payload=payload)


def create_engine(spec):
    return CachedByPromptAndSeed(spec)
