"""Code-edit workload for the "predicted outputs" scenario.

Each request asks the model to fix a seeded bug in a real Python function (harvested from
pure-Python standard-library modules, so every machine has the same code) and carries that code as
its OpenAI ``prediction``. Helpers here perturb predictions for models that never copy their prompt,
measure how far a reference output overlaps its prediction, and simulate block verification.
"""

from __future__ import annotations

import ast
import bisect
import difflib
import importlib
import inspect
import io
import itertools
import random
import textwrap
import tokenize
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Pure-Python standard-library modules: their source ships with every CPython install.
DEFAULT_MODULES: tuple[str, ...] = (
    "base64",
    "bisect",
    "calendar",
    "colorsys",
    "difflib",
    "email.utils",
    "fnmatch",
    "fractions",
    "gettext",
    "glob",
    "graphlib",
    "heapq",
    "posixpath",
    "pprint",
    "random",
    "shlex",
    "statistics",
    "string",
    "textwrap",
    "urllib.parse",
)

SYSTEM_PROMPT = "You are a careful Python programmer."
USER_INSTRUCTION = (
    "Fix the bug in this Python function. "
    "Reply with only the corrected function in a ```python code block."
)

# Bug kinds, in the order sites are listed.
COMPARE, ARITH, OFF_BY_ONE, BOOL_OP, BOOL_CONST, DROP_NOT = (
    "compare",
    "arith",
    "off_by_one",
    "bool_op",
    "bool_const",
    "drop_not",
)
_COMPARE_FLIPS = {"<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "=="}
_ARITH_SWAPS = {
    ast.Add: ("+", "-"),
    ast.Sub: ("-", "+"),
    ast.Mult: ("*", "//"),
    ast.FloorDiv: ("//", "*"),
}
_AUG_SWAPS = {"+=": "-=", "-=": "+=", "*=": "//=", "//=": "*="}
_BOOL_SWAPS = {ast.And: ("and", "or"), ast.Or: ("or", "and")}

# --------------------------------------------------------------------------------------------------
# Harvesting real functions


@dataclass(frozen=True, slots=True)
class SourceFunction:
    module: str
    qualname: str
    source: str  # dedented, docstring removed, no trailing newline

    @property
    def name(self) -> str:
        return f"{self.module}.{self.qualname}"


def harvest_functions(
    modules: Sequence[str] = DEFAULT_MODULES, *, min_lines: int = 6, max_lines: int = 30
) -> list[SourceFunction]:
    """Top-level functions and class methods of ``modules``, sorted by (module, qualname).

    The source is read from the module file (not the live objects), so C accelerators such as
    ``_heapq`` do not hide the pure-Python definitions. Line limits apply after docstring removal.
    """
    if min_lines < 1 or max_lines < min_lines:
        raise ValueError(
            f"need 1 <= min_lines <= max_lines, got min_lines={min_lines}, max_lines={max_lines}"
        )
    found: dict[tuple[str, str], SourceFunction] = {}
    for module_name in modules:
        lines = _module_source(module_name).split("\n")
        tree = ast.parse("\n".join(lines))
        for qualname, node in _function_nodes(tree):
            source = _function_source(lines, node)
            if source is None:
                continue
            n_lines = source.count("\n") + 1
            if min_lines <= n_lines <= max_lines:
                # A later top-level redefinition is what the module actually binds.
                found[(module_name, qualname)] = SourceFunction(module_name, qualname, source)
    return [found[key] for key in sorted(found)]


def _module_source(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} to harvest functions ({exc}); "
            "pass a list of importable pure-Python modules"
        ) from exc
    try:
        return inspect.getsource(module)
    except (OSError, TypeError) as exc:
        raise ValueError(
            f"module {module_name!r} has no Python source on this machine ({exc}); "
            "drop it from the module list (C extension or a stripped install)"
        ) from exc


