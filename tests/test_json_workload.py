"""The json_decoding workload's schemas and the reference's constrained decoder, without a
scenario run: every schema is a valid JSON schema the pinned grammar engine compiles, seeds draw
different schemas, and the reference's tokens are ones the grammar accepts, forced ones marked."""

from __future__ import annotations

import json
import random

import pytest
from jsonschema import Draft202012Validator

from pytest_vibeserve.workloads.json_schemas import (
    DETERMINED_MARGIN,
    HAND,
    SENTINEL_PREFIX,
    generate_schema,
    lookup_forwards,
    prompt_text,
    schema_cases,
    sentinel,
)
from reference_impls.constrained import (
    FORCED_MARGIN,
    compile_grammar,
    config_id,
    constrained_decode,
    departure,
    new_matcher,
)

assert DETERMINED_MARGIN == FORCED_MARGIN  # the workload reads the reference's marks

COVERED = ("$defs", "$ref", "anyOf", "oneOf", "enum", "const", "pattern", "format", "minimum")


def all_keys(schema) -> set[str]:
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            found.add(key)
            found |= all_keys(value)
    elif isinstance(schema, list):
        for item in schema:
            found |= all_keys(item)
    return found


def test_the_hand_written_corpus_covers_what_jsonschemabench_covers():
    keys = set().union(*(all_keys(case.schema) for case in HAND))
    assert set(COVERED) <= keys
    assert any(len(case.schema["required"]) < len(case.schema["properties"]) for case in HAND)
    arrays = [s for case in HAND for s in _walk(case.schema) if s.get("type") == "array"]
    assert arrays and all("maxItems" in a for a in arrays)


def _walk(schema):
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from _walk(value)
    elif isinstance(schema, list):
        for item in schema:
            yield from _walk(item)


@pytest.mark.parametrize("bounded", [False, True])
def test_every_schema_is_valid_and_compiles(bounded):
    cases = schema_cases(0, 12, bounded=bounded) + schema_cases(7, 30, bounded=bounded)
    for case in cases:
        Draft202012Validator.check_schema(case.schema)
        json.loads(compile_grammar(case.response_format()))  # compiles under the pinned options
        assert case.sentinel_field in case.schema["properties"]
        assert case.sentinel_field in case.schema["required"]


def test_bounded_schemas_hold_only_short_values():
    for case in schema_cases(3, 40, bounded=True):
        for sub in _walk(case.schema):
            if sub.get("type") == "string":
                assert sub["pattern"] in ("^[a-z]{1,5}$", "^[a-z0-9-]{1,9}$")
            assert sub.get("type") != "number" and "$ref" not in sub and "anyOf" not in sub


def test_seed_zero_is_the_corpus_and_other_seeds_draw_unseen_schemas():
    assert [c.name for c in schema_cases(0, len(HAND), bounded=False)] == [c.name for c in HAND]
    one = [json.dumps(c.schema) for c in schema_cases(1, 10, bounded=False)]
    two = [json.dumps(c.schema) for c in schema_cases(2, 10, bounded=False)]
    assert not set(one) & set(two)
    assert one == [json.dumps(c.schema) for c in schema_cases(1, 10, bounded=False)]


def test_the_prompt_embeds_the_schema_and_the_sentinel():
    code = sentinel(random.Random(0))
    assert code.startswith(SENTINEL_PREFIX) and len(code) == 9
    case = generate_schema(random.Random(5), bounded=False)
    system, user = prompt_text(case, code)
    assert json.dumps(case.schema, separators=(",", ":")) in system
    assert f'"{case.sentinel_field}" to "{code}"' in user
    assert case.response_format()["json_schema"]["name"] == "response"


def test_config_id_names_the_library_version_and_options():
    assert config_id().startswith("llguidance==") and "whitespace_flexible" in config_id()


@pytest.fixture(scope="module")
def tiny_model(vibeserve_cache):
    from pytest_vibeserve.reference import materialize_model
    from reference_impls.greedy import load_model

    model_dir = materialize_model("tiny", vibeserve_cache)
    return str(model_dir), load_model(model_dir)


def test_the_reference_tokens_are_what_the_grammar_accepts(tiny_model):
    model_dir, model = tiny_model
    case = schema_cases(4, 1, bounded=True)[0]
    prompt = [256, *b"Answer in JSON."]
    out = constrained_decode(model, model_dir, prompt, 96, case.response_format(), top_k=3)
    where = departure(model_dir, case.response_format(), out.tokens)
    assert where["rejected_token"] is None and "unfinished" not in where["message"]
    forced = [m == FORCED_MARGIN for m in out.margins]
    assert any(forced) and not all(forced)  # braces and keys forced, values chosen
    assert all(m >= 0 for m in out.margins)
    text = bytes(t for t in out.tokens if t < 256).decode()
    Draft202012Validator(case.schema).validate(json.loads(text))


def test_departure_points_at_the_first_token_outside_the_schema(tiny_model):
    model_dir, _ = tiny_model
    response_format = HAND[2].response_format()  # ticket: {"kind":"ticket",...}
    tokens = list(b'{"kind":"tocket"')
    where = departure(model_dir, response_format, tokens)
    assert where["accepted_tokens"] == 10 and where["rejected_token"] == ord("o")
    assert "left the schema at token 10" in where["message"]
    assert new_matcher(model_dir, response_format).validate_tokens(list(b'{"kind"')) == 7


def test_lookup_forwards_without_echo_is_one_forward_per_open_token():
    # nothing in the output ever occurred before: no draft is right, every open token costs one
    tokens = [10, 11, 12, 13, 14, 15]
    determined = [True, False, True, False, False, True]
    assert lookup_forwards([1, 2, 3], tokens, determined) == 3  # the opening (10) is free


def test_lookup_forwards_verifies_an_echoed_span_in_one_forward():
    prompt = [5, 6, 7, 8, 9, 20, 21, 22, 23]
    # the output copies 20..23 from the prompt after a free opening token
    tokens = [1, 20, 21, 22, 23, 30]
    determined = [True, False, False, False, False, False]
    # forward 1 (the prefill) decides 20, drafts nothing right (1 never occurred before);
    # forward 2 drafts 21 22 23 (after "20") and one more guess: all picked in one forward,
    # plus 30 from the last right row
    assert lookup_forwards(prompt, tokens, determined) == 2
    assert lookup_forwards(prompt, tokens, determined, draft=0) == 5
    assert lookup_forwards(prompt, tokens, determined, draft=1) == 3  # 20, 21+22, 23+30


def test_lookup_forwards_takes_determined_tokens_free_before_and_after_a_wrong_draft():
    tokens = [40, 50, 51, 52]
    determined = [False, True, True, False]
    # "7" was followed by 40: drafts 40, then 50 51 (determined): all right, so the prefill's
    # last row decides 52 too
    assert lookup_forwards([7, 40, 7], tokens, determined) == 1
    # "7" was followed by 41: the draft is wrong, 40 comes from row 0, 50 51 are taken without
    # logits, and 52 waits for a second forward
    assert lookup_forwards([7, 41, 7], tokens, determined) == 2


def test_lookup_forwards_refuses_mismatched_flags():
    with pytest.raises(ValueError, match="3 tokens but 2 determined flags"):
        lookup_forwards([1], [1, 2, 3], [True, False])
