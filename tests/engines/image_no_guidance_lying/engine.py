"""Wrong on purpose, and lying about it: guidance 1.0 whatever the request asks, but it claims
every model call evaluated the unconditional branch. The trajectory, the probe latent and the
image itself give it away."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from image_base import ImageEngine


class NoGuidanceLying(ImageEngine):
    def answer(self, request):
        out = self.run(request, guidance=1.0)  # the fault: v = v_c
        return self.event(request, out, uncond_calls=request.steps - 1)


def create_engine(spec):
    return NoGuidanceLying(spec)