def _function_nodes(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    out: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out.append((node.name, node))
        elif isinstance(node, ast.ClassDef):
            for child in node.body:
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    out.append((f"{node.name}.{child.name}", child))
    return out


def _function_source(lines: list[str], node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """Dedented text of ``node`` (decorators included) without its docstring; None if unusable."""
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    assert node.end_lineno is not None
    drop: range = range(0)
    body0 = node.body[0]
    if (
        isinstance(body0, ast.Expr)
        and isinstance(body0.value, ast.Constant)
        and isinstance(body0.value.value, str)
    ):
        if len(node.body) == 1:
            return None  # nothing left once the docstring goes
        assert body0.end_lineno is not None and body0.end_col_offset is not None
        start_line, end_line = lines[body0.lineno - 1], lines[body0.end_lineno - 1]
        whole_lines = (
            start_line[: _char_col(start_line, body0.col_offset)].strip() == ""
            and end_line[_char_col(end_line, body0.end_col_offset) :].strip() == ""
        )
        if not whole_lines:
            return None  # docstring shares a line with code: cannot cut it out by lines
        drop = range(body0.lineno, body0.end_lineno + 1)
    kept = [lines[i - 1] for i in range(first, node.end_lineno + 1) if i not in drop]
    source = textwrap.dedent("\n".join(kept)).rstrip()
    try:
        ast.parse(source)
    except SyntaxError:
        return None
    return source


def _char_col(line: str, byte_col: int) -> int:
    """ast reports columns in UTF-8 bytes; text edits need characters."""
    return len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


# --------------------------------------------------------------------------------------------------
# Seeded bug injection


@dataclass(frozen=True, slots=True)
class Bug:
    kind: str
    line: int  # 1-based line of the edit in the original source
    original: str  # text replaced, exactly as in the original source
    replaced: str  # text put in its place
    buggy_source: str
    offset: int  # character offset of ``original`` in the original source


@dataclass(frozen=True, slots=True)
class BugSite:
    kind: str
    start: int  # character offsets into the source
    end: int
    options: tuple[str, ...]  # replacement texts to pick from


def inject_bug(source: str, rng: random.Random) -> Bug | None:
    """Plant one seeded bug in ``source`` by editing one token; None if there is no site.

    Only the edited span changes, so the rest of the text stays byte-identical to the input.
    """
    sites = bug_sites(source)
    while sites:
        site = rng.choice(sites)
        replaced = rng.choice(site.options)
        buggy = source[: site.start] + replaced + source[site.end :]
        try:
            ast.parse(buggy)
        except SyntaxError:
            sites = [s for s in sites if s != site]
            continue
        return Bug(
            kind=site.kind,
            line=source.count("\n", 0, site.start) + 1,
            original=source[site.start : site.end],
            replaced=replaced,
            buggy_source=buggy,
            offset=site.start,
        )
    return None


def bug_sites(source: str) -> list[BugSite]:
    """Every place ``inject_bug`` may edit, in source order."""
    tree = ast.parse(source)
    index = _TokenIndex(source)
    in_fstring = {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        for sub in ast.walk(node)
    }
    sites: list[BugSite] = []
    for node in ast.walk(tree):
        if id(node) in in_fstring:
            continue
        sites.extend(_node_sites(node, index))
    return sorted(set(sites), key=lambda s: (s.start, s.end, s.kind, s.options))


def _node_sites(node: ast.AST, index: _TokenIndex) -> list[BugSite]:
    if isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        out = []
        for left, right in itertools.pairwise(operands):
            tok = index.between(left, right, set(_COMPARE_FLIPS))
            if tok is not None:
                out.append(BugSite(COMPARE, tok[0], tok[1], (_COMPARE_FLIPS[tok[2]],)))
        return out
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITH_SWAPS:
        text, swap = _ARITH_SWAPS[type(node.op)]
        tok = index.between(node.left, node.right, {text})
        return [] if tok is None else [BugSite(ARITH, tok[0], tok[1], (swap,))]
    if isinstance(node, ast.AugAssign):
        tok = index.between(node.target, node.value, set(_AUG_SWAPS))
        return [] if tok is None else [BugSite(ARITH, tok[0], tok[1], (_AUG_SWAPS[tok[2]],))]
    if isinstance(node, ast.BoolOp):
        text, swap = _BOOL_SWAPS[type(node.op)]
        out = []
        for left, right in itertools.pairwise(node.values):
            tok = index.between(left, right, {text})
            if tok is not None:
                out.append(BugSite(BOOL_OP, tok[0], tok[1], (swap,)))
        return out
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        start = index.node_start(node)
        if index.source.startswith("not", start):
            end = start + 3
            while index.source[end : end + 1] in (" ", "\t"):
                end += 1
            return [BugSite(DROP_NOT, start, end, ("",))]
        return []
    if isinstance(node, ast.Constant):
        start, end = index.node_start(node), index.node_end(node)
        if isinstance(node.value, bool):
            return [BugSite(BOOL_CONST, start, end, (str(not node.value),))]
        if isinstance(node.value, int):
            value = node.value
            options = (str(value + 1),) if value == 0 else (str(value - 1), str(value + 1))
            return [BugSite(OFF_BY_ONE, start, end, options)]
    return []


class _TokenIndex:
    """Character offsets of a source's tokens and AST nodes."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines = source.split("\n")
        self.line_starts = [0]
        for line in self.lines[:-1]:
            self.line_starts.append(self.line_starts[-1] + len(line) + 1)
        # (start, end, text) of operator and keyword tokens, sorted by start
        self.tokens: list[tuple[int, int, str]] = []
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type in (tokenize.OP, tokenize.NAME):
                self.tokens.append((self._offset(*tok.start), self._offset(*tok.end), tok.string))
        self.token_starts = [t[0] for t in self.tokens]

    def _offset(self, line: int, char_col: int) -> int:
        return self.line_starts[line - 1] + char_col

    def node_start(self, node: Any) -> int:
        line = self.lines[node.lineno - 1]
        return self._offset(node.lineno, _char_col(line, node.col_offset))

    def node_end(self, node: Any) -> int:
        line = self.lines[node.end_lineno - 1]
        return self._offset(node.end_lineno, _char_col(line, node.end_col_offset))

    def between(
        self, left: ast.AST, right: ast.AST, texts: set[str]
    ) -> tuple[int, int, str] | None:
        """First token spelled as one of ``texts`` between ``left`` and ``right``."""
        lo, hi = self.node_end(left), self.node_start(right)
        i = bisect.bisect_left(self.token_starts, lo)
        while i < len(self.tokens) and self.tokens[i][1] <= hi:
            if self.tokens[i][2] in texts:
                return self.tokens[i]
            i += 1
        return None


# --------------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True, slots=True)
class CodeEditCase:
    case_id: str
    function: str  # module.qualname
    bug: Bug
    buggy_source: str
    messages: list[dict[str, str]]
    prediction_text: str  # the reply we predict: the code as sent, in a ```python block


def build_code_edit_requests(
    n: int, seed: int, *, functions: Sequence[SourceFunction] | None = None
) -> list[CodeEditCase]:
    """``n`` seeded bug-fix requests; the same seed always gives the same list.

    Functions are drawn without replacement; past one pass over them a new shuffled pass starts, so
    a function may come back with a different bug.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    pool = list(harvest_functions() if functions is None else functions)
    if n and not pool:
        raise ValueError("no functions to build code-edit requests from; pass a non-empty list")
    rng = random.Random(f"code_edit:{seed}")
    cases: list[CodeEditCase] = []
    while len(cases) < n:
        order = list(range(len(pool)))
        rng.shuffle(order)
        before = len(cases)
        for i in order:
            fn = pool[i]
            bug = inject_bug(fn.source, rng)
            if bug is None:
                continue
            cases.append(_make_case(f"code-edit-s{seed}-{len(cases):04d}", fn, bug))
            if len(cases) == n:
                break
        if len(cases) == before:
            raise ValueError(
                f"none of the {len(pool)} functions has a site to plant a bug in "
                "(comparison, arithmetic, int literal, and/or, True/False, not); "
                "pass other functions"
            )
    return cases


def _make_case(case_id: str, fn: SourceFunction, bug: Bug) -> CodeEditCase:
    code_block = f"```python\n{bug.buggy_source}\n```"
    return CodeEditCase(
        case_id=case_id,
        function=fn.name,
        bug=bug,
        buggy_source=bug.buggy_source,
        messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"{USER_INSTRUCTION}\n\n{code_block}"},
        ],
        prediction_text=code_block,
    )


