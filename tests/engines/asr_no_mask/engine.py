"""Wrong on purpose: the encoder runs without its attention mask.

MoonshineStreaming applies its sliding windows only when an attention_mask is passed; without
one every encoder frame attends to the whole utterance, and every transcript changes.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from asr_base import AsrFeatures, rendered_module

_module = rendered_module(
    AsrFeatures(),
    fault=(
        "states = self.encoder(values, attention_mask=mask).last_hidden_state[0]",
        "states = self.encoder(values).last_hidden_state[0]  # the fault: no mask, no windows",
    ),
)


def create_engine(spec):
    return _module.create_engine(spec)
