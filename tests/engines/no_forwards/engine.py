"""Wrong on purpose: right tokens, but its counters claim it never ran the model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from starter_base import load_starter

starter = load_starter()


class NoForwards(starter.GreedyEngine):
    def counters(self):
        return {"model_forward_calls": 0}


def create_engine(spec):
    return NoForwards(spec)