def render_prompt(messages: Sequence[Mapping[str, str]], tokenizer: Any) -> list[int]:
    """Prompt token ids: the tokenizer's chat template if it has one, else a plain-text layout."""
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        return _flat_ids(encoded)
    return _flat_ids(tokenizer.encode(plain_prompt_text(messages), add_special_tokens=False))


def plain_prompt_text(messages: Sequence[Mapping[str, str]]) -> str:
    """Prompt layout for tokenizers without a chat template."""
    parts = [f"### {m['role'].capitalize()}\n{m['content']}\n" for m in messages]
    return "".join(parts) + "### Assistant\n"


def _flat_ids(encoded: Any) -> list[int]:
    # transformers may hand back a BatchEncoding/dict, a tensor, or a batch of one.
    if isinstance(encoded, Mapping) or hasattr(encoded, "input_ids"):
        encoded = encoded["input_ids"]
    if hasattr(encoded, "tolist"):
        encoded = encoded.tolist()
    ids = list(encoded)
    if len(ids) == 1 and isinstance(ids[0], list | tuple):
        ids = list(ids[0])
    if not all(isinstance(t, int) for t in ids):
        raise TypeError(
            f"tokenizer returned {type(encoded).__name__} that is not a flat list of token ids; "
            "pass a transformers tokenizer (PreTrainedTokenizerBase)"
        )
    return ids


