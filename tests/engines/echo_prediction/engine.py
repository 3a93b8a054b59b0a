"""Wrong on purpose: runs the model once, then returns the prediction as the output, unverified."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from starter_base import load_starter

from pytest_vibeserve.contract import Event

starter = load_starter()


class EchoPrediction(starter.GreedyEngine):
    def step(self):
        if self.current is not None or self.waiting[0].prediction_token_ids is None:
            return super().step()
        request = self.waiting[0]
        first = super().step()[0]  # one real forward, so the counters look honest
        if first.finished:
            return [first]
        self.current = self.cache = self.next_input = None
        tail = list(request.prediction_token_ids[1 : request.max_new_tokens])
        return [Event(request.request_id, first.token_ids + tail, True)]


def create_engine(spec):
    return EchoPrediction(spec)
