"""Wrong on purpose: stops answering in the middle of decoding."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from starter_base import load_starter

starter = load_starter()


class Hang(starter.GreedyEngine):
    def step(self):
        if self.forwards == 3:
            time.sleep(3600)
        return super().step()


def create_engine(spec):
    return Hang(spec)