# --------------------------------------------------------------------------------------------------
# Predictions


@dataclass(frozen=True, slots=True)
class Edit:
    kind: str  # "substitute", "insert" or "delete"
    start: int  # span [start, end) of the input replaced by ``tokens``; insert has start == end
    end: int
    tokens: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PerturbedPrediction:
    tokens: list[int]
    edits: tuple[Edit, ...]  # sorted, non-overlapping, in input coordinates


def apply_edits(tokens: Sequence[int], edits: Sequence[Edit]) -> list[int]:
    """Apply an edit script (sorted, non-overlapping spans of the input)."""
    out: list[int] = []
    pos = 0
    for edit in edits:
        if edit.start < pos or edit.end < edit.start or edit.end > len(tokens):
            raise ValueError(f"edit {edit} overlaps an earlier edit or leaves the input")
        out.extend(tokens[pos : edit.start])
        out.extend(edit.tokens)
        pos = edit.end
    out.extend(tokens[pos:])
    return out


def perturb_prediction(
    tokens: Sequence[int],
    rng: random.Random,
    *,
    vocab_size: int,
    n_spans: int = 3,
    max_span: int = 4,
) -> PerturbedPrediction:
    """A prediction that differs from ``tokens`` in a few seeded spans (substitute/insert/delete).

    Spans are at least one token apart, so between them the prediction copies ``tokens`` and an
    engine must verify and re-align after each span. The result always differs from the input.
    """
    if vocab_size < 2:
        raise ValueError(
            f"vocab_size must be >= 2 to substitute a different token, got {vocab_size}"
        )
    if n_spans < 1 or max_span < 1:
        raise ValueError(f"n_spans and max_span must be >= 1, got {n_spans} and {max_span}")
    tokens = list(tokens)
    for _ in range(8):
        edits = _draw_edits(tokens, rng, vocab_size, n_spans, max_span)
        out = apply_edits(tokens, edits)
        if out != tokens:
            return PerturbedPrediction(out, edits)
    # Rare (tiny inputs where edits cancel out): an insertion always changes the length.
    at = rng.randint(0, len(tokens))
    edit = Edit("insert", at, at, (rng.randrange(vocab_size),))
    return PerturbedPrediction(apply_edits(tokens, [edit]), (edit,))


def _draw_edits(
    tokens: list[int], rng: random.Random, vocab_size: int, n_spans: int, max_span: int
) -> tuple[Edit, ...]:
    n = len(tokens)
    taken: list[tuple[int, int]] = []
    edits: list[Edit] = []
    for _ in range(20 * n_spans):
        if len(edits) == n_spans:
            break
        kind = rng.choice(("substitute", "insert", "delete")) if n else "insert"
        if kind == "insert":
            start = end = rng.randint(0, n)
            new = tuple(rng.randrange(vocab_size) for _ in range(rng.randint(1, max_span)))
        else:
            length = rng.randint(1, min(max_span, n))
            start = rng.randint(0, n - length)
            end = start + length
            new = (
                ()
                if kind == "delete"
                else tuple(_other(t, rng, vocab_size) for t in tokens[start:end])
            )
        # keep a gap of one token on either side so spans stay separate
        if any(start <= e and s <= end for s, e in taken):
            continue
        taken.append((start, end))
        edits.append(Edit(kind, start, end, new))
    return tuple(sorted(edits, key=lambda e: (e.start, e.end)))


def _other(token: int, rng: random.Random, vocab_size: int) -> int:
    t = rng.randrange(vocab_size - 1)
    return t + 1 if t >= token else t


@dataclass(frozen=True, slots=True)
class BlockVerification:
    """Outcome of simulated greedy block verification of a prediction against an output."""

    block: int
    steps: int  # model forward steps to produce the output
    verify_steps: int  # steps that had prediction tokens to verify
    accepted: int  # prediction tokens accepted, summed over steps

    @property
    def mean_accepted(self) -> float:
        return self.accepted / self.verify_steps if self.verify_steps else 0.0


