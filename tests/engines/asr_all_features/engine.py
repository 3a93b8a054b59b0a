"""The positive control: incremental encoder, cross-attention keys/values appended, 4 streams
decoded per forward. Exact: it must pass every streaming_asr check."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from asr_base import AsrFeatures, rendered_module

_module = rendered_module(AsrFeatures(encoder="incremental", cross_kv="append", max_batch=4))


def create_engine(spec):
    return _module.create_engine(spec)
