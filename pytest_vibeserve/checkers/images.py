"""Image closeness against a reference by PSNR (dB) and SSIM, via scikit-image.

Both images are brought to float64 in [0, 1] first, so a uint8 engine output can be compared with a
float reference and ``data_range`` is always 1.0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .result import CheckResult, Failure, build_result, extra_id_failures

NAME = "image"

SSIM_WINDOW = 7  # scikit-image's default SSIM window side (pixels), shrunk for small images


def check_images(
    expected: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    *,
    min_psnr: float = 35.0,
    min_ssim: float = 0.98,
) -> CheckResult:
    """Each actual image must reach ``min_psnr`` dB and ``min_ssim`` against its reference."""
    if math.isnan(min_psnr):
        raise ValueError("min_psnr must be a number of dB, got nan")
    if not (-1.0 <= min_ssim <= 1.0):
        raise ValueError(f"min_ssim must be in [-1, 1] (SSIM's range), got {min_ssim!r}")
    references = {rid: _normalise_reference(rid, image) for rid, image in expected.items()}

    failures: list[Failure] = []
    per_image: dict[str, dict[str, float]] = {}
    for request_id, reference in references.items():
        if request_id not in actual:
            failures.append(
                Failure(
                    request_id=request_id,
                    position=None,
                    message=f"image {request_id} is missing from the actual outputs",
                    data={"reason": "missing_request", "expected_shape": list(reference.shape)},
                )
            )
            continue
        image, problem = _normalise_actual(request_id, actual[request_id], reference.shape)
        if problem is not None:
            failures.append(problem)
            continue
        psnr, ssim = _metrics(reference, image)
        per_image[request_id] = {"psnr": psnr, "ssim": ssim}
        shortfalls = []
        if not psnr >= min_psnr:
            shortfalls.append(f"PSNR {psnr:.2f} dB < {min_psnr:g} dB minimum")
        if not ssim >= min_ssim:
            shortfalls.append(f"SSIM {ssim:.4f} < {min_ssim:g} minimum")
        if shortfalls:
            failures.append(
                Failure(
                    request_id=request_id,
                    position=None,
                    message=f"image {request_id}: " + "; ".join(shortfalls),
                    data={
                        "reason": "too_different",
                        "psnr": psnr,
                        "ssim": ssim,
                        "min_psnr": min_psnr,
                        "min_ssim": min_ssim,
                    },
                )
            )
    failures += extra_id_failures(NAME, set(references), list(actual), "images")

    lowest_psnr = min((m["psnr"] for m in per_image.values()), default=None)
    lowest_ssim = min((m["ssim"] for m in per_image.values()), default=None)
    failed = {f.request_id for f in failures} & set(references)
    head = f"{len(references) - len(failed)}/{len(references)} images close"
    if per_image:
        head += f", lowest PSNR {lowest_psnr:.2f} dB, lowest SSIM {lowest_ssim:.4f}"
    stats: dict[str, Any] = {
        "images": len(references),
        "per_image": per_image,
        "lowest_psnr": lowest_psnr,
        "lowest_ssim": lowest_ssim,
        "min_psnr": min_psnr,
        "min_ssim": min_ssim,
    }
    return build_result(NAME, head, failures, stats)


def _metrics(reference: np.ndarray, image: np.ndarray) -> tuple[float, float]:
    # Imported here so loading the plugin does not pay for scikit-image unless images are checked.
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    # Identical images have zero error: PSNR is +inf by definition, not a warning.
    with np.errstate(divide="ignore"):
        psnr = float(peak_signal_noise_ratio(reference, image, data_range=1.0))
    window = min(SSIM_WINDOW, reference.shape[0], reference.shape[1])
    window -= 1 - window % 2  # SSIM needs an odd window
    ssim = float(
        structural_similarity(
            reference,
            image,
            data_range=1.0,
            channel_axis=-1 if reference.ndim == 3 else None,
            win_size=window,
        )
    )
    return psnr, ssim


def _describe_layout(image: np.ndarray) -> str | None:
    """Why ``image`` is not an HxW or HxWxC (C in 1, 3, 4) image of at least 3x3, or None."""
    if image.ndim not in (2, 3):
        return f"shape {image.shape} is not HxW or HxWxC"
    if image.ndim == 3 and image.shape[-1] not in (1, 3, 4):
        hint = " (channels-first? use np.moveaxis(image, 0, -1))" if image.shape[0] <= 4 else ""
        return f"shape {image.shape} has {image.shape[-1]} channels, expected 1, 3 or 4{hint}"
    if min(image.shape[:2]) < 3:
        return f"shape {image.shape} is smaller than 3x3, too small for SSIM"
    return None


def _describe_values(image: np.ndarray) -> str | None:
    """Why ``image`` is not uint8 or float in [0, 1], or None."""
    if image.dtype == np.uint8:
        return None
    if not np.issubdtype(image.dtype, np.floating):
        return f"dtype {image.dtype} is neither uint8 nor float in [0, 1]"
    if not np.all(np.isfinite(image)):
        return "float image contains nan or inf"
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:
        return f"float image values span [{low:.4g}, {high:.4g}], outside [0, 1]"
    return None


def _to_unit_float(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    return image.astype(np.float64)


def _normalise_reference(request_id: str, image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected[{request_id!r}] is {type(image).__name__}; pass a numpy array")
    problem = _describe_layout(image) or _describe_values(image)
    if problem is not None:
        raise ValueError(
            f"expected[{request_id!r}]: {problem}; pass an HxWxC uint8 image or a float image in "
            "[0, 1]"
        )
    return _to_unit_float(image)


def _normalise_actual(
    request_id: str, image: Any, shape: tuple[int, ...]
) -> tuple[np.ndarray, None] | tuple[None, Failure]:
    """An engine's image that cannot be compared is the engine's fault: a Failure, not an error."""
    if not isinstance(image, np.ndarray):
        return None, Failure(
            request_id,
            None,
            f"image {request_id}: actual output is {type(image).__name__}, not a numpy array",
            {"reason": "not_an_array", "actual_type": type(image).__name__},
        )
    if image.shape != shape:
        return None, Failure(
            request_id,
            None,
            f"image {request_id}: shape mismatch: expected {shape}, got {image.shape}",
            {
                "reason": "shape_mismatch",
                "expected_shape": list(shape),
                "actual_shape": list(image.shape),
            },
        )
    problem = _describe_values(image)
    if problem is not None:
        return None, Failure(
            request_id,
            None,
            f"image {request_id}: actual {problem}",
            {"reason": "bad_values", "actual_dtype": str(image.dtype)},
        )
    return _to_unit_float(image), None