def simulate_block_verification(
    prediction: Sequence[int], output: Sequence[int], *, block: int = 16, anchor: int = 3
) -> BlockVerification:
    """Greedy block verification of ``prediction`` while producing ``output``.

    Each step proposes up to ``block`` prediction tokens from the aligned position and accepts the
    longest prefix that agrees with the output; the model then emits one token itself (the bonus
    after a full accept, the correction after a mismatch), so a step yields accepted + 1 tokens
    (fewer at the very end). A step with nothing to propose is a plain one-token decode. When the
    model's own token disagrees with the prediction, alignment is lost until the last ``anchor``
    output tokens are found again in the prediction: first at or after the point of divergence,
    else anywhere.
    """
    if block < 1 or anchor < 1:
        raise ValueError(f"block and anchor must be >= 1, got {block} and {anchor}")
    pred, out = list(prediction), list(output)
    pos = 0  # output tokens produced
    cursor: int | None = 0  # prediction index aligned with out[pos], None when lost
    last_cursor = 0
    steps = verify_steps = accepted_total = 0
    ngrams: dict[tuple[int, ...], list[int]] = {}  # anchor-gram -> its start positions, ascending
    for i in range(len(pred) - anchor + 1):
        ngrams.setdefault(tuple(pred[i : i + anchor]), []).append(i)
    while pos < len(out):
        steps += 1
        draft = pred[cursor : cursor + block] if cursor is not None else []
        accepted = 0
        while accepted < len(draft) and pos + accepted < len(out):
            if draft[accepted] != out[pos + accepted]:
                break
            accepted += 1
        if draft:
            verify_steps += 1
            accepted_total += accepted
        emitted = min(accepted + 1, len(out) - pos)
        pos += emitted
        if cursor is not None:
            last_cursor = cursor + accepted
            if last_cursor < len(pred) and pred[last_cursor] == out[pos - 1]:
                cursor = last_cursor + 1  # the model's own token also agrees: still aligned
                continue
        cursor = _realign(ngrams, out[max(0, pos - anchor) : pos], anchor, last_cursor)
    return BlockVerification(block, steps, verify_steps, accepted_total)


def _realign(
    ngrams: dict[tuple[int, ...], list[int]], tail: list[int], anchor: int, start: int
) -> int | None:
    hits = ngrams.get(tuple(tail), []) if len(tail) == anchor else []
    if not hits:
        return None
    i = bisect.bisect_left(hits, start - anchor)
    return (hits[i] if i < len(hits) else hits[0]) + anchor


@dataclass(frozen=True, slots=True)
class Overlap:
    difflib_ratio: float  # SequenceMatcher(autojunk=False).ratio()
    copied_fraction: float  # share of output tokens inside matching blocks of >= 4 tokens
    prediction: tuple[int, ...] = field(repr=False)
    output: tuple[int, ...] = field(repr=False)

    def accepted_per_block(self, block: int = 16) -> float:
        """Mean prediction tokens accepted per ``block``-token verification step."""
        return simulate_block_verification(self.prediction, self.output, block=block).mean_accepted


COPY_MIN_RUN = 4  # tokens: shorter matches are coincidence, not copying


def prediction_overlap(prediction: Sequence[int], output: Sequence[int]) -> Overlap:
    """How much of ``output`` its ``prediction`` already holds."""
    pred, out = tuple(prediction), tuple(output)
    matcher = difflib.SequenceMatcher(None, pred, out, autojunk=False)
    copied = sum(b.size for b in matcher.get_matching_blocks() if b.size >= COPY_MIN_RUN)
    return Overlap(
        difflib_ratio=matcher.ratio(),
        copied_fraction=copied / len(out) if out else 0.0,
        prediction=pred,
        output=out,
    )


def select_copying_cases(
    cases: Sequence[CodeEditCase],
    outputs: Sequence[Sequence[int]],
    predictions: Sequence[Sequence[int]],
    *,
    min_ratio: float = 0.5,
    n: int,
) -> list[int]:
    """Indices of the first ``n`` cases whose reference output overlaps its prediction.

    Real code-edit replies mostly re-emit the code with a small fix; a model that rewrote the code
    instead would make a scenario about predictions meaningless, so such cases are left out.
    """
    if not len(cases) == len(outputs) == len(predictions):
        raise ValueError(
            f"got {len(cases)} cases, {len(outputs)} outputs and {len(predictions)} predictions; "
            "pass one output and one prediction per case"
        )
    ratios = [
        prediction_overlap(p, o).difflib_ratio for p, o in zip(predictions, outputs, strict=True)
    ]
    chosen = [i for i, r in enumerate(ratios) if r >= min_ratio]
    if len(chosen) < n:
        best = max(ratios, default=0.0)
        raise ValueError(
            f"only {len(chosen)} of {len(cases)} code-edit cases have a reference output with "
            f"difflib ratio >= {min_ratio} to its prediction (best {best:.2f}), need {n}: "
            "build more candidate cases or lower min_ratio"
        )
    return chosen[:n]
