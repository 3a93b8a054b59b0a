"""Wrong on purpose: the starter, but the 6th token of the first request it serves is off by one."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from starter_base import load_starter

starter = load_starter()


class OneWrongToken(starter.GreedyEngine):
    def step(self):
        request = self.current or self.waiting[0]
        position = self.emitted if self.current is not None else 0
        events = super().step()
        if request.request_id.endswith("-0") and position == 5:
            events[0].token_ids[0] = (events[0].token_ids[0] + 1) % self.model.config.vocab_size
        return events


def create_engine(spec):
    return OneWrongToken(spec)
