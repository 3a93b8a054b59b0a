"""Wrong on purpose: dies of a segmentation fault in the middle of decoding."""

import ctypes
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from starter_base import load_starter

starter = load_starter()


class Crash(starter.GreedyEngine):
    def step(self):
        if self.forwards == 3:
            ctypes.string_at(0)
        return super().step()


def create_engine(spec):
    return Crash(spec)
