"""Image closeness: noise fails PSNR, a shift fails SSIM, a wrong shape fails outright."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from pytest_vibeserve.checkers import check_images


def smooth_image(height: int = 48, width: int = 64) -> np.ndarray:
    """A deterministic HxWx3 float image in [0, 1] with structure at several scales."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [
        0.5 + 0.4 * np.sin(x / 5.0) * np.cos(y / 7.0),
        0.5 + 0.4 * np.sin((x + y) / 9.0),
        (x / width + y / height) / 2.0,
    ]
    return np.clip(np.stack(channels, axis=-1), 0.0, 1.0)


def test_identical_images_pass_with_infinite_psnr() -> None:
    image = smooth_image()
    as_uint8 = (image * 255).round().astype(np.uint8)
    result = check_images({"a": image, "b": as_uint8}, {"a": image.copy(), "b": as_uint8.copy()})
    assert result.passed, result.summary
    assert result.stats["per_image"]["a"] == {"psnr": math.inf, "ssim": 1.0}
    assert result.stats["lowest_psnr"] == math.inf
    assert result.stats["lowest_ssim"] == 1.0
    assert (
        json.loads(json.dumps(result.to_dict(), allow_nan=False))["stats"]["lowest_psnr"] == "inf"
    )


def test_uint8_output_is_compared_with_float_reference() -> None:
    image = smooth_image()
    result = check_images({"a": image}, {"a": (image * 255).round().astype(np.uint8)})
    assert result.passed, result.summary
    assert result.stats["per_image"]["a"]["psnr"] > 50.0  # only quantisation error


def test_noise_fails_psnr_with_the_number_in_the_message() -> None:
    image = smooth_image()
    rng = np.random.default_rng(0)
    noisy = np.clip(image + rng.normal(0.0, 0.05, image.shape), 0.0, 1.0)
    result = check_images({"img": image}, {"img": noisy})
    assert not result.passed
    [failure] = result.failures
    psnr = result.stats["per_image"]["img"]["psnr"]
    assert 20.0 < psnr < 35.0
    assert failure.request_id == "img"
    assert failure.data["psnr"] == psnr
    assert f"image img: PSNR {psnr:.2f} dB < 35 dB minimum" in failure.message
    assert f"PSNR {psnr:.2f} dB" in result.summary


def test_shifted_image_fails_ssim() -> None:
    image = smooth_image()
    shifted = np.roll(image, shift=3, axis=1)
    result = check_images({"img": image}, {"img": shifted}, min_psnr=0.0)
    [failure] = result.failures
    ssim = failure.data["ssim"]
    assert ssim < 0.98
    assert re.search(rf"image img: SSIM {ssim:.4f} < 0.98 minimum", failure.message)
    assert "PSNR" not in failure.message  # PSNR threshold was disabled
    assert f"SSIM {ssim:.4f}" in result.summary


def test_shape_mismatch_fails_naming_both_shapes() -> None:
    image = smooth_image()
    result = check_images({"img": image}, {"img": image[:, :32]})
    [failure] = result.failures
    assert failure.data["reason"] == "shape_mismatch"
    assert "shape mismatch: expected (48, 64, 3), got (48, 32, 3)" in result.summary


def test_bad_actual_values_fail_rather_than_raise() -> None:
    image = smooth_image()
    result = check_images({"img": image}, {"img": image * 2.0})
    [failure] = result.failures
    assert failure.data["reason"] == "bad_values"
    assert "outside [0, 1]" in failure.message


def test_missing_and_extra_images_fail() -> None:
    image = smooth_image()
    result = check_images({"a": image}, {"b": image})
    assert [(f.request_id, f.data["reason"]) for f in result.failures] == [
        ("a", "missing_request"),
        ("b", "extra_request"),
    ]


def test_grayscale_and_small_images() -> None:
    image = smooth_image(5, 6)[..., 0]
    assert check_images({"g": image}, {"g": image}).passed


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match=r"channels-first\? use np.moveaxis"):
        check_images({"a": np.zeros((3, 16, 16))}, {})
    with pytest.raises(ValueError, match=r"values span .* outside"):
        check_images({"a": np.full((8, 8, 3), 255.0)}, {})
    with pytest.raises(ValueError, match="dtype int64 is neither uint8 nor float"):
        check_images({"a": np.zeros((8, 8, 3), dtype=np.int64)}, {})
    with pytest.raises(TypeError, match="pass a numpy array"):
        check_images({"a": [[0.0]]}, {})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="min_ssim must be in"):
        check_images({}, {}, min_ssim=2.0)
