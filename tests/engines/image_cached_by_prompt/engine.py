"""Wrong on purpose: a cache of whole answers keyed by the prompt alone. A repeated prompt gets
the first answer (its pixels, probe latent, trajectory and claimed model calls) under the new
request id, whatever its seed or probe step; its forward counter counts only what it ran."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from image_base import ImageEngine

from pytest_vibeserve.contract import Event


class CachedByPrompt(ImageEngine):
    def __init__(self, spec):
        super().__init__(spec)
        self.cache = {}

    def answer(self, request):
        cached = self.cache.get(request.prompt)  # the fault: the key lacks seed and probe step
        if cached is None:
            cached = self.cache[request.prompt] = super().answer(request).payload
        return Event(request.request_id, [], finished=True, payload=cached)


def create_engine(spec):
    return CachedByPrompt(spec)
