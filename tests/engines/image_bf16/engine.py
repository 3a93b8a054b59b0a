"""An approximate engine: the synthesis loop's rendered image engine with the whole model in
bfloat16 (weights and activations; the latent and the Euler update stay fp32)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from image_base import rendered_module

_module = rendered_module(dtype="bfloat16")


def create_engine(spec):
    return _module.create_engine(spec)
