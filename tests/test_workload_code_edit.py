from __future__ import annotations

import ast
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vibeserve.workloads.code_edit import (
    BOOL_CONST,
    BOOL_OP,
    COMPARE,
    DROP_NOT,
    OFF_BY_ONE,
    CodeEditCase,
    SourceFunction,
    apply_edits,
    bug_sites,
    build_code_edit_requests,
    harvest_functions,
    inject_bug,
    perturb_prediction,
    plain_prompt_text,
    prediction_overlap,
    render_prompt,
    select_copying_cases,
    simulate_block_verification,
)

ARITH = "arith"


@pytest.fixture(scope="module")
def functions() -> list[SourceFunction]:
    return harvest_functions()


def _distinct(n: int, start: int = 0) -> list[int]:
    return list(range(start, start + n))


# --- harvesting ---------------------------------------------------------------------------------


def test_harvest_finds_many_functions_deterministically(functions: list[SourceFunction]) -> None:
    assert len(functions) >= 100
    assert harvest_functions() == functions
    keys = [(f.module, f.qualname) for f in functions]
    assert keys == sorted(keys)
    assert len({f.module for f in functions}) >= 10
    for f in functions:
        assert 6 <= f.source.count("\n") + 1 <= 30
        assert not f.source.endswith("\n") and not f.source.startswith((" ", "\t"))
        node = ast.parse(f.source).body[0]
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        first = node.body[0]
        is_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
        assert not (is_docstring and isinstance(first.value.value, str)), f.name


def test_harvest_respects_line_limits_and_reports_bad_modules() -> None:
    short = harvest_functions(("colorsys",), min_lines=1, max_lines=8)
    assert short and all(f.source.count("\n") < 8 for f in short)
    with pytest.raises(ValueError, match="cannot import module"):
        harvest_functions(("no_such_module_xyz",))
    with pytest.raises(ValueError, match="min_lines"):
        harvest_functions(min_lines=10, max_lines=5)


# --- bug injection ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_injected_bug_changes_one_site_and_parses(
    functions: list[SourceFunction], seed: int
) -> None:
    source = functions[seed % len(functions)].source
    bug = inject_bug(source, random.Random(seed))
    if bug is None:
        assert bug_sites(source) == []
        return
    assert bug.original != bug.replaced
    assert source[bug.offset : bug.offset + len(bug.original)] == bug.original
    rebuilt = source[: bug.offset] + bug.replaced + source[bug.offset + len(bug.original) :]
    assert bug.buggy_source == rebuilt
    assert bug.line == source.count("\n", 0, bug.offset) + 1
    assert ast.dump(ast.parse(bug.buggy_source)) != ast.dump(ast.parse(source))
    assert inject_bug(source, random.Random(seed)) == bug


def test_every_bug_kind_has_sites() -> None:
    source = (
        "def f(a, b):\n"
        "    total = 0\n"
        "    if a < b and not a == 3:\n"
        "        total += a * (b - 1)\n"
        "    return total or False\n"
    )
    sites = bug_sites(source)
    got = {(s.kind, source[s.start : s.end]) for s in sites}
    assert {
        (COMPARE, "<"),
        (COMPARE, "=="),
        (BOOL_OP, "and"),
        (BOOL_OP, "or"),
        (DROP_NOT, "not "),
        (ARITH, "+="),
        (ARITH, "*"),
        (ARITH, "-"),
        (OFF_BY_ONE, "0"),
        (OFF_BY_ONE, "3"),
        (OFF_BY_ONE, "1"),
        (BOOL_CONST, "False"),
    } <= got
    kinds = {inject_bug(source, random.Random(s)).kind for s in range(200)}  # type: ignore[union-attr]
    assert kinds == {COMPARE, BOOL_OP, DROP_NOT, ARITH, OFF_BY_ONE, BOOL_CONST}


