"""Wrong on purpose: an incremental encoder that skips the lookahead recompute.

Every encoder frame is taken as final once computed, so the frames at the end of a chunk, which
the next chunk's audio would change through the layers' 3-frame lookahead windows, keep the
values they had without that audio. The transcripts after the first chunk must not match.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from asr_base import AsrFeatures, rendered_module

_module = rendered_module(
    AsrFeatures(encoder="incremental"),
    fault=(
        "stream.final[index] = max(final_inputs - self.ahead[index], 0)",
        "stream.final[index] = final_inputs  # the fault: no frame waits for its lookahead",
    ),
)


def create_engine(spec):
    return _module.create_engine(spec)
