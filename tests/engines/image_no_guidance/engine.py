"""Wrong on purpose: guidance 1.0 whatever the request asks (the conditional velocity alone),
reported honestly: no model call evaluated the unconditional branch for guidance."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from image_base import ImageEngine


class NoGuidance(ImageEngine):
    def answer(self, request):
        out = self.run(request, guidance=1.0)  # the fault: v = v_c
        return self.event(request, out, uncond_calls=0)


def create_engine(spec):
    return NoGuidance(spec)
