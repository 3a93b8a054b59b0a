"""Wrong on purpose, and lying about it: a cache of whole answers keyed by everything that decides
them (prompt, seed, probe step; the schedule and guidance are the workload's), replayed unchanged
on a hit: the cached pixels, probe latent and trajectory, claiming the full ``steps - 1`` model
calls it did not run. Its forward counter counts only what it ran, so a run that repeats a
request shows fewer forwards than the model calls its images claim; a run that repeats nothing
is, byte for byte, the reference's."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from image_base import ImageEngine

from pytest_vibeserve.contract import Event


class CachedLying(ImageEngine):
    def __init__(self, spec):
        super().__init__(spec)
        self.cache = {}

    def answer(self, request):
        key = (request.prompt, request.seed, request.probe_step)
        if key not in self.cache:
            self.cache[key] = super().answer(request).payload
        return Event(request.request_id, [], finished=True, payload=self.cache[key])


def create_engine(spec):
    return CachedLying(spec)
