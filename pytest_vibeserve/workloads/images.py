"""Text-to-image workloads (scenario unified_multimodal): prompts, seeds and schedules.

Seed 0 draws the scenario's 16 written prompts (half short, the rest 40-120 tokens: the model's
tokens are UTF-8 bytes); any other seed composes new prompts from word lists, so a Judge's
held-out seed brings prompts and noise no engine has seen. Each image gets its own noise seed and
a probe step (the Euler step whose latent it reports) drawn from the workload seed. Images go one
at a time (closed loop, concurrency 1): the headline is one image's latency.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from pytest_vibeserve.contract import ImageRequest
from pytest_vibeserve.workload import Workload

PROMPTS = (  # short and long alternate, so any first few hold both
    "a red fox in fresh snow",
    "a watercolor of a harbor town at sunrise, fishing boats resting on calm green water",
    "a lighthouse at dusk",
    "an isometric illustration of a tiny greenhouse full of ferns, soft morning light",
    "a bowl of ripe lemons",
    "a close-up photo of a hummingbird hovering beside a bright orange trumpet flower, shallow "
    "depth of field",
    "an old tram in the rain",
    "a cozy reading nook with a knitted blanket, a stack of books and a steaming mug by a "
    "rainy window",
    "a paper boat on a pond",
    "a minimalist poster of a mountain range in three shades of blue",
    "a cat asleep on a piano",
    "a medieval stone bridge over a fast river in autumn, leaves drifting on the water below",
    "a desert road at noon",
    "a robot gardener watering tulips in a rooftop garden above a busy city street at dawn",
    "a blue door in a white wall",
    "a still life of pears, a glass carafe and a linen cloth on a wooden table",
)

SUBJECTS = (
    "a heron", "an old bicycle", "a glass teapot", "a snow leopard", "a sailboat", "a clock tower",
    "a basket of plums", "a fire lookout", "a paper lantern", "a sleepy owl", "a violin",
    "a windmill", "a koi pond", "a red kite", "a tin robot", "a canyon",
)  # fmt: skip
PLACES = (
    "on a foggy pier", "in a bamboo forest", "under a starry sky", "beside a frozen lake",
    "in a crowded market", "on a windswept hill", "inside a quiet library", "at the edge of a reef",
)  # fmt: skip
STYLES = (
    "oil painting", "pencil sketch", "studio photograph", "flat vector art",
    "ukiyo-e print", "low-poly render", "pastel drawing", "film still",
)  # fmt: skip
DETAILS = (
    "with warm evening light", "in muted earth tones", "seen from far below",
    "with long soft shadows", "framed by wild grasses", "after a summer storm",
    "with a shallow depth of field", "in the style of a travel poster",
)  # fmt: skip


def make_prompts(count: int, seed: int) -> list[str]:
    """``count`` prompts: the written ones for seed 0, composed ones for any other seed (half
    short, half long, every one at most 120 UTF-8 bytes)."""
    if seed == 0:
        return [PROMPTS[i % len(PROMPTS)] for i in range(count)]
    rng = random.Random(f"t2i-prompts-{seed}")
    prompts = []
    for i in range(count):
        subject = rng.choice(SUBJECTS)
        if i % 2 == 0:
            prompt = f"{subject} {rng.choice(PLACES)}"
        else:
            prompt = (
                f"{rng.choice(STYLES)} of {subject} {rng.choice(PLACES)}, {rng.choice(DETAILS)}"
                f", {rng.choice(DETAILS)}"
            )[:120]
        prompts.append(prompt)
    return prompts


def make_requests(
    params: dict[str, Any], seed: int, *, prefix: str = "image"
) -> list[ImageRequest]:
    count = int(params.get("prompts", len(PROMPTS)))
    steps = int(params.get("steps", 20))
    guidance = float(params.get("guidance", 5.0))
    rng = random.Random(f"t2i-seeds-{seed}")
    calls = steps - 1
    return [
        ImageRequest(
            request_id=f"{prefix}-{seed}-{i}",
            prompt=prompt,
            seed=rng.randrange(2**31),
            steps=steps,
            guidance=guidance,
            probe_step=rng.randrange(calls // 4, max(calls // 4 + 1, 3 * calls // 4)),
        )
        for i, prompt in enumerate(make_prompts(count, seed))
    ]


def repeated_requests(params: dict[str, Any], seed: int) -> list[ImageRequest]:
    """One prompt four times: as asked first, exactly again under a new id, with the same noise
    but another probe step, and with other noise. An engine that keys a cache on the prompt, on
    the prompt and the seed, or on the whole request answers a later one wrongly or without
    denoising (its forward counter then falls short of the calls claimed), which the checks
    reject."""
    (first,) = make_requests({**params, "prompts": 1}, seed + 7_000, prefix="repeat")
    calls = first.steps - 1
    other_probe = (first.probe_step + max(1, calls // 3)) % calls
    same_noise = ImageRequest(
        f"{first.request_id}-again",
        first.prompt,
        first.seed,
        first.steps,
        first.guidance,
        other_probe,
    )
    exact = ImageRequest(
        f"{first.request_id}-exact",
        first.prompt,
        first.seed,
        first.steps,
        first.guidance,
        first.probe_step,
    )
    new_noise = ImageRequest(
        f"{first.request_id}-new-noise",
        first.prompt,
        first.seed + 1,
        first.steps,
        first.guidance,
        first.probe_step,
    )
    return [first, exact, same_noise, new_noise]


def build_workload(
    params: dict[str, Any],
    reference: Any,
    seed: int,
    *,
    name: str | None = None,
    requests: list[ImageRequest] | None = None,
) -> Workload:
    """Image requests for ``seed`` (or ``requests`` as given) and their reference images."""
    requests = requests if requests is not None else make_requests(params, seed)
    warmup = make_requests({**params, "prompts": 1}, seed + 10_000, prefix="warmup")
    expected = reference.images(requests)
    text = [len(r.prompt.encode("utf-8")) for r in requests]
    config = json.loads((Path(reference.model_dir) / "config.json").read_text())
    grid = config["image_size"] // config["vae_scale"] // config["patch_size"]
    stats = {
        "block_tokens": grid * grid + 1,  # the time token and the image tokens
        "seq_len": -(-(config["max_text_tokens"] + 5 + grid * grid) // 8) * 8,
        "images": len(requests),
        "steps": requests[0].steps if requests else 0,
        "guidance": requests[0].guidance if requests else 0.0,
        "text_tokens_mean": sum(text) / max(1, len(text)),
        "text_tokens_max": max(text, default=0),
        "reference_s_per_image": sum(e.seconds for e in expected.values()) / max(1, len(expected)),
    }
    return Workload(
        name=name or f"images-seed{seed}",
        requests=tuple(requests),
        expected=expected,
        concurrency=int(params.get("concurrency", 1)),
        warmup=tuple(warmup),
        stats=stats,
    )
