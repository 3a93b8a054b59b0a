"""Wrong on purpose: the starter on slightly different weights (1% noise on every matrix)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from starter_base import load_starter

starter = load_starter()


def create_engine(spec):
    engine = starter.GreedyEngine(spec)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in engine.model.parameters():
            if parameter.dim() == 2:
                noise = torch.randn(parameter.shape, generator=generator) * parameter.std() * 0.01
                parameter.add_(noise)
    return engine