def test_bug_offsets_are_characters_not_bytes() -> None:
    source = 'def f(x):\n    s = "héllo…"; return x < len(s)\n'
    (site,) = bug_sites(source)
    assert source[site.start : site.end] == "<"
    bug = inject_bug(source, random.Random(0))
    assert bug is not None
    assert bug.buggy_source == source.replace("x < len", "x <= len")


def test_no_site_gives_none_and_fstrings_are_left_alone() -> None:
    assert inject_bug("def f(x):\n    return x\n", random.Random(0)) is None
    assert bug_sites('def f(x):\n    return f"{x + 1}"\n') == []


# --- requests -----------------------------------------------------------------------------------


def test_requests_are_seeded(functions: list[SourceFunction]) -> None:
    a = build_code_edit_requests(12, seed=1, functions=functions)
    assert a == build_code_edit_requests(12, seed=1, functions=functions)
    b = build_code_edit_requests(12, seed=2, functions=functions)
    assert [c.function for c in a] != [c.function for c in b]
    assert len({c.case_id for c in a}) == 12


def test_request_layout(functions: list[SourceFunction]) -> None:
    for case in build_code_edit_requests(8, seed=5, functions=functions):
        assert isinstance(case, CodeEditCase)
        assert case.buggy_source == case.bug.buggy_source
        assert case.prediction_text == f"```python\n{case.buggy_source}\n```"
        roles = [m["role"] for m in case.messages]
        assert roles == ["system", "user"]
        user = case.messages[1]["content"]
        assert user.startswith("Fix the bug in this Python function.")
        assert user.endswith(case.prediction_text)
        assert any(f.name == case.function for f in functions)


def test_requests_reuse_functions_past_one_pass() -> None:
    fn = SourceFunction("m", "f", "def f(a):\n    return a + 1 < 2")
    cases = build_code_edit_requests(5, seed=0, functions=[fn])
    assert len(cases) == 5 and all(c.function == "m.f" for c in cases)
    with pytest.raises(ValueError, match="site to plant a bug"):
        build_code_edit_requests(1, seed=0, functions=[SourceFunction("m", "g", "def g(): pass")])


# --- render_prompt ------------------------------------------------------------------------------


def _byte_tokenizer() -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Fix ü < 1"}]


def test_render_prompt_without_chat_template() -> None:
    tokenizer = _byte_tokenizer()
    assert not getattr(tokenizer, "chat_template", None)
    ids = render_prompt(MESSAGES, tokenizer)
    text = "### System\nBe brief.\n### User\nFix ü < 1\n### Assistant\n"
    assert plain_prompt_text(MESSAGES) == text
    assert isinstance(ids, list) and all(type(t) is int for t in ids)
    assert len(ids) == len(text.encode("utf-8"))  # byte-level, no merges, no special tokens
    assert tokenizer.decode(ids) == text  # type: ignore[attr-defined]


def test_render_prompt_with_chat_template() -> None:
    tokenizer = _byte_tokenizer()
    tokenizer.chat_template = (  # type: ignore[attr-defined]
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    ids = render_prompt(MESSAGES, tokenizer)
    assert isinstance(ids, list) and all(type(t) is int for t in ids)
    expected = "<system>Be brief.\n<user>Fix ü < 1\n<assistant>"
    assert tokenizer.decode(ids) == expected  # type: ignore[attr-defined]


class _DictTokenizer:
    chat_template = "x"

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: object) -> object:
        return {"input_ids": [[7, 8, 9]], "attention_mask": [[1, 1, 1]]}


def test_render_prompt_flattens_batch_encodings() -> None:
    assert render_prompt(MESSAGES, _DictTokenizer()) == [7, 8, 9]


