"""FLOPs of one Show-o2-style image: as the reference runs it, and for the exact minimal algorithm.

Counted the way ``torch.utils.flop_counter.FlopCounterMode`` counts (2 FLOPs per multiply-add of
every matmul and convolution; attention as its two dense matmuls, masked entries included;
elementwise work not counted), so the reference's count can be checked against the counter
itself. The minimal algorithm computes exactly the same image: the text prefix's keys and values
once per image (in the body and in the flow head: neither depends on the time or the latent), only
the time and image tokens per step (no trailing EOI/EOS/pads, whose outputs nothing reads), no
``lm_head`` logits, one input path and one time embedding shared by the two guidance rows, and the
VAE's causal 3-D convolutions as the 2-D convolutions a single frame reduces them to. Its FLOPs
over the machine's peak matmul rate is the scenario's ceiling.
"""

from __future__ import annotations

import math
from typing import Any

TIME_FEATURES = 256  # sinusoidal features the time embedder reads


def _linear(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def _attention(queries: int, keys: int, width: int) -> int:
    return 4 * queries * keys * width  # Q K^T and A V


def _body_layer(config: Any, queries: int, keys: int) -> int:
    d, i = config.hidden_size, config.intermediate_size
    kv = d // config.num_attention_heads * config.num_key_value_heads
    linears = (
        _linear(queries, d, 2 * d + 2 * kv) + _linear(queries, d, 2 * i) + _linear(queries, i, d)
    )
    return linears + _attention(queries, keys, d)


def _head_layer(config: Any, queries: int, keys: int) -> int:
    d, i = config.hidden_size, config.head_intermediate_size
    linears = _linear(queries, d, 4 * d) + _linear(queries, d, i) + _linear(queries, i, d)
    return linears + _attention(queries, keys, d)


def _head_modulation(config: Any, rows: int) -> int:
    d = config.hidden_size
    return config.head_layers * _linear(rows, d, 6 * d) + _linear(rows, d, 2 * d)


def _input_path(config: Any, rows: int) -> int:
    n, s, d, pd = (
        config.image_tokens,
        config.siglip_hidden_size,
        config.hidden_size,
        config.patch_dim,
    )
    tokens = rows * n
    siglip = _linear(tokens, s, 4 * s) + _linear(tokens, s, 8 * s) + rows * _attention(n, n, s)
    return (
        _linear(tokens, pd, s)
        + config.siglip_layers * siglip
        + _linear(tokens, s, d)
        + _linear(tokens, pd, d)
        + _linear(tokens, 2 * d, d)
        + _linear(tokens, d, d)
    )


def _time_embedder(config: Any, rows: int) -> int:
    d = config.hidden_size
    return _linear(rows, TIME_FEATURES, d) + _linear(rows, d, d)


def _vae(config: Any, time_taps: int) -> int:
    """The decoder over one frame; ``time_taps``: 3 for the causal 3-D kernels as run (two of the
    three taps see only zero padding), 1 for their single-frame 2-D equivalent."""
    base, size = config.vae_channels, config.latent_size
    widths = [4 * base, 4 * base, 2 * base, base]

    def conv(cin: int, cout: int, side: int, k: int = 3, taps: int = time_taps) -> int:
        return 2 * cin * cout * k * k * taps * side * side

    def res(cin: int, cout: int, side: int) -> int:
        short = conv(cin, cout, side, k=1, taps=1) if cin != cout else 0
        return conv(cin, cout, side) + conv(cout, cout, side) + short

    c0 = widths[0]
    pixels = size * size
    attention = 2 * pixels * c0 * 3 * c0 + _attention(pixels, pixels, c0) + 2 * pixels * c0 * c0
    total = conv(config.latent_channels, c0, size) + res(c0, c0, size) + attention
    total += res(c0, widths[1], size)
    side = size
    for i in range(3):
        total += res(widths[i], widths[i], side)
        side *= 2
        total += conv(widths[i], widths[i + 1], side, taps=1)  # the 2-D upsampling conv
    total += res(widths[-1], widths[-1], side) + conv(widths[-1], 3, side)
    return total


def reference_flops(config: Any, text_tokens: int, steps: int) -> dict[str, int]:
    """Per stage, as ``modeling_showo2.generate`` runs it: both rows over the whole padded
    sequence at every step, logits included, 3-D VAE convolutions."""
    calls, rows, length = steps - 1, 2, config.seq_len
    return {
        "input_path": calls * (_input_path(config, rows) + _time_embedder(config, rows)),
        "body": calls * rows * config.body_layers * _body_layer(config, length, length),
        "logits": calls * _linear(rows * length, config.hidden_size, config.vocab_size),
        "head": calls
        * (
            rows * config.head_layers * _head_layer(config, length, length)
            + _head_modulation(config, rows)
            + _linear(rows * length, config.hidden_size, config.patch_dim)
        ),
        "vae": _vae(config, time_taps=3),
    }


def minimal_flops(config: Any, text_tokens: int, steps: int) -> dict[str, int]:
    """Per stage, for the exact minimal algorithm (see the module docstring)."""
    calls = steps - 1
    block = config.image_tokens + 1  # the time token and the image tokens
    prefixes = (1 + text_tokens + 1, 2)  # [BOS] text [BOI] for the conditional row, [BOS][BOI]
    body = head = 0
    for prefix in prefixes:
        body += config.body_layers * (
            _body_layer(config, prefix, prefix) + calls * _body_layer(config, block, prefix + block)
        )
        head += config.head_layers * (
            _head_layer(config, prefix, prefix) + calls * _head_layer(config, block, prefix + block)
        )
    head += calls * (
        _head_modulation(config, 1) + _linear(2 * block, config.hidden_size, config.patch_dim)
    )
    return {
        "input_path": calls * (_input_path(config, 1) + _time_embedder(config, 1)),
        "body": body,
        "logits": 0,
        "head": head,
        "vae": _vae(config, time_taps=1),
    }


def image_flops(model_dir: Any, requests: Any) -> tuple[dict[str, int], dict[str, int]]:
    """(minimal, reference) FLOPs per stage of the mean image of ``requests`` (``ImageRequest``s:
    prompt lengths and schedules vary) for the model in ``model_dir``."""
    import json
    from pathlib import Path

    data = json.loads((Path(model_dir) / "config.json").read_text())
    config = _Config(**{k: v for k, v in data.items() if k in _Config.FIELDS})
    sums: list[dict[str, int]] = [{}, {}]
    for request in requests:
        text = len(request.prompt.encode("utf-8"))
        for total, count in zip(sums, (minimal_flops, reference_flops), strict=True):
            for stage, flops in count(config, text, request.steps).items():
                total[stage] = total.get(stage, 0) + flops
    n = max(1, len(requests))
    return tuple({k: v // n for k, v in total.items()} for total in sums)  # type: ignore[return-value]


class _Config:
    """The fields of a model's config.json the counts read, and the sizes derived from them (as
    ``ShowO2Config`` derives them; kept here so counting needs no torch)."""

    FIELDS = (
        "image_size",
        "hidden_size",
        "body_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "intermediate_size",
        "head_layers",
        "head_intermediate_size",
        "siglip_layers",
        "siglip_hidden_size",
        "vae_channels",
        "max_text_tokens",
        "latent_channels",
        "vae_scale",
        "patch_size",
        "vocab_size",
    )

    def __init__(self, **fields: int) -> None:
        missing = set(self.FIELDS) - set(fields)
        if missing:
            raise ValueError(f"config.json lacks {sorted(missing)}: not a showo2-t2i model")
        for name, value in fields.items():
            setattr(self, name, int(value))
        self.latent_size = self.image_size // self.vae_scale
        grid = self.latent_size // self.patch_size
        self.image_tokens = grid * grid
        used = 1 + self.max_text_tokens + 1 + 1 + self.image_tokens + 2
        self.seq_len = -(-used // 8) * 8
        self.patch_dim = self.latent_channels * self.patch_size**2


def ceiling_seconds(flops: dict[str, int], peak_gflops: float) -> float:
    """The time ``flops`` takes at the machine's measured peak matmul rate."""
    if not peak_gflops > 0 or math.isinf(peak_gflops):
        raise ValueError(f"peak_gflops must be a positive number, got {peak_gflops}")
    return sum(flops.values()) / (peak_gflops * 1e9)
