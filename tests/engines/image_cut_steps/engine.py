"""Wrong on purpose: two fewer schedule points (``steps - 2``: two model calls fewer), reported
honestly. The image barely changes, so only the model-call count gives it away."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from image_base import ImageEngine


class CutSteps(ImageEngine):
    def answer(self, request):
        return self.event(request, self.run_cut(request))  # the fault: steps - 3 model calls


def create_engine(spec):
    return CutSteps(spec)
