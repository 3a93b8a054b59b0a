"""Structured-output checks: each output must parse as JSON and validate against its schema.

Validation uses JSON Schema Draft 2020-12 with format checking on, so ``"format": "date"`` and the
like are enforced rather than treated as annotations.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, ValidationError, best_match

from .result import CheckResult, Failure, build_result, check_fraction, extra_id_failures

NAME = "json_schema"

EXCERPT_CHARS = 40  # characters shown either side of a JSON syntax error
MAX_LISTED_ERRORS = 10  # schema violations kept per output in Failure.data


def check_json_schema(
    outputs: Mapping[str, str],
    schemas: Mapping[str, dict],
    *,
    min_valid_fraction: float = 1.0,
    sentinels: Mapping[str, str] | None = None,
    min_sentinel_fraction: float = 0.0,
) -> CheckResult:
    """Validate each output against ``schemas[request_id]``.

    Invalid outputs fail the check only when the valid fraction drops below ``min_valid_fraction``
    (then each is a Failure, preceded by one naming the fraction when the minimum is below 1;
    otherwise they are kept in ``stats["tolerated"]``). Missing or extra outputs and broken schemas
    always fail. A JSON syntax error's ``Failure.position`` is its character offset in the output.

    ``sentinels`` maps request ids to a string the output should echo; the echoed fraction is
    reported in stats and fails only below ``min_sentinel_fraction``.
    """
    check_fraction("min_valid_fraction", min_valid_fraction)
    check_fraction("min_sentinel_fraction", min_sentinel_fraction)
    _validate_arguments(outputs, schemas, sentinels, min_sentinel_fraction)

    hard: list[Failure] = []
    invalid: list[Failure] = []
    valid = 0
    for request_id, schema in schemas.items():
        if request_id not in outputs:
            hard.append(
                Failure(
                    request_id,
                    None,
                    f"request {request_id} is missing from the outputs",
                    {"reason": "missing_request"},
                )
            )
            continue
        problem = _check_one(request_id, outputs[request_id], schema)
        if problem is None:
            valid += 1
        elif problem.data["reason"] == "invalid_schema":
            hard.append(problem)
        else:
            invalid.append(problem)
    hard += extra_id_failures(NAME, set(schemas), list(outputs), "schemas")

    total = len(schemas)
    fraction = valid / total if total else 1.0
    tolerated: list[Failure] = []
    if fraction >= min_valid_fraction:
        failures, tolerated = list(hard), invalid
    elif min_valid_fraction < 1.0:
        # With a tolerance in play the verdict is about the fraction, so say that first.
        fraction_failure = Failure(
            None,
            None,
            f"valid fraction {fraction:.3f} ({valid}/{total}) is below the required "
            f"{min_valid_fraction:.3f}",
            {
                "reason": "valid_fraction",
                "valid": valid,
                "total": total,
                "fraction": fraction,
                "min_valid_fraction": min_valid_fraction,
            },
        )
        failures = [fraction_failure, *invalid, *hard]
    else:
        failures = [*invalid, *hard]

    head = f"{valid}/{total} outputs valid (min fraction {min_valid_fraction:g})"
    stats: dict[str, Any] = {
        "outputs": total,
        "valid": valid,
        "valid_fraction": fraction,
        "min_valid_fraction": min_valid_fraction,
        "tolerated": [failure.to_dict() for failure in tolerated],
    }
    if sentinels is not None:
        echoed = [rid for rid, text in sentinels.items() if text in outputs.get(rid, "")]
        missing = [rid for rid in sentinels if rid not in echoed]
        sentinel_fraction = len(echoed) / len(sentinels) if sentinels else 1.0
        head += f", sentinel echo {len(echoed)}/{len(sentinels)}"
        stats |= {
            "sentinel_echoed": len(echoed),
            "sentinel_total": len(sentinels),
            "sentinel_fraction": sentinel_fraction,
            "sentinel_missing": missing,
            "min_sentinel_fraction": min_sentinel_fraction,
        }
        if sentinel_fraction < min_sentinel_fraction:
            failures.append(
                Failure(
                    None,
                    None,
                    f"sentinel echo fraction {sentinel_fraction:.3f} "
                    f"({len(echoed)}/{len(sentinels)}) is below the required "
                    f"{min_sentinel_fraction:.3f}; not echoed: {', '.join(missing)}",
                    {
                        "reason": "sentinel_fraction",
                        "fraction": sentinel_fraction,
                        "missing": missing,
                        "min_sentinel_fraction": min_sentinel_fraction,
                    },
                )
            )
    return build_result(NAME, head, failures, stats)


def _check_one(request_id: str, text: str, schema: Mapping[str, Any]) -> Failure | None:
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        where = error.json_path
        return Failure(
            request_id,
            None,
            f"request {request_id}: the schema itself is invalid at {where}: {error.message}",
            {"reason": "invalid_schema", "schema_path": where, "error": error.message},
        )
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        start = max(0, error.pos - EXCERPT_CHARS)
        near = text[start : error.pos + EXCERPT_CHARS]
        return Failure(
            request_id,
            error.pos,
            f"request {request_id}: output is not valid JSON: {error.msg} at line {error.lineno} "
            f"column {error.colno} (char {error.pos}), near {near!r}",
            {
                "reason": "invalid_json",
                "error": error.msg,
                "line": error.lineno,
                "column": error.colno,
                "char": error.pos,
            },
        )
    except _NonJsonConstant as error:
        return Failure(
            request_id,
            None,
            f"request {request_id}: output is not valid JSON: it contains {error}, which only "
            "Python's json module accepts (JSON has no NaN or Infinity)",
            {"reason": "invalid_json", "error": f"non-JSON constant {error}"},
        )
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(document), key=_error_order)
    if not errors:
        return None
    main = best_match(errors)
    more = f" (+{len(errors) - 1} more violations)" if len(errors) > 1 else ""
    return Failure(
        request_id,
        None,
        f"request {request_id}: schema violation at {main.json_path}: {main.message}{more}",
        {
            "reason": "schema_violation",
            "path": main.json_path,
            "error": main.message,
            "validator": main.validator,
            "errors": [
                {"path": e.json_path, "message": e.message} for e in errors[:MAX_LISTED_ERRORS]
            ],
            "error_count": len(errors),
        },
    )


def _error_order(error: ValidationError) -> tuple[str, str]:
    return error.json_path, error.message


class _NonJsonConstant(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, but they are not JSON and strict clients reject them.
    raise _NonJsonConstant(name)


def _validate_arguments(
    outputs: Mapping[str, str],
    schemas: Mapping[str, dict],
    sentinels: Mapping[str, str] | None,
    min_sentinel_fraction: float,
) -> None:
    for request_id, text in outputs.items():
        if not isinstance(text, str):
            raise TypeError(
                f"outputs[{request_id!r}] is {type(text).__name__}; pass the decoded output text"
            )
    for request_id, schema in schemas.items():
        if not isinstance(schema, Mapping):
            raise TypeError(
                f"schemas[{request_id!r}] is {type(schema).__name__}; "
                "pass the JSON schema as a dict"
            )
    if sentinels is None:
        if min_sentinel_fraction > 0.0:
            raise ValueError(
                f"min_sentinel_fraction={min_sentinel_fraction} needs sentinels; pass "
                "sentinels={request_id: text} or leave min_sentinel_fraction at 0"
            )
        return
    unknown = sorted(set(sentinels) - set(schemas))
    if unknown:
        raise ValueError(
            f"sentinels has request ids {unknown} with no schema; pass sentinels only for "
            "requests in schemas"
        )
    for request_id, text in sentinels.items():
        if not isinstance(text, str) or not text:
            raise ValueError(f"sentinels[{request_id!r}] must be a non-empty string, got {text!r}")
