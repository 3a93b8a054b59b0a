"""A Show-o2-style unified text-to-image model: the reference data flow, as the original runs it.

This file is copied into every built model directory as ``modeling_showo2.py`` (as a Hugging Face
remote-code model ships its modeling file), so an engine can import it from the model directory
without importing the harness. It needs torch and transformers only.

Data flow (Show-o2, ``show-o2/`` in showlab/Show-o, text-to-image):
- sequence ``[BOS] text [BOI] [time] [image tokens] [EOI] [EOS] [PAD ...]`` padded to a fixed
  length; the mask is causal, plus bidirectional inside ``[time] [image tokens]``. The
  unconditional row has no text.
- every denoising step runs the conditional and the unconditional row as one batch over the whole
  sequence: the input path (a SigLIP encoder over the patchified latent, fused with a low-level
  patch projection) fills the image slots, a sinusoidal time embedding the time slot, the whole
  Qwen2 body runs, the tied ``lm_head`` logits of every token are computed (and unused), then the
  flow head (transformer layers with adaLN modulation by the time embedding on each row's image
  block, applied row by row) runs over all tokens; the velocity is read at the image slots.
- guidance ``v = v_u + g (v_c - v_u)``; Euler on a shifted schedule of N points (N - 1 model calls)
  from pure noise (t = 1) to the image latent (t = 0); then a Wan2.1-style VAE decoder of causal
  3-D convolutions decodes the single frame.

Tokenizer: UTF-8 bytes (ids 0..255) plus five special tokens; the embedding table is padded to
``vocab_size`` (4096) rows, as Qwen pads its own, so the unused logits cost what they would.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

PAD_ID, BOS_ID, EOS_ID, BOI_ID, EOI_ID, TIME_ID, IMAGE_ID = 256, 257, 258, 259, 260, 261, 262
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True, slots=True)
class ShowO2Config:
    image_size: int  # pixels, square
    hidden_size: int  # the LLM body's width (also the flow head's)
    body_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    head_layers: int  # the flow head's transformer layers
    head_intermediate_size: int
    siglip_layers: int  # the input path's SigLIP encoder layers
    siglip_hidden_size: int
    vae_channels: int  # the VAE decoder's narrowest width (at full resolution)
    max_text_tokens: int
    latent_channels: int = 16  # Wan2.1's latent
    vae_scale: int = 8  # pixels per latent cell
    patch_size: int = 2  # latent cells per image token side
    vocab_size: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    schedule_shift: float = 3.0
    # Wan2.1 normalises latents per channel; the decoder undoes it (latent * std + mean)
    latent_mean: tuple[float, ...] = field(default_factory=tuple)
    latent_std: tuple[float, ...] = field(default_factory=tuple)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale

    @property
    def grid(self) -> int:
        return self.latent_size // self.patch_size

    @property
    def image_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def seq_len(self) -> int:
        """[BOS] text [BOI] [time] image [EOI] [EOS], padded to a multiple of 8."""
        used = 1 + self.max_text_tokens + 1 + 1 + self.image_tokens + 2
        return -(-used // 8) * 8

    @property
    def patch_dim(self) -> int:
        return self.latent_channels * self.patch_size**2

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["architecture"] = "showo2-t2i"
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShowO2Config:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("latent_mean", "latent_std"):
            known[key] = tuple(known.get(key, ()))
        return cls(**known)

    @classmethod
    def load(cls, model_dir: str | Path) -> ShowO2Config:
        return cls.from_dict(json.loads((Path(model_dir) / CONFIG_NAME).read_text()))


# -- tokens and layout ------------------------------------------------------------------------
def text_tokens(prompt: str, config: ShowO2Config) -> list[int]:
    """UTF-8 bytes of the prompt; a prompt longer than ``max_text_tokens`` is an error."""
    ids = list(prompt.encode("utf-8"))
    if len(ids) > config.max_text_tokens:
        raise ValueError(
            f"prompt of {len(ids)} tokens (UTF-8 bytes) is over this model's "
            f"max_text_tokens={config.max_text_tokens}; shorten it"
        )
    return ids


@dataclass(frozen=True, slots=True)
class Layout:
    """One row of the fixed-length sequence: where the time token and the image block sit."""

    ids: list[int]  # seq_len ids, IMAGE_ID/TIME_ID placeholders in the image block
    time_slot: int
    image_start: int  # the first image token
    image_end: int  # one past the last

    @property
    def used(self) -> int:
        """Tokens before the trailing pads."""
        return self.image_end + 2


def layout(text: list[int], config: ShowO2Config) -> Layout:
    head = [BOS_ID, *text, BOI_ID, TIME_ID]
    image_start = len(head)
    ids = head + [IMAGE_ID] * config.image_tokens + [EOI_ID, EOS_ID]
    ids += [PAD_ID] * (config.seq_len - len(ids))
    return Layout(ids, image_start - 1, image_start, image_start + config.image_tokens)


def attention_mask(rows: list[Layout], seq_len: int, dtype: torch.dtype) -> torch.Tensor:
    """(rows, 1, L, L) additive: causal, plus bidirectional inside [time] + image tokens."""
    allowed = torch.ones(seq_len, seq_len, dtype=torch.bool).tril()
    masks = []
    for row in rows:
        m = allowed.clone()
        m[row.time_slot : row.image_end, row.time_slot : row.image_end] = True
        masks.append(m)
    allowed_rows = torch.stack(masks)[:, None]
    mask = torch.zeros(allowed_rows.shape, dtype=dtype)
    return mask.masked_fill(~allowed_rows, torch.finfo(dtype).min)


def schedule(points: int, shift: float) -> torch.Tensor:
    """``points`` noise levels from 1 to 0, shifted toward the noisy end (SD3/Wan's shift)."""
    if points < 2:
        raise ValueError(f"a schedule needs at least 2 points (1 model call), got {points}")
    t = torch.linspace(1.0, 0.0, points, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).to(torch.float32)


def initial_noise(seed: int, config: ShowO2Config) -> torch.Tensor:
    """The starting latent (1, C, h, w): standard normal from a CPU generator seeded ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    size = config.latent_size
    return torch.randn(1, config.latent_channels, size, size, generator=generator)


def patchify(latent: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/p * w/p, C p p), row-major over the token grid."""
    b, c, h, w = latent.shape
    x = latent.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    b, n, _ = tokens.shape
    grid = math.isqrt(n)
    x = tokens.reshape(b, grid, grid, channels, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, grid * patch, grid * patch)


# -- modules ------------------------------------------------------------------------------------
def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000, as DiT's timestep embedder)."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * steps / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_features(t))


class InputPath(nn.Module):
    """Show-o2's dual path over the noisy latent: SigLIP (semantic) and a patch projection (low
    level), fused by an MLP into one hidden vector per image token."""

    def __init__(self, config: ShowO2Config) -> None:
        super().__init__()
        from transformers import SiglipVisionConfig
        from transformers.models.siglip.modeling_siglip import SiglipEncoder

        sig = config.siglip_hidden_size
        self.siglip_config = SiglipVisionConfig(
            hidden_size=sig,
            intermediate_size=4 * sig,
            num_hidden_layers=config.siglip_layers,
            num_attention_heads=max(1, sig // 64),
            attn_implementation="sdpa",
        )
        self.semantic_embed = nn.Linear(config.patch_dim, sig)
        self.semantic_pos = nn.Parameter(torch.zeros(config.image_tokens, sig))
        self.siglip = SiglipEncoder(self.siglip_config)
        self.semantic_norm = nn.LayerNorm(sig)
        self.semantic_proj = nn.Linear(sig, config.hidden_size)
        self.low_level = nn.Linear(config.patch_dim, config.hidden_size)
        self.fuse_norm = nn.LayerNorm(2 * config.hidden_size)
        self.fuse = nn.Sequential(
            nn.Linear(2 * config.hidden_size, config.hidden_size),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.hidden_size, config.hidden_size),
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        semantic = self.semantic_embed(patches) + self.semantic_pos
        semantic = self.siglip(inputs_embeds=semantic).last_hidden_state
        semantic = self.semantic_proj(self.semantic_norm(semantic))
        return self.fuse(self.fuse_norm(torch.cat([semantic, self.low_level(patches)], dim=-1)))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, blocks: list[slice]):
    """adaLN on each row's image block only (the text around it is not modulated), the
    original's way: one row of the batch at a time. x: (B, L, D); shift, scale: (B, D)."""
    out = x.clone()
    for i, block in enumerate(blocks):
        out[i, block] = x[i, block] * (1 + scale[i]) + shift[i]
    return out


def gate(delta: torch.Tensor, gates: torch.Tensor, blocks: list[slice]) -> torch.Tensor:
    """The adaLN-Zero gate on each row's image block; the rest of the row passes ungated."""
    out = delta.clone()
    for i, block in enumerate(blocks):
        out[i, block] = delta[i, block] * gates[i]
    return out


class FlowHeadLayer(nn.Module):
    """A DiT block: attention and MLP, each modulated (shift, scale) and gated by the time."""

    def __init__(self, hidden: int, heads: int, intermediate: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, intermediate),
            nn.GELU(approximate="tanh"),
            nn.Linear(intermediate, hidden),
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, mask: torch.Tensor, blocks: list[slice]
    ) -> torch.Tensor:
        """x: (B, L, D); temb: (B, D); mask: (B, 1, L, L) additive; blocks: each row's
        [time] + image slice, the only tokens the time modulates."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(temb).chunk(6, dim=-1)
        b, n, d = x.shape
        h = modulate(self.norm1(x), shift1, scale1, blocks)
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + gate(self.proj(attn.transpose(1, 2).reshape(b, n, d)), gate1, blocks)
        h = modulate(self.norm2(x), shift2, scale2, blocks)
        return x + gate(self.mlp(h), gate2, blocks)


class FlowHead(nn.Module):
    def __init__(self, config: ShowO2Config) -> None:
        super().__init__()
        hidden = config.hidden_size
        heads = config.num_attention_heads
        self.layers = nn.ModuleList(
            FlowHeadLayer(hidden, heads, config.head_intermediate_size)
            for _ in range(config.head_layers)
        )
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.final = nn.Linear(hidden, config.patch_dim)

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, mask: torch.Tensor, blocks: list[slice]
    ) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, temb, mask, blocks)
        shift, scale = self.final_ada(temb).chunk(2, dim=-1)
        return self.final(modulate(self.final_norm(x), shift, scale, blocks))


# -- the VAE decoder (Wan2.1-style, causal 3-D convolutions, one frame) --------------------------
class CausalConv3d(nn.Conv3d):
    """3x3x3 convolution that sees only past frames: two zero frames in front, none behind."""

    def __init__(self, cin: int, cout: int, kernel: int = 3) -> None:
        super().__init__(cin, cout, kernel)
        pad = kernel // 2
        self.causal_pad = (pad, pad, pad, pad, 2 * pad, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.causal_pad))


class ChannelRMSNorm(nn.Module):
    """Wan's RMS_norm over the channel axis of (B, C, T, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = channels**0.5
        self.gamma = nn.Parameter(torch.ones(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class VaeResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1 = ChannelRMSNorm(cin)
        self.conv1 = CausalConv3d(cin, cout)
        self.norm2 = ChannelRMSNorm(cout)
        self.conv2 = CausalConv3d(cout, cout)
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.shortcut(x) + h


class VaeAttention(nn.Module):
    """Single-head self-attention over the pixels of each frame."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = ChannelRMSNorm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = self.norm(x).permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        q, k, v = self.qkv(frames).reshape(b * t, 3, c, h * w).permute(1, 0, 3, 2).unbind(0)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        out = self.proj(out.transpose(1, 2).reshape(b * t, c, h, w))
        return x + out.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


class VaeUpsample(nn.Module):
    """Wan's 2-D resample: nearest-exact 2x per frame, then a 3x3 convolution."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        frames = self.conv(F.interpolate(frames, scale_factor=2.0, mode="nearest-exact"))
        return frames.reshape(b, t, -1, 2 * h, 2 * w).permute(0, 2, 1, 3, 4)


class VaeDecoder(nn.Module):
    def __init__(self, config: ShowO2Config) -> None:
        super().__init__()
        base = config.vae_channels
        widths = [4 * base, 4 * base, 2 * base, base]  # latent res, then 2x, 4x, 8x
        ups = int(math.log2(config.vae_scale))
        if 2**ups != config.vae_scale or ups != len(widths) - 1:
            raise ValueError(f"vae_scale {config.vae_scale} must be 8 (three 2x upsamples)")
        self.conv_in = CausalConv3d(config.latent_channels, widths[0])
        self.mid = nn.ModuleList(
            [VaeResBlock(widths[0], widths[0]), VaeAttention(widths[0]), VaeResBlock(*widths[:2])]
        )
        self.stages = nn.ModuleList()
        for i in range(ups):
            self.stages.append(VaeResBlock(widths[i], widths[i]))
            self.stages.append(VaeUpsample(widths[i], widths[i + 1]))
        self.stages.append(VaeResBlock(widths[-1], widths[-1]))
        self.norm_out = ChannelRMSNorm(widths[-1])
        self.conv_out = CausalConv3d(widths[-1], 3)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, C, T, h, w) latent -> (B, 3, T, H, W) in about [-1, 1]."""
        x = self.conv_in(latent)
        for block in (*self.mid, *self.stages):
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


# -- the whole model ---------------------------------------------------------------------------
class ShowO2(nn.Module):
    def __init__(self, config: ShowO2Config) -> None:
        super().__init__()
        from transformers import Qwen2Config, Qwen2Model

        self.config = config
        self.body_config = Qwen2Config(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.body_layers,
            num_attention_heads=config.num_attention_heads,
            num_key_value_heads=config.num_key_value_heads,
            max_position_embeddings=max(4096, config.seq_len),
            rope_theta=config.rope_theta,
            rms_norm_eps=config.rms_norm_eps,
            tie_word_embeddings=True,
            attn_implementation="sdpa",
        )
        self.body = Qwen2Model(self.body_config)
        self.time_embedder = TimestepEmbedder(config.hidden_size)
        self.input_path = InputPath(config)
        self.head = FlowHead(config)
        self.vae = VaeDecoder(config)
        self.register_buffer("latent_mean", torch.tensor(config.latent_mean), persistent=False)
        self.register_buffer("latent_std", torch.tensor(config.latent_std), persistent=False)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Qwen's tied lm_head: what the original computes for every token at every step."""
        return hidden @ self.body.embed_tokens.weight.T

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """(1, C, h, w) normalised latent -> (H, W, 3) uint8 image."""
        mean = self.latent_mean.view(1, -1, 1, 1)
        std = self.latent_std.view(1, -1, 1, 1)
        video = self.vae((latent * std + mean)[:, :, None])  # one frame: T = 1
        image = video[0, :, 0].clamp(-1.0, 1.0)
        return ((image + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0)


@dataclass(slots=True)
class Generation:
    """One image and what the integrity checks read of its denoising."""

    pixels: Any  # (H, W, 3) uint8 numpy
    probe_latent: Any  # (C, h, w) float32 numpy: the latent after Euler step ``probe_step``
    trajectory: list[list[float]]  # per model call: the latent's channel means after its step
    trajectory_rms: list[float]  # per model call: the latent's RMS after its step
    model_calls: int
    uncond_calls: int
    timings_s: dict[str, float]


def load(model_dir: str | Path, device: str = "cpu") -> ShowO2:
    from safetensors.torch import load_file

    config = ShowO2Config.load(model_dir)
    model = ShowO2(config)
    state = load_file(str(Path(model_dir) / WEIGHTS_NAME))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


@torch.inference_mode()
def generate(
    model: ShowO2,
    prompt: str,
    *,
    seed: int,
    steps: int,
    guidance: float,
    probe_step: int,
) -> Generation:
    """The reference text-to-image: ``steps`` schedule points, CFG ``guidance``, as Show-o2 runs
    it (the whole padded sequence, both rows, every step)."""
    import time

    config = model.config
    device = next(model.parameters()).device
    if not 0 <= probe_step < steps - 1:
        raise ValueError(f"probe_step {probe_step} is not a step of {steps - 1} model calls")
    started = time.perf_counter()
    rows = [layout(text_tokens(prompt, config), config), layout([], config)]
    ids = torch.tensor([r.ids for r in rows], device=device)
    mask = attention_mask(rows, config.seq_len, torch.float32).to(device)
    blocks = [slice(r.time_slot, r.image_end) for r in rows]
    positions = torch.arange(config.seq_len, device=device)[None].expand(2, -1)
    sigmas = schedule(steps, config.schedule_shift).to(device)
    latent = initial_noise(seed, config).to(device)
    trajectory, rms, probe = [], [], None
    encode_s = time.perf_counter() - started
    for i in range(steps - 1):
        both = torch.cat([latent, latent])  # the input path runs on each row
        image_embeds = model.input_path(patchify(both, config.patch_size))
        temb = model.time_embedder(sigmas[i].expand(2))
        embeds = model.body.embed_tokens(ids).clone()
        for row, lay in enumerate(rows):
            embeds[row, lay.image_start : lay.image_end] = image_embeds[row]
            embeds[row, lay.time_slot] = temb[row]
        hidden = model.body(
            inputs_embeds=embeds, attention_mask=mask, position_ids=positions
        ).last_hidden_state
        model.lm_logits(hidden)  # computed and discarded, as the original does
        out = model.head(hidden, temb, mask, blocks)
        velocity = torch.stack(
            [
                unpatchify(
                    out[row : row + 1, lay.image_start : lay.image_end],
                    config.latent_channels,
                    config.patch_size,
                )[0]
                for row, lay in enumerate(rows)
            ]
        )
        v = velocity[1] + guidance * (velocity[0] - velocity[1])
        latent = latent + (sigmas[i + 1] - sigmas[i]) * v[None]
        trajectory.append(latent[0].mean(dim=(1, 2)).tolist())
        rms.append(float(latent.pow(2).mean().sqrt()))
        if i == probe_step:
            probe = latent[0].float().cpu().numpy().copy()
    denoised = time.perf_counter()
    pixels = model.decode_latent(latent).cpu().numpy()
    ended = time.perf_counter()
    return Generation(
        pixels=pixels,
        probe_latent=probe,
        trajectory=trajectory,
        trajectory_rms=rms,
        model_calls=steps - 1,
        uncond_calls=steps - 1,
        timings_s={
            "encode": encode_s,
            "denoise": denoised - started - encode_s,
            "decode": ended - denoised,
        },
    )
