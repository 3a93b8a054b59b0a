"""The text-to-image reference (t2i-tiny): its analytic FLOP counts are torch's own, the minimal
algorithm's are lower stage by stage, generate is deterministic and sensitive to the seed and
the guidance, the model directory ships its modeling file, and reference images are cached."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pytest_vibeserve.contract import ImageRequest
from reference_impls.showo2_flops import image_flops, minimal_flops, reference_flops

PROMPT = "a red fox in fresh snow"
LONG = "a watercolor of a harbor town at sunrise, fishing boats resting on calm green water"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


@pytest.fixture(scope="module")
def model_dir(vibeserve_cache):
    from reference_impls.models import materialize

    return materialize("t2i-tiny", vibeserve_cache)


@pytest.fixture(scope="module")
def modeling(model_dir):
    """The model directory's own modeling_showo2 (what engines import)."""
    from reference_impls.showo2 import load_modeling

    return load_modeling(model_dir)


@pytest.fixture(scope="module")
def model(modeling, model_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield modeling.load(model_dir)
    torch.set_num_threads(threads)


def generate(modeling, model, prompt=PROMPT, **kwargs):
    args = dict(seed=3, steps=8, guidance=5.0, probe_step=2)
    args.update(kwargs)
    return modeling.generate(model, prompt, **args)


@pytest.mark.parametrize("prompt", ["", PROMPT, LONG], ids=["empty", "short", "long"])
@pytest.mark.parametrize("steps", [2, 4])
def test_reference_flops_are_what_torch_counts_over_generate(modeling, model, prompt, steps):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        generate(modeling, model, prompt, steps=steps, probe_step=0)
    counted = reference_flops(model.config, len(prompt.encode("utf-8")), steps)
    assert sum(counted.values()) == counter.get_total_flops()


def test_reference_flops_do_not_depend_on_the_prompt_length(model) -> None:
    """The reference runs the whole padded sequence whatever the prompt: the same count."""
    config = model.config
    counts = [reference_flops(config, n, 20) for n in (0, 23, config.max_text_tokens)]
    assert counts[0] == counts[1] == counts[2]


@pytest.mark.parametrize("steps", [2, 5, 20])
def test_the_minimal_algorithm_costs_less_in_every_stage(model, steps) -> None:
    config = model.config
    for text in (0, 1, 23, 83, config.max_text_tokens):
        minimal = minimal_flops(config, text, steps)
        reference = reference_flops(config, text, steps)
        assert minimal.keys() == reference.keys() == {"input_path", "body", "logits", "head", "vae"}
        assert minimal["logits"] == 0 < reference["logits"]
        for stage in minimal:
            assert minimal[stage] < reference[stage], stage
        # one input path and one time embedding for both guidance rows: exactly half
        assert 2 * minimal["input_path"] == reference["input_path"]
        # the VAE runs once an image, whatever the schedule
        assert minimal["vae"] == minimal_flops(config, text, 2)["vae"]
    # a longer prompt costs the minimal algorithm more, the reference nothing
    costs = [sum(minimal_flops(config, n, steps).values()) for n in (0, 40, 120)]
    assert costs == sorted(costs) and costs[0] < costs[-1]


def test_image_flops_average_over_the_requests(model_dir, model) -> None:
    config = model.config
    prompts = ["a fox", PROMPT, LONG]
    requests = [ImageRequest(f"r{i}", p, seed=i, steps=20) for i, p in enumerate(prompts)]
    minimal, reference = image_flops(model_dir, requests)
    for stage in minimal:
        total = sum(minimal_flops(config, len(p.encode()), 20)[stage] for p in prompts)
        assert minimal[stage] == total // 3
    assert reference == reference_flops(config, 0, 20)
    # one request is its own mean; none is all zeros
    alone, _ = image_flops(model_dir, requests[1:2])
    assert alone == minimal_flops(config, len(PROMPT), 20)
    nothing, _ = image_flops(model_dir, [])
    assert set(nothing.values()) <= {0}


def test_image_flops_refuse_a_model_dir_that_is_not_showo2(tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"hidden_size": 64}')
    with pytest.raises(ValueError, match="not a showo2-t2i model"):
        image_flops(tmp_path, [ImageRequest("r", "a fox", seed=1)])


def test_generate_is_deterministic_across_calls_and_thread_counts(modeling, model) -> None:
    # a short schedule: two threads on a loaded 2-core machine can be many times slower
    first = generate(modeling, model, steps=5, probe_step=2)
    again = generate(modeling, model, steps=5, probe_step=2)
    torch.set_num_threads(2)
    try:
        two_threads = generate(modeling, model, steps=5, probe_step=2)
    finally:
        torch.set_num_threads(1)
    for other in (again, two_threads):
        assert np.array_equal(first.pixels, other.pixels)
        assert np.array_equal(first.probe_latent, other.probe_latent)
        assert first.trajectory == other.trajectory
        assert first.trajectory_rms == other.trajectory_rms


def test_generate_reports_what_the_checks_read(modeling, model) -> None:
    out = generate(modeling, model, steps=20, probe_step=7)
    assert out.pixels.dtype == np.uint8 and out.pixels.shape == (64, 64, 3)
    assert out.probe_latent.dtype == np.float32 and out.probe_latent.shape == (16, 8, 8)
    assert len(out.trajectory) == len(out.trajectory_rms) == 19
    assert {len(means) for means in out.trajectory} == {16}
    assert all(rms > 0 for rms in out.trajectory_rms)
    assert out.model_calls == out.uncond_calls == 19
    assert set(out.timings_s) == {"encode", "denoise", "decode"}


def test_the_probe_latent_is_the_latent_after_its_step(modeling, model) -> None:
    """Probing another step changes only the probe: its channel means are that step's."""
    early = generate(modeling, model, probe_step=0)
    late = generate(modeling, model, probe_step=6)
    assert np.array_equal(early.pixels, late.pixels)
    assert early.trajectory == late.trajectory
    for out, step in ((early, 0), (late, 6)):
        means = out.probe_latent.astype(np.float64).mean(axis=(1, 2))
        assert means == pytest.approx(out.trajectory[step], abs=1e-6)
    assert not np.allclose(early.probe_latent, late.probe_latent)
    with pytest.raises(ValueError, match="probe_step 7 is not a step of 7 model calls"):
        generate(modeling, model, probe_step=7)


def test_another_seed_gives_another_image(modeling, model) -> None:
    a, b = generate(modeling, model, seed=3), generate(modeling, model, seed=4)
    assert psnr(a.pixels, b.pixels) < 25.0


def test_guidance_changes_the_image(modeling, model) -> None:
    guided, plain = generate(modeling, model, guidance=5.0), generate(modeling, model, guidance=1.0)
    assert psnr(guided.pixels, plain.pixels) < 30.0
    assert guided.trajectory != plain.trajectory
    # and the prompt reaches the image through the conditional row
    other = generate(modeling, model, "a lighthouse at dusk")
    assert psnr(guided.pixels, other.pixels) < 30.0


def test_the_model_dir_ships_the_reference_modeling_file(model_dir) -> None:
    from reference_impls.showo2 import MODELING_FILE

    shipped = model_dir / "modeling_showo2.py"
    assert shipped.read_bytes() == MODELING_FILE.read_bytes()
    assert {"config.json", "model.safetensors"} <= {p.name for p in model_dir.iterdir()}


def test_reference_images_are_generate_and_are_cached(modeling, model, model_dir, tmp_path):
    from pytest_vibeserve.reference import Reference

    reference = Reference(model_dir, tmp_path, device="cpu", dtype="float32", threads=1, batch=1)
    requests = [
        ImageRequest("a", PROMPT, seed=11, steps=6, guidance=5.0, probe_step=1),
        ImageRequest("b", LONG, seed=12, steps=6, guidance=2.0, probe_step=3),
    ]
    images = reference.images(requests)
    computed = reference.computed_seconds
    assert computed > 0
    again = reference.images(requests)
    assert reference.computed_seconds == computed  # the second call computed nothing
    for request in requests:
        want = generate(
            modeling,
            model,
            request.prompt,
            seed=request.seed,
            steps=request.steps,
            guidance=request.guidance,
            probe_step=request.probe_step,
        )
        for got in (images[request.request_id], again[request.request_id]):
            assert np.array_equal(got.pixels, want.pixels)
            assert np.array_equal(got.probe_latent, want.probe_latent)
            assert got.trajectory == want.trajectory
            assert got.trajectory_rms == want.trajectory_rms
            assert got.seconds > 0
    # the key is everything that decides the image, not the request id: a renamed request hits
    renamed = ImageRequest("c", PROMPT, seed=11, steps=6, guidance=5.0, probe_step=1)
    assert np.array_equal(reference.images([renamed])["c"].pixels, images["a"].pixels)
    assert reference.computed_seconds == computed
