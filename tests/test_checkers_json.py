"""JSON schema checks: parse errors and violations name where; fractions gate the verdict."""

from __future__ import annotations

import json

import pytest

from pytest_vibeserve.checkers import check_json_schema

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0},
        "color": {"enum": ["red", "green"]},
        "born": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
GOOD = '{"name": "Ada", "age": 36, "color": "red", "born": "1815-12-10", "tags": ["x"]}'


def check_one(text: str, **kwargs: object):
    return check_json_schema({"r0": text}, {"r0": PERSON}, **kwargs)  # type: ignore[arg-type]


def test_valid_outputs_pass() -> None:
    result = check_json_schema(
        {"r0": GOOD, "r1": ' {"name": "B", "age": 0}\n'}, {"r0": PERSON, "r1": PERSON}
    )
    assert result.passed, result.summary
    assert result.summary == "json_schema: 2/2 outputs valid (min fraction 1)"
    assert result.stats["valid_fraction"] == 1.0


def test_unparseable_json_names_the_error_and_position() -> None:
    result = check_one('{"name": "Ada" "age": 3}')
    [failure] = result.failures
    assert failure.request_id == "r0"
    assert failure.position == 15
    assert failure.data["reason"] == "invalid_json"
    assert (failure.data["line"], failure.data["column"]) == (1, 16)
    assert (
        "request r0: output is not valid JSON: Expecting ',' delimiter at line 1 column 16 "
        "(char 15)" in result.summary
    )


def test_nan_is_not_json() -> None:
    [failure] = check_one('{"name": "A", "age": NaN}').failures
    assert failure.data["reason"] == "invalid_json"
    assert "contains NaN" in failure.message


def test_missing_required_key_names_the_path() -> None:
    [failure] = check_one('{"name": "Ada"}').failures
    assert failure.data["path"] == "$"
    assert failure.data["reason"] == "schema_violation"
    assert failure.message == "request r0: schema violation at $: 'age' is a required property"


def test_wrong_type_names_the_path() -> None:
    result = check_one('{"name": "Ada", "age": "36"}')
    [failure] = result.failures
    assert failure.data["path"] == "$.age"
    assert "schema violation at $.age: '36' is not of type 'integer'" in result.summary


def test_enum_violation_names_the_path() -> None:
    [failure] = check_one('{"name": "Ada", "age": 3, "color": "purple"}').failures
    assert failure.data["path"] == "$.color"
    assert "'purple' is not one of ['red', 'green']" in failure.message


def test_nested_path_and_extra_violation_count() -> None:
    [failure] = check_one('{"name": 1, "age": 3, "tags": ["a", 2]}').failures
    assert failure.data["error_count"] == 2
    assert {e["path"] for e in failure.data["errors"]} == {"$.name", "$.tags[1]"}
    assert "(+1 more violations)" in failure.message


def test_format_is_checked() -> None:
    [failure] = check_one('{"name": "Ada", "age": 3, "born": "yesterday"}').failures
    assert failure.data["path"] == "$.born"
    assert "is not a 'date'" in failure.message


def test_invalid_schema_fails_naming_the_problem() -> None:
    result = check_json_schema({"r0": "{}"}, {"r0": {"type": "banana"}})
    [failure] = result.failures
    assert failure.data["reason"] == "invalid_schema"
    assert "the schema itself is invalid at $.type: 'banana' is not valid under any" in (
        failure.message
    )


def test_valid_fraction_threshold() -> None:
    outputs = {f"r{i}": GOOD for i in range(9)} | {"r9": "not json"}
    schemas = dict.fromkeys(outputs, PERSON)

    tolerant = check_json_schema(outputs, schemas, min_valid_fraction=0.9)
    assert tolerant.passed, tolerant.summary
    assert tolerant.stats["valid_fraction"] == 0.9
    assert [t["request_id"] for t in tolerant.stats["tolerated"]] == ["r9"]

    strict = check_json_schema(outputs, schemas, min_valid_fraction=0.95)
    assert not strict.passed
    assert [(f.request_id, f.data["reason"]) for f in strict.failures] == [
        (None, "valid_fraction"),
        ("r9", "invalid_json"),
    ]
    assert strict.summary.startswith(
        "json_schema: 9/10 outputs valid (min fraction 0.95); FAILED: valid fraction 0.900 (9/10) "
        "is below the required 0.950 (+1 more failures)"
    )
    json.dumps(strict.to_dict(), allow_nan=False)


def test_missing_and_extra_outputs_always_fail() -> None:
    result = check_json_schema({"x": GOOD}, {"r0": PERSON}, min_valid_fraction=0.0)
    assert [(f.request_id, f.data["reason"]) for f in result.failures] == [
        ("r0", "missing_request"),
        ("x", "extra_request"),
    ]


def test_sentinel_fraction() -> None:
    outputs = {
        "a": '{"name": "S-123", "age": 1}',
        "b": '{"name": "nope", "age": 2}',
        "c": '{"name": "S-789 ok", "age": 3}',
        "d": '{"name": "S-000", "age": 4}',
    }
    schemas = dict.fromkeys(outputs, PERSON)
    sentinels = {"a": "S-123", "b": "S-456", "c": "S-789", "d": "S-999"}

    reported = check_json_schema(outputs, schemas, sentinels=sentinels)
    assert reported.passed
    assert reported.stats["sentinel_fraction"] == 0.5
    assert reported.stats["sentinel_missing"] == ["b", "d"]
    assert "sentinel echo 2/4" in reported.summary

    gated = check_json_schema(outputs, schemas, sentinels=sentinels, min_sentinel_fraction=0.75)
    [failure] = gated.failures
    assert failure.data["reason"] == "sentinel_fraction"
    assert "sentinel echo fraction 0.500 (2/4) is below the required 0.750; not echoed: b, d" in (
        gated.summary
    )


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="min_valid_fraction must be a fraction in"):
        check_json_schema({}, {}, min_valid_fraction=1.5)
    with pytest.raises(ValueError, match="needs sentinels"):
        check_json_schema({}, {}, min_sentinel_fraction=0.5)
    with pytest.raises(ValueError, match="sentinels has request ids \\['z'\\] with no schema"):
        check_json_schema({}, {}, sentinels={"z": "S"})
    with pytest.raises(TypeError, match="pass the decoded output text"):
        check_json_schema({"r0": b"{}"}, {"r0": PERSON})  # type: ignore[dict-item]
