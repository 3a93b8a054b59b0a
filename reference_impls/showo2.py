"""Unified text-to-image references: seeded random Show-o2-style models, built offline.

The model (``reference_impls/showo2_modeling.py``, copied into each model directory as
``modeling_showo2.py``) is one Qwen2 body over text tokens and image-latent tokens, a flow head,
classifier-free guidance and a Wan2.1-style VAE decoder. Models by name:

- ``t2i-tiny``: 64x64 images, hidden 64: milliseconds an image, for tests;
- ``t2i-cpu``: 256x256 images, hidden 256, a 4-layer body and a 10-layer flow head (about 17M
  parameters plus a VAE decoder): seconds an image on two cores, the paper's data flow at a size
  this machine can run.

- ``t2i-gpu``: 512x512 images (1,024 image tokens), hidden 1024, an 8-layer body and a 10-layer
  flow head (about 306M parameters plus a 17M VAE decoder): the scenario's ``gpu`` scale, on cuda.

A real Show-o2 checkpoint (Qwen2.5 body, SigLIP, Wan2.1 VAE) is not built here: its data flow is
the same, but its weights need the original code; a directory converted to this layout
(config.json, model.safetensors, modeling_showo2.py) runs at the ``gpu`` scale with
``--vibeserve-model PATH``.

Reference images run in a process of their own:

    python -m reference_impls.showo2 --model DIR --requests IN.json --out OUT.json [--threads N]
        [--device cpu|cuda]

On cuda the reference stays fp32: TF32 is turned off for matmuls and convolutions.

IN.json: ``[{"request_id", "prompt", "seed", "steps", "guidance", "probe_step"}]``; OUT.json:
``{request_id: {"pixels": base64 uint8 HxWx3, "shape", "probe_latent": base64 float32,
"probe_shape", "trajectory", "trajectory_rms", "seconds"}}``, written after every image so an
interrupted run keeps what it finished.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from reference_impls.files import write_text_atomic

MODELING_FILE = Path(__file__).with_name("showo2_modeling.py")
MODELING_NAME = "modeling_showo2.py"  # its name inside a model directory


@dataclass(frozen=True, slots=True)
class ImageRecipe:
    """Every number that decides the bytes of a built model."""

    name: str
    image_size: int
    hidden_size: int
    body_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    head_layers: int
    head_intermediate_size: int
    siglip_layers: int
    siglip_hidden_size: int
    vae_channels: int
    max_text_tokens: int
    initializer_range: float = 0.02
    # the flow head's output layer at this many times the unit-variance init: the velocity moves
    # the latent well away from its noise, so prompt and guidance show in the image
    velocity_gain: float = 2.0
    seed: int = 0
    revision: int = 1  # bump whenever the build code below changes the bytes it writes

    def digest(self) -> str:
        material = json.dumps(asdict(self), sort_keys=True).encode()
        material += hashlib.sha256(MODELING_FILE.read_bytes()).digest()
        return hashlib.sha256(material).hexdigest()[:10]

    @property
    def dir_name(self) -> str:
        return f"{self.name}-{self.digest()}"


RECIPES = {
    "t2i-tiny": ImageRecipe("t2i-tiny", 64, 64, 2, 4, 2, 128, 2, 128, 1, 64, 8, 128),
    "t2i-cpu": ImageRecipe("t2i-cpu", 256, 256, 4, 4, 2, 768, 10, 512, 2, 256, 24, 128),
    "t2i-gpu": ImageRecipe("t2i-gpu", 512, 1024, 8, 16, 4, 2816, 10, 4096, 2, 768, 64, 128),
}


def model_config(recipe: ImageRecipe) -> Any:
    import torch

    from reference_impls.showo2_modeling import ShowO2Config

    generator = torch.Generator().manual_seed(recipe.seed + 1)
    mean = (torch.randn(16, generator=generator) * 0.3).tolist()
    std = (0.5 + torch.rand(16, generator=generator)).tolist()
    return ShowO2Config(
        image_size=recipe.image_size,
        hidden_size=recipe.hidden_size,
        body_layers=recipe.body_layers,
        num_attention_heads=recipe.num_attention_heads,
        num_key_value_heads=recipe.num_key_value_heads,
        intermediate_size=recipe.intermediate_size,
        head_layers=recipe.head_layers,
        head_intermediate_size=recipe.head_intermediate_size,
        siglip_layers=recipe.siglip_layers,
        siglip_hidden_size=recipe.siglip_hidden_size,
        vae_channels=recipe.vae_channels,
        max_text_tokens=recipe.max_text_tokens,
        latent_mean=tuple(round(x, 6) for x in mean),
        latent_std=tuple(round(x, 6) for x in std),
    )


def build_model(recipe: ImageRecipe) -> Any:
    """The seeded random model: the body as transformers initialises it, the rest normal."""
    import torch

    from reference_impls.showo2_modeling import ShowO2

    config = model_config(recipe)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = ShowO2(config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.startswith("body."):
                    continue
                if param.ndim >= 2 or name.endswith("semantic_pos"):
                    fan_in = param[0].numel() if param.ndim >= 2 else param.shape[-1]
                    gain = recipe.velocity_gain if name == "head.final.weight" else 1.0
                    param.normal_(0.0, gain * fan_in**-0.5)
                elif name.endswith("bias"):
                    param.normal_(0.0, recipe.initializer_range)
    return model.eval()


def build_showo2(out_dir: Path, recipe: ImageRecipe) -> None:
    from safetensors.torch import save_file

    from reference_impls.showo2_modeling import CONFIG_NAME, WEIGHTS_NAME

    model = build_model(recipe)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_NAME))
    write_text_atomic(out_dir / CONFIG_NAME, json.dumps(model.config.to_dict(), indent=2))
    shutil.copyfile(MODELING_FILE, out_dir / MODELING_NAME)
    write_text_atomic(out_dir / "vibeserve-recipe.json", json.dumps(asdict(recipe), indent=2))


def load_modeling(model_dir: Path) -> Any:
    """The model directory's own ``modeling_showo2`` module (what engines import too)."""
    import importlib.util

    path = Path(model_dir) / MODELING_NAME
    spec = importlib.util.spec_from_file_location(f"modeling_showo2_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


def generate_images(
    model_dir: Path, requests: list[dict[str, Any]], out_file: Path, device: str = "cpu"
) -> None:
    modeling = load_modeling(model_dir)
    model = modeling.load(model_dir, device)
    results: dict[str, Any] = json.loads(out_file.read_text()) if out_file.exists() else {}
    for request in requests:
        if request["request_id"] in results:
            continue
        started = time.perf_counter()
        out = modeling.generate(
            model,
            request["prompt"],
            seed=int(request["seed"]),
            steps=int(request["steps"]),
            guidance=float(request["guidance"]),
            probe_step=int(request["probe_step"]),
        )
        seconds = time.perf_counter() - started
        results[request["request_id"]] = {
            "pixels": base64.b64encode(out.pixels.tobytes()).decode("ascii"),
            "shape": list(out.pixels.shape),
            "probe_latent": base64.b64encode(out.probe_latent.astype("<f4").tobytes()).decode(),
            "probe_shape": list(out.probe_latent.shape),
            "trajectory": out.trajectory,
            "trajectory_rms": out.trajectory_rms,
            "seconds": seconds,
        }
        print(f"[reference image] {request['request_id']}: {seconds:.2f} s", file=sys.stderr)
        write_text_atomic(out_file, json.dumps(results))
    if not requests:
        write_text_atomic(out_file, json.dumps(results))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--requests", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: torch sees no CUDA device here; use cpu")
        torch.backends.cuda.matmul.allow_tf32 = False  # the reference is fp32, not TF32
        torch.backends.cudnn.allow_tf32 = False
    generate_images(args.model, json.loads(args.requests.read_text()), args.out, args.device)


if __name__ == "__main__":
    main()
