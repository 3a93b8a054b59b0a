"""Wrong on purpose, and lying about it: two fewer schedule points, but it claims the full
``steps - 1`` model calls (and counts them as forwards), its trajectory padded to that length by
repeating its last entry. Only the numbers themselves (trajectory, probe latent) give it away."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from image_base import ImageEngine


class CutStepsLying(ImageEngine):
    def answer(self, request):
        out = self.run_cut(request)
        claimed = request.steps - 1
        self.forwards += claimed - out.model_calls  # the lie reaches the forward counter too
        trajectory = out.trajectory + [out.trajectory[-1]] * (claimed - len(out.trajectory))
        return self.event(
            request, out, model_calls=claimed, uncond_calls=claimed, trajectory=trajectory
        )


def create_engine(spec):
    return CutStepsLying(spec)
