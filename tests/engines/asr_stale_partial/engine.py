"""Wrong on purpose: every other partial is the previous transcript sent again.

A cheap way to halve the decoding work: on odd chunks (not the final one) answer with the last
transcript instead of transcribing the new audio. Each such partial is stale.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from asr_base import AsrFeatures, rendered_module

_module = rendered_module(AsrFeatures(max_batch=4))


class StalePartials(_module.AsrEngine):
    def __init__(self, spec):
        super().__init__(spec)
        self.last = {}

    def step(self):
        events = super().step()
        for event in events:
            chunk = event.payload["chunk"]
            if chunk % 2 == 1 and not event.finished and event.request_id in self.last:
                event.token_ids = list(self.last[event.request_id])  # the fault
            self.last[event.request_id] = list(event.token_ids)
        return events


def create_engine(spec):
    return StalePartials(spec)
