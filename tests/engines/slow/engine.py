"""Correct but slow on purpose: the starter with 20 ms of idle time after every forward."""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from starter_base import load_starter

starter = load_starter()


class Slow(starter.GreedyEngine):
    def step(self):
        time.sleep(0.02)
        return super().step()


def create_engine(spec):
    return Slow(spec)
