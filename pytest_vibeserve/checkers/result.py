"""Result types shared by every checker: a ``CheckResult`` per check, a ``Failure`` per problem."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Failure:
    """One concrete problem, precise enough to act on without rerunning the check."""

    request_id: str | None
    position: int | None
    message: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "position": self.position,
            "message": self.message,
            "data": to_jsonable(self.data),
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    passed: bool
    summary: str
    failures: list[Failure]
    stats: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "summary": self.summary,
            "failures": [failure.to_dict() for failure in self.failures],
            "stats": to_jsonable(self.stats),
        }


def to_jsonable(value: Any) -> Any:
    """Plain JSON types only, so reports survive ``json.dumps(..., allow_nan=False)``.

    Non-finite floats (PSNR of identical images is +inf) become the strings "inf", "-inf", "nan";
    numpy scalars and arrays become Python numbers and lists.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(item) for item in value]
    return value


def build_result(
    name: str, head: str, failures: list[Failure], stats: dict[str, Any]
) -> CheckResult:
    """Assemble a result whose one-line summary names the first failure and counts the rest."""
    summary = f"{name}: {head}"
    if failures:
        summary += f"; FAILED: {failures[0].message}"
        if len(failures) > 1:
            summary += f" (+{len(failures) - 1} more failures)"
    return CheckResult(
        name=name, passed=not failures, summary=summary, failures=failures, stats=stats
    )


def check_fraction(name: str, value: float) -> None:
    if not (0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")


def check_non_negative(name: str, value: float) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def extra_id_failures(
    check: str, expected_ids: set[str], actual_ids: list[str], what: str
) -> list[Failure]:
    """Failures for request ids in the actual outputs that the reference never asked for."""
    return [
        Failure(
            request_id=request_id,
            position=None,
            message=f"request {request_id} is not in the expected {what}: unexpected extra output",
            data={"reason": "extra_request", "check": check},
        )
        for request_id in actual_ids
        if request_id not in expected_ids
    ]
