"""The machine's limits, measured once per session, and an engine's efficiency against them.

Batch-1 decoding reads every weight once per token, so ``model bytes / memory bandwidth`` is the
floor on time per token (the paper's "kernel-perfect ceiling"); ``2 * params`` FLOPs per token over
the peak matmul rate is the compute floor. Speculative or batched engines emit several tokens per
weight read and can beat the batch-1 floor: an efficiency over 100% says exactly that.

Images (scenario unified_multimodal) have a compute ceiling instead: the FLOPs of the exact
minimal algorithm for one image over the peak matmul rate, in fp32 and in bf16 (the precision an
engine may choose; the gates decide whether its images still pass).

The probe runs in its own process with the engines' thread count, so the parent's state does not
leak into the figures: ``python -m pytest_vibeserve.roofline --threads N --device cpu``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

BANDWIDTH_BYTES = 512 << 20  # well past any last-level cache
MATMUL_N = 2048


@dataclass(frozen=True, slots=True)
class MachineLimits:
    device: str
    threads: int
    read_bandwidth_gbs: float  # GB/s (1e9), best of several full reads
    matmul_gflops: float  # fp32 GFLOP/s, best of several square matmuls
    matmul_bf16_gflops: float = float("nan")  # the same in bf16 (AMX/tensor cores where present)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ImageCeiling:
    """One image's FLOPs per stage (exact minimal algorithm, and as the reference runs it) and
    the time the minimal ones take at the measured peak."""

    minimal_flops: dict[str, int]
    reference_flops: dict[str, int]
    fp32_s: float
    bf16_s: float  # NaN where bf16 matmul was not measured

    def ceiling(self, weight_bits: float) -> tuple[str, float]:
        """The precision an engine computes in (its reported weight bits: 16 is bf16, anything
        else or unreported fp32) and the ceiling at that precision's peak; an engine in bf16
        on a machine whose bf16 peak was not measured is held to the fp32 one."""
        if weight_bits == 16 and not math.isnan(self.bf16_s):
            return "bf16", self.bf16_s
        return "fp32", self.fp32_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "minimal_gflop": sum(self.minimal_flops.values()) / 1e9,
            "reference_gflop": sum(self.reference_flops.values()) / 1e9,
            "minimal_gflop_by_stage": {k: v / 1e9 for k, v in self.minimal_flops.items()},
            "reference_gflop_by_stage": {k: v / 1e9 for k, v in self.reference_flops.items()},
            "ceiling_fp32_s": self.fp32_s,
            "ceiling_bf16_s": self.bf16_s,
        }


@dataclass(frozen=True, slots=True)
class Roofline:
    limits: MachineLimits
    model_bytes: int
    decode_floor_ms: float  # batch-1 time per token if every weight byte is read once at peak
    roofline_tok_per_s: float
    image: ImageCeiling | None = None  # image models: the compute ceiling per image

    def efficiency_pct(self, summary: dict[str, float] | float) -> float:
        """How close a run's metrics (or a tok/s figure) come to the ceiling, in percent: tok/s
        over the batch-1 roofline, or for images the ceiling at the engine's own precision (fp32,
        or bf16 for 16-bit weights) over the p50 image latency."""
        if self.image is not None and isinstance(summary, dict):
            _, ceiling_s = self.image.ceiling(summary.get("weight_bits", math.nan))
            return 100.0 * ceiling_s / summary["image_latency_s_p50"]
        tok_per_s = summary["output_tok_per_s"] if isinstance(summary, dict) else summary
        return 100.0 * tok_per_s / self.roofline_tok_per_s

    def to_dict(self) -> dict[str, Any]:
        data = {
            **self.limits.to_dict(),
            "model_bytes": self.model_bytes,
            "decode_floor_ms": self.decode_floor_ms,
            "roofline_tok_per_s": self.roofline_tok_per_s,
        }
        if self.image is not None:
            data["image"] = self.image.to_dict()
        return data


def roofline_for(
    limits: MachineLimits,
    model_bytes: int,
    *,
    minimal_flops: dict[str, int] | None = None,
    reference_flops: dict[str, int] | None = None,
) -> Roofline:
    """``minimal_flops``/``reference_flops``: one image's FLOPs per stage (image models)."""
    if model_bytes <= 0:
        raise ValueError(f"model_bytes must be positive, got {model_bytes}")
    floor_s = model_bytes / (limits.read_bandwidth_gbs * 1e9)
    image = None
    if minimal_flops is not None:
        total = sum(minimal_flops.values())
        bf16 = limits.matmul_bf16_gflops
        image = ImageCeiling(
            dict(minimal_flops),
            dict(reference_flops or {}),
            total / (limits.matmul_gflops * 1e9),
            total / (bf16 * 1e9) if bf16 > 0 else float("nan"),
        )
    return Roofline(limits, model_bytes, floor_s * 1000, 1 / floor_s, image)


def _probe(device: str, threads: int, repeats: int = 5) -> MachineLimits:
    import torch

    torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    data = torch.ones(BANDWIDTH_BYTES // 4, dtype=torch.float32, device=device)
    best_read = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        data.sum()
        sync()
        best_read = min(best_read, time.perf_counter() - start)
    del data

    def best_matmul_s(dtype: torch.dtype) -> float:
        a = torch.randn(MATMUL_N, MATMUL_N, device=device).to(dtype)
        b = torch.randn(MATMUL_N, MATMUL_N, device=device).to(dtype)
        a @ b  # first call pays one-off setup
        best = float("inf")
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            a @ b
            sync()
            best = min(best, time.perf_counter() - start)
        return best

    flops = 2 * MATMUL_N**3
    return MachineLimits(
        device=device,
        threads=threads,
        read_bandwidth_gbs=BANDWIDTH_BYTES / best_read / 1e9,
        matmul_gflops=flops / best_matmul_s(torch.float32) / 1e9,
        matmul_bf16_gflops=flops / best_matmul_s(torch.bfloat16) / 1e9,
    )


def measure_limits(device: str, threads: int, *, timeout_s: float = 300) -> MachineLimits:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "pytest_vibeserve.roofline"]
    command += ["--device", device, "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"the roofline probe failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return MachineLimits(**json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    print(json.dumps(_probe(args.device, args.threads).to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