# --- perturb_prediction -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    tokens=st.lists(st.integers(0, 5), max_size=60),
    seed=st.integers(0, 2**32 - 1),
    n_spans=st.integers(1, 4),
    max_span=st.integers(1, 5),
)
def test_perturb_prediction_edit_script(
    tokens: list[int], seed: int, n_spans: int, max_span: int
) -> None:
    got = perturb_prediction(
        tokens, random.Random(seed), vocab_size=6, n_spans=n_spans, max_span=max_span
    )
    assert got.tokens != tokens
    assert apply_edits(tokens, got.edits) == got.tokens
    assert 1 <= len(got.edits) <= n_spans
    for e in got.edits:
        assert e.kind in ("substitute", "insert", "delete")
        assert len(e.tokens) <= max_span and e.end - e.start <= max_span
        if e.kind == "substitute":
            assert len(e.tokens) == e.end - e.start
            assert all(a != b for a, b in zip(e.tokens, tokens[e.start : e.end], strict=True))
    for prev, nxt in itertools.pairwise(got.edits):
        assert prev.end < nxt.start  # separate spans, at least one copied token between
    again = perturb_prediction(
        tokens, random.Random(seed), vocab_size=6, n_spans=n_spans, max_span=max_span
    )
    assert again == got


def test_perturb_prediction_validates_arguments() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        perturb_prediction([1, 2], random.Random(0), vocab_size=1)
    with pytest.raises(ValueError, match="n_spans"):
        perturb_prediction([1, 2], random.Random(0), vocab_size=8, n_spans=0)


# --- prediction_overlap / block verification ----------------------------------------------------


def test_identical_prediction_accepts_full_blocks() -> None:
    # 17 = 16 accepted + the model's own bonus token per step
    out = _distinct(17 * 10)
    overlap = prediction_overlap(out, out)
    assert overlap.difflib_ratio == 1.0 and overlap.copied_fraction == 1.0
    assert overlap.accepted_per_block(16) == 16.0
    v = simulate_block_verification(out, out, block=16)
    assert (v.steps, v.verify_steps, v.accepted) == (10, 10, 160)
    assert overlap.accepted_per_block(4) == 4.0


def test_disjoint_prediction_accepts_nothing() -> None:
    overlap = prediction_overlap(_distinct(100), _distinct(100, start=1000))
    assert overlap.difflib_ratio == 0.0 and overlap.copied_fraction == 0.0
    assert overlap.accepted_per_block() == 0.0
    v = simulate_block_verification(_distinct(100), _distinct(100, start=1000))
    assert v.steps == 100 and v.verify_steps == 1


@pytest.mark.parametrize("where", [5, 100, 250])
def test_one_inserted_token_still_realigns(where: int) -> None:
    out = _distinct(17 * 20)
    noisy = [*out[:where], 9999, *out[where:]]
    for pred, output in ((noisy, out), (out, noisy)):  # extra token in prediction, then in output
        overlap = prediction_overlap(pred, output)
        assert overlap.difflib_ratio > 0.99
        assert overlap.accepted_per_block(16) > 13.0


def test_partial_copy_statistics() -> None:
    out = _distinct(200)
    pred = out[:50] + _distinct(50, start=5000) + out[100:]  # half-way block rewritten
    overlap = prediction_overlap(pred, out)
    assert overlap.copied_fraction == pytest.approx(150 / 200)
    assert 0.7 < overlap.difflib_ratio < 0.8
    assert 8.0 < overlap.accepted_per_block() < 16.0


def test_select_copying_cases(functions: list[SourceFunction]) -> None:
    cases = build_code_edit_requests(4, seed=0, functions=functions)
    preds = [_distinct(40) for _ in cases]
    outputs = [_distinct(40), _distinct(40, 500), _distinct(40), _distinct(40)]
    assert select_copying_cases(cases, outputs, preds, n=2) == [0, 2]
    with pytest.raises(ValueError, match=r"only 3 of 4 .* lower min_ratio"):
        select_copying_cases(cases, outputs, preds, n=4)
    with pytest.raises(ValueError, match="one output and one prediction per case"):
        select_copying_cases(cases, outputs[:3], preds, n=1)
