"""Renders a complete, self-contained ``engine.py`` for scenario predicted_outputs from features.

The features are the engine's state: ``engine_features.json`` next to ``engine.py`` records which
techniques the rendered file holds, so the next recipe knows where it starts (no file = the
starter). Every feature selects real code in the rendered file, never a flag read at run time:

- ``kv_cache``: ``dynamic`` (HF DynamicCache, grows by concatenation) or ``static`` (HF StaticCache
  preallocated for prompt + max_new_tokens, written in place; rollback moves its write position).
- ``verify_block``: 0, or K: each forward verifies up to K tokens of the request's prediction and
  emits the accepted ones plus the model's own next token.
- ``realign`` / ``anchor``: after a mismatch, re-find the output's place in the prediction by its
  last ``anchor`` tokens, so edits in the middle do not end drafting.
- ``prefill_chunk``: 0 = the whole prompt in one forward, N = N-token chunks (bounded activations).
- ``lean_logits``: compute the LM head only on the rows that are read (the last prompt position)
  instead of on every input position; block verification always keeps only its draft rows.
- ``threads``: None = the harness's ``spec.threads``, N = ``torch.set_num_threads(N)``.
- ``compile``: ``none``, ``default`` (torch.compile of the decode/verify forward) or ``freezing``
  (the same with inductor freezing: weights folded as constants).
- ``forward``: ``transformers`` (the model's own forward) or ``lean`` (the Llama forward written out
  over the same weights: fused QKV and gate/up matmuls, its own preallocated KV cache, no mask or
  cache-class machinery per step; the same arithmetic, so the same logits).
- ``matmul``: ``torch`` or ``openblas`` (the lean forward in numpy: its matmuls through numpy's
  OpenBLAS over pre-transposed weights, which on this CPU reads fp32 weights at ~2.5x torch's rate
  at 1-16 rows, and its small ops in numpy too, where a call costs ~1 us instead of torch's ~5;
  another summation order and softmax, so logits move in the last bits and only near-ties flip).
- ``dtype``: ``float32`` (the reference's precision) or ``bfloat16`` (half the bytes per weight
  read; on CPU it changes greedy tokens within a few dozen, so it is a candidate the Judge rejects).
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

FEATURES_FILE = "engine_features.json"
ENGINE_FILE = "engine.py"

KV_CACHES = ("dynamic", "static")
COMPILE_MODES = ("none", "default", "freezing")
FORWARDS = ("transformers", "lean")
MATMULS = ("torch", "openblas")
DTYPES = ("float32", "bfloat16")
MAX_VERIFY_BLOCK = 128
COMPILED_CACHE_CAPACITY = 1024  # a compiled engine's shared KV cache; longer requests recompile
MAX_ANCHOR = 16


class FeatureError(ValueError):
    """A feature value is invalid; the message names the valid values."""


class FeatureSet:
    """What every family's features dataclass shares: JSON round trip and functional updates."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FeatureError(
                f"unknown feature(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**data)

    def replace(self, **changes: Any) -> Any:
        return dataclasses.replace(self, **changes)


class FamilyFeatureSet(FeatureSet):
    """Features of a renderer named by ``family`` in engine_features.json (hybrid, serving,
    json): its docstring line leaves the family out and wraps."""

    __slots__ = ()

    def describe(self) -> str:
        """Every feature as key=value, wrapped for a docstring."""
        items = [f"{k}={v}" for k, v in self.to_dict().items() if k != "family"]
        return textwrap.fill(" ".join(items), width=86, subsequent_indent="    ")


@dataclass(frozen=True, slots=True)
class EngineFeatures(FeatureSet):
    kv_cache: str = "dynamic"
    verify_block: int = 0  # prediction tokens verified per forward; 0 = one token per forward
    realign: bool = False
    anchor: int = 3  # output tokens matched to re-find the place in the prediction
    prefill_chunk: int = 0  # prompt tokens per prefill forward; 0 = the whole prompt at once
    lean_logits: bool = False
    threads: int | None = None  # None = the harness's spec.threads
    compile: str = "none"
    dtype: str = "float32"
    forward: str = "transformers"
    matmul: str = "torch"

    def __post_init__(self) -> None:
        if self.kv_cache not in KV_CACHES:
            raise FeatureError(f"kv_cache={self.kv_cache!r}; valid values: {', '.join(KV_CACHES)}")
        _check_int("verify_block", self.verify_block, 0, MAX_VERIFY_BLOCK, "0 = off")
        _check_bool("realign", self.realign)
        _check_int("anchor", self.anchor, 1, MAX_ANCHOR)
        _check_int("prefill_chunk", self.prefill_chunk, 0, None, "0 = one forward")
        _check_bool("lean_logits", self.lean_logits)
        if self.threads is not None:
            _check_int("threads", self.threads, 1, None, "or null for the harness's spec.threads")
        if self.compile not in COMPILE_MODES:
            raise FeatureError(
                f"compile={self.compile!r}; valid values: {', '.join(COMPILE_MODES)}"
            )
        if self.dtype not in DTYPES:
            raise FeatureError(f"dtype={self.dtype!r}; valid values: {', '.join(DTYPES)}")
        if self.forward not in FORWARDS:
            raise FeatureError(f"forward={self.forward!r}; valid values: {', '.join(FORWARDS)}")
        if self.forward == "lean" and self.kv_cache != "static":
            raise FeatureError(
                "forward='lean' writes its own preallocated KV cache: set kv_cache='static' too"
            )
        if self.matmul not in MATMULS:
            raise FeatureError(f"matmul={self.matmul!r}; valid values: {', '.join(MATMULS)}")
        if self.matmul != "torch" and self.forward != "lean":
            raise FeatureError(
                f"matmul={self.matmul!r} routes the lean forward's matmuls: set forward='lean' too"
            )
        if self.matmul == "openblas" and self.dtype != "float32":
            raise FeatureError(
                f"matmul='openblas' multiplies float32 only (numpy has no {self.dtype}): set "
                "matmul='torch' for it"
            )
        if self.forward == "lean" and self.compile != "none":
            raise FeatureError(
                f"compile={self.compile!r} applies to the transformers forward; the lean forward "
                "runs eager: set compile='none' or forward='transformers'"
            )
        if self.realign and not self.verify_block:
            raise FeatureError(
                "realign=True needs block verification: set verify_block > 0 (e.g. 16) first"
            )
        if self.compile != "none" and self.kv_cache != "static":
            raise FeatureError(
                f"compile={self.compile!r} needs kv_cache='static': a DynamicCache changes shape "
                "every step, so every step would recompile"
            )

    def describe(self) -> str:
        """One line naming every feature, for docstrings and summaries."""
        return " ".join(f"{k}={v}" for k, v in self.to_dict().items())


def _check_int(name: str, value: Any, low: int, high: int | None, note: str = "") -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        extra = f" ({note})" if note else ""
        raise FeatureError(f"{name}={value!r}; valid values: {bounds}{extra}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise FeatureError(f"{name}={value!r}; valid values: true, false")


# --------------------------------------------------------------------------------------------------
# State on disk


def load_features(engine_dir: Path) -> Any:
    """The engine's recorded features, of whichever family it names (``agents.recipes.engines``);
    a directory without the file holds the predicted_outputs starter (defaults)."""
    from agents.recipes import engines

    return engines.load_features(engine_dir)


def write_engine(engine_dir: Path, features: Any) -> Path:
    """Render ``engine.py`` for ``features`` into ``engine_dir`` and record the features."""
    from agents.recipes import engines

    return engines.write_engine(engine_dir, features)


def _replace(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


# --------------------------------------------------------------------------------------------------
# Rendering


def render_engine(features: EngineFeatures) -> str:
    """The full source of an engine.py holding exactly the techniques ``features`` names."""
    f = features
    step = STEP_VERIFY if f.verify_block else STEP_PLAIN
    methods = [_init(f), QUEUE_METHODS, step, _start(f), _forward(f)]
    if f.compile != "none":
        methods.append(_fill(WARM_UP, sizes="(1, 2)" if f.verify_block else "(1,)"))
    engine = "class GreedyEngine:\n" + "\n\n".join(m.strip("\n") for m in methods)
    lean = ""
    if f.forward == "lean" and f.matmul == "openblas":
        lean = numpy_lean_source("matmul='torch' or forward='transformers'")
    elif f.forward == "lean":
        cache = _fill(
            LEAN_CACHE_CLASS,
            layout="[layers, 1, kv_heads, capacity, head_dim]",
            init=LEAN_CACHE_TORCH,
        )
        lean = LEAN_MODEL.replace("$matmul\n", LEAN_MATMUL_TORCH.strip("\n") + "\n\n")
        lean = lean.replace("$cache\n", cache.strip("\n") + "\n")
        supported = _fill(LEAN_SUPPORTED, extra="", where="", fix="forward='transformers'")
        lean = lean.replace("$supported\n", supported)
    blocks = [lean, _cursor(f) if f.verify_block else "", _decoding(f), engine, LOGPROBS, FACTORY]
    head = _docstring(f) + "\n\n" + _imports(f) + _constants(f)
    return head + "\n\n" + "\n\n\n".join(b.strip("\n") for b in blocks if b) + "\n"


def numpy_lean_source(fix: str) -> str:
    """The source of ``LeanCache`` and ``LeanLlama`` in numpy: one sequence's float32 Llama
    forward over any number of new tokens, logits of its last ``keep`` rows, rollback by
    ``crop``. Needs ``numpy as np`` and ``torch``; ``fix`` is what its error for an unsupported
    model tells the user to choose instead. Shared by the predicted_outputs and json engines."""
    cache = _fill(
        LEAN_CACHE_CLASS,
        layout=(
            "float32 arrays, keys [layers, kv_heads, head_dim, capacity]\n"
            "    and values [layers, kv_heads, capacity, head_dim]"
        ),
        init=LEAN_CACHE_NUMPY,
    )
    supported = _fill(LEAN_SUPPORTED, extra=LEAN_SUPPORTED_NUMPY, where=" in numpy", fix=fix)
    lean = LEAN_MODEL_NUMPY.replace("$cache\n", cache.strip("\n") + "\n")
    return lean.replace("$supported\n", supported)


def _fill(template: str, **values: Any) -> str:
    return Template(template).substitute({k: str(v) for k, v in values.items()})


def _docstring(f: EngineFeatures) -> str:
    paragraphs = [f"Features: {f.describe()}"]
    if f.verify_block:
        paragraphs.append(
            f"Each step runs ONE model forward over the tokens not yet in the KV cache plus up "
            f"to {f.verify_block} draft tokens from the request's prediction, keeps the longest "
            "draft prefix the model itself picks greedily, and emits it plus the model's own next "
            "token. The prediction is only a guess: every emitted token is an argmax of the model. "
            "Only the len(draft) + 1 rows that are read go through the LM head."
        )
        paragraphs.append(
            f"After a mismatch the output's last {f.anchor} tokens re-find its place in the "
            "prediction, so drafting resumes after an edit (substitution, insertion, deletion)."
            if f.realign
            else "Drafting stops at the first mismatch with the prediction."
        )
    else:
        paragraphs.append(
            "Plain greedy decoding: one token per model forward; the prediction is unused."
        )
    paragraphs.append(
        "KV cache: transformers DynamicCache (grows by concatenation)."
        if f.kv_cache == "dynamic"
        else "KV cache: transformers StaticCache, preallocated per request and written in place; "
        "a rollback only moves its write position back (stale entries are masked, then "
        "overwritten)."
    )
    if f.forward == "lean":
        paragraphs[-1] = (
            "KV cache: LeanCache, preallocated per request and written in place; a rollback only "
            "moves its length back (stale entries are never read)."
        )
        paragraphs.append(
            "Forward: LeanLlama, the Llama forward written out over the model's own weights "
            "(fused QKV and gate/up matmuls, no per-step mask or cache objects): the same "
            "arithmetic as transformers, so the same logits, with fewer ops per layer."
            if f.matmul == "torch"
            else "Forward: LeanLlama in numpy, the Llama forward written out over the model's own "
            "float32 weights (fused QKV and gate/up matmuls through OpenBLAS, every small op a "
            "numpy call): transformers' arithmetic in another summation order, so logits move "
            "in the last bits and only near-ties can flip."
        )
    if f.prefill_chunk:
        paragraphs.append(f"The prompt is prefilled in chunks of {f.prefill_chunk} tokens.")
    if f.lean_logits:
        paragraphs.append("The LM head runs only on the positions whose logits are read.")
    if f.compile != "none":
        paragraphs.append(
            f"Decode/verify forwards run under torch.compile ({f.compile}); prefill is eager."
        )
    if f.dtype == "bfloat16":
        paragraphs.append(
            "Weights in bfloat16: NOT the reference's precision; on CPU it changes greedy tokens."
        )
    body = "\n\n".join(
        textwrap.fill(p, width=99, break_on_hyphens=False, subsequent_indent="") for p in paragraphs
    )
    return (
        '"""Predicted-outputs engine rendered by agents/recipes/greedy_engine.py: change the\n'
        "features (engine_features.json) and re-render rather than editing this file by hand.\n\n"
        f'{body}\n"""'
    )


def _imports(f: EngineFeatures) -> str:
    lines = ["from __future__ import annotations", ""]
    if f.verify_block and f.realign:
        lines.append("import bisect")
    lines += ["from collections import deque", "from dataclasses import dataclass", ""]
    if f.matmul == "openblas":
        lines.append("import numpy as np")
    lines.append("import torch")
    if f.forward == "lean" and f.matmul == "torch":
        lines.append("import torch.nn.functional as F")
    if f.compile == "freezing":
        lines.append("import torch._inductor.config")
    cache = _cache_class(f)
    if f.forward == "lean":
        lines += ["from transformers import AutoModelForCausalLM", ""]
    else:
        lines += [f"from transformers import AutoModelForCausalLM, {cache}", ""]
    lines.append(
        "from pytest_vibeserve.contract import FORWARD_COUNTER, EngineSpec, Event, Request"
    )
    return "\n".join(lines) + "\n"


def _constants(f: EngineFeatures) -> str:
    lines = []
    if f.verify_block:
        lines.append(f"VERIFY_BLOCK = {f.verify_block}  # prediction tokens verified per forward")
        if f.realign:
            lines.append(
                f"ANCHOR = {f.anchor}  # output tokens that re-find the place in the prediction"
            )
    if f.prefill_chunk:
        lines.append(f"PREFILL_CHUNK = {f.prefill_chunk}  # prompt tokens per prefill forward")
    if f.compile != "none":
        most = "VERIFY_BLOCK + 1" if f.verify_block else "1"
        lines.append(f"COMPILED_MAX_TOKENS = {most}  # forwards of at most this many tokens")
        lines.append(
            f"CACHE_CAPACITY = {COMPILED_CACHE_CAPACITY}  # positions of the KV cache all requests "
            "share"
        )
    return "\n" + "\n".join(lines) + "\n" if lines else ""


def _cursor(f: EngineFeatures) -> str:
    if f.realign:
        return CURSOR_HEAD + CURSOR_ANCHORS + CURSOR_METHODS + CURSOR_REALIGN
    return CURSOR_HEAD + CURSOR_METHODS + CURSOR_NO_REALIGN


def _cache_class(f: EngineFeatures) -> str:
    if f.forward == "lean":
        return "LeanCache"
    return "StaticCache" if f.kv_cache == "static" else "DynamicCache"


def _decoding(f: EngineFeatures) -> str:
    return _fill(
        DECODING,
        cache=_cache_class(f),
        cursor="    cursor: PredictionCursor\n" if f.verify_block else "",
    )


def _init(f: EngineFeatures) -> str:
    if f.threads is None:
        threads = "torch.set_num_threads(spec.threads)"
    else:
        threads = f"torch.set_num_threads({f.threads})  # tuned: not the harness's spec.threads"
    if f.dtype == "float32":
        dtype = "dtype = getattr(torch, spec.dtype)  # the reference's precision"
    else:
        dtype = "dtype = torch.bfloat16  # half the bytes per weight read; NOT the reference's"
    compiled = ""
    if f.compile != "none":
        freezing = COMPILE_FREEZING if f.compile == "freezing" else ""
        compiled = _fill(COMPILE, freezing=freezing)
    if f.forward == "lean":
        compiled = (
            "        self.lean = LeanLlama(self.model)  # the same weights, written-out forward\n"
        )
    return _fill(ENGINE_INIT, threads=threads, dtype=dtype, compiled=compiled)


def _start(f: EngineFeatures) -> str:
    if f.forward == "lean":
        cache = LEAN_CACHE
    elif f.kv_cache == "dynamic":
        cache = "        cache = DynamicCache()\n"
    elif f.compile != "none":
        cache = SHARED_CACHE
    else:
        cache = STATIC_CACHE_VERIFY if f.verify_block else STATIC_CACHE
    cursor = ", cursor" if f.verify_block else ""
    if f.prefill_chunk:
        chunk_forward = CHUNK_FORWARD_LEAN if f.forward == "lean" else CHUNK_FORWARD
        prompt = _fill(PROMPT_CHUNKED, cursor=cursor, chunk_forward=chunk_forward)
    else:
        prompt = _fill(PROMPT_WHOLE, cursor=cursor)
    if f.verify_block:
        prompt = "        cursor = PredictionCursor(request.prediction_token_ids)\n" + prompt
    return START_HEAD + cache + prompt


def _forward(f: EngineFeatures) -> str:
    if f.forward == "lean":
        return FORWARD_HEAD_LEAN + FORWARD_LEAN_MODEL
    model = "model" if f.compile != "none" else "self.model"
    pick = COMPILED_PICK if f.compile != "none" else ""
    if f.lean_logits or f.verify_block:
        call = _fill(FORWARD_LEAN, model=model)
        one_line = call.replace("(\n            ", "(").replace("\n        ).logits", ").logits")
        if max(len(line) for line in one_line.splitlines()) <= 100:
            call = one_line  # what ruff format would write
    else:
        call = _fill(FORWARD_FULL, model=model)
    return _fill(FORWARD_HEAD, cache=_cache_class(f)) + pick + call


# Fragments of the rendered file, at their final indentation; `$name` is filled in.

CURSOR_HEAD = '''\
class PredictionCursor:
    """Where the output stands in the prediction: a source of drafts, never of output."""

    def __init__(self, prediction: tuple[int, ...] | None) -> None:
        self.prediction = list(prediction or ())
        # prediction index of the next output token; None while alignment is lost
        self.position: int | None = 0 if self.prediction else None
'''

CURSOR_ANCHORS = """\
        self.lost_at = 0  # prediction index where alignment was last lost
        # every ANCHOR-gram of the prediction -> its start indices, ascending
        self.anchors: dict[tuple[int, ...], list[int]] = {}
        for start in range(len(self.prediction) - ANCHOR + 1):
            key = tuple(self.prediction[start : start + ANCHOR])
            self.anchors.setdefault(key, []).append(start)
"""

CURSOR_METHODS = '''
    def draft(self, limit: int) -> list[int]:
        """Up to ``limit`` prediction tokens that come next if the output keeps following it."""
        if self.position is None or limit <= 0:
            return []
        return self.prediction[self.position : self.position + limit]

    def advance(self, accepted: int, own_token: int, output: list[int]) -> None:
        """After a step that kept ``accepted`` drafts and added the model's own token."""
        if self.position is not None:
            at = self.position + accepted  # the prediction index own_token stands at
            if at < len(self.prediction) and self.prediction[at] == own_token:
                self.position = at + 1  # the model's own token agrees: still aligned
                return
'''

CURSOR_REALIGN = '''\
            self.lost_at = at
        self.position = self._realign(output)

    def _realign(self, output: list[int]) -> int | None:
        """The index after the output's last ANCHOR tokens in the prediction: their first
        occurrence at or after where alignment was lost, else the first anywhere; None if absent.
        """
        if len(output) < ANCHOR:
            return None
        starts = self.anchors.get(tuple(output[-ANCHOR:]))
        if not starts:
            return None
        i = bisect.bisect_left(starts, self.lost_at - ANCHOR)
        return (starts[i] if i < len(starts) else starts[0]) + ANCHOR
'''

CURSOR_NO_REALIGN = """\
        self.position = None  # no re-alignment: drafting stops at the first mismatch
"""

DECODING = '''\
@dataclass(slots=True)
class Decoding:
    """The request in flight."""

    request: Request
    cache: $cache
    pending: list[int]  # tokens not in the KV cache yet: the prompt, then the last token
    output: list[int]
$cursor'''

ENGINE_INIT = """\
    def __init__(self, spec: EngineSpec) -> None:
        $threads
        $dtype
        self.device = torch.device(spec.device)
        self.model = AutoModelForCausalLM.from_pretrained(spec.model_path, dtype=dtype)
        self.model.to(self.device).eval()
        self.waiting: deque[Request] = deque()
        self.active: Decoding | None = None
        self.forwards = 0
$compiled"""

COMPILE = """\
        # Decode/verify forwards (a few tokens) run compiled; prefill stays eager: its length
        # changes with every prompt. All requests share one StaticCache: the compiled graph guards
        # on the cache tensors' addresses, so a new cache would mean a new compile (minutes).
$freezing        self.cache = StaticCache(config=self.model.config, max_cache_len=CACHE_CAPACITY)
        self.compiled_model = torch.compile(self.model, dynamic=True)
        self._warm_up()
"""

SHARED_CACHE = """\
        if len(request.prompt_token_ids) + request.max_new_tokens > self.cache.get_max_length():
            # too long for the shared cache: a bigger one, and a recompile on its first forward
            capacity = len(request.prompt_token_ids) + request.max_new_tokens
            self.cache = StaticCache(config=self.model.config, max_cache_len=capacity)
        self.cache.crop(-int(self.cache.get_seq_length()))  # rewind: stale entries are masked
        cache = self.cache
"""

WARM_UP = '''
    @torch.inference_mode()
    def _warm_up(self) -> None:
        """Compile now, not inside a timed request. dynamo specialises 1-token inputs; longer
        ones share a second graph with a dynamic length."""
        prompt = [0] * 4  # a prefill: runs eager
        for n in $sizes:
            self._forward(self.cache, prompt, keep=1)
            self._forward(self.cache, [0] * n, keep=n)
            self.cache.crop(-(len(prompt) + n))
'''

COMPILE_FREEZING = """\
        torch._inductor.config.freezing = True  # weights become constants of the graph
"""

QUEUE_METHODS = """
    def add_request(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished_requests(self) -> bool:
        return self.active is not None or bool(self.waiting)

    def counters(self) -> dict[str, int]:
        return {FORWARD_COUNTER: self.forwards}
"""

STEP_PLAIN = """
    @torch.inference_mode()
    def step(self) -> list[Event]:
        if self.active is None:
            if not self.waiting:
                return []
            self.active = self._start(self.waiting.popleft())
        seq, request = self.active, self.active.request
        logits = self._forward(seq.cache, seq.pending, keep=1)  # [1, vocab]
        token = int(logits[-1].argmax())
        seq.output.append(token)
        finished = len(seq.output) >= request.max_new_tokens or token in request.stop_token_ids
        if finished:
            self.active = None
        else:
            seq.pending = [token]
        logprobs = _top_logprobs(logits, [token], request.top_logprobs)
        return [Event(request.request_id, [token], finished, logprobs)]
"""

STEP_VERIFY = """
    @torch.inference_mode()
    def step(self) -> list[Event]:
        if self.active is None:
            if not self.waiting:
                return []
            self.active = self._start(self.waiting.popleft())
        seq, request = self.active, self.active.request
        room = request.max_new_tokens - len(seq.output)  # tokens the request may still emit
        # A step emits the accepted drafts plus one token of the model's own: draft <= room - 1.
        draft = seq.cursor.draft(min(VERIFY_BLOCK, room - 1))
        # One forward over pending + draft. Of its last len(draft) + 1 logit rows, row i is the
        # model's greedy choice after pending + draft[:i]: it verifies draft[i]; the last row is
        # the model's own next token after the whole draft.
        logits = self._forward(seq.cache, seq.pending + draft, keep=len(draft) + 1)  # [n, vocab]
        choices = logits.argmax(dim=-1).tolist()
        accepted = 0
        while accepted < len(draft) and choices[accepted] == draft[accepted]:
            accepted += 1
        # choices[:accepted] == draft[:accepted], and choices[accepted] is the bonus token after
        # a full accept or the correction at the first mismatch: every token is the model's own.
        tokens = choices[: accepted + 1]
        # Rejected drafts left keys/values in the cache past the output: roll them back.
        seq.cache.crop(-(len(draft) - accepted))
        for i, token in enumerate(tokens):
            if token in request.stop_token_ids:  # the output ends right after a stop token
                tokens = tokens[: i + 1]
                break
        seq.output.extend(tokens)
        finished = tokens[-1] in request.stop_token_ids or len(tokens) == room
        if finished:
            self.active = None
        else:
            seq.pending = [tokens[-1]]
            seq.cursor.advance(accepted, tokens[-1], seq.output)
        logprobs = _top_logprobs(logits, tokens, request.top_logprobs)
        return [Event(request.request_id, tokens, finished, logprobs)]
"""

START_HEAD = """
    def _start(self, request: Request) -> Decoding:
"""

STATIC_CACHE = """\
        # Preallocated once per request, then written in place.
        capacity = len(request.prompt_token_ids) + request.max_new_tokens
        cache = StaticCache(config=self.model.config, max_cache_len=capacity)
"""

STATIC_CACHE_VERIFY = """\
        # Preallocated once per request, then written in place. It never holds more than
        # prompt + max_new_tokens - 1 positions: a draft stops before the last token the request
        # may emit (draft <= room - 1 in step), and that token is never fed back.
        capacity = len(request.prompt_token_ids) + request.max_new_tokens
        cache = StaticCache(config=self.model.config, max_cache_len=capacity)
"""

PROMPT_WHOLE = """\
        return Decoding(request, cache, list(request.prompt_token_ids), []$cursor)
"""

PROMPT_CHUNKED = """\
        # Chunked prefill: all but the last chunk run through the decoder alone (no LM head:
        # nothing is read from them); the last chunk goes with the first step's forward.
        prompt = list(request.prompt_token_ids)
        tail = (len(prompt) - 1) // PREFILL_CHUNK * PREFILL_CHUNK
        for start in range(0, tail, PREFILL_CHUNK):
$chunk_forward            self.forwards += 1
        return Decoding(request, cache, prompt[tail:], []$cursor)
"""

CHUNK_FORWARD = """\
            chunk = torch.tensor([prompt[start : start + PREFILL_CHUNK]], device=self.device)
            self.model.model(input_ids=chunk, cache=cache, use_cache=True)
"""

CHUNK_FORWARD_LEAN = """\
            self.lean(cache, prompt[start : start + PREFILL_CHUNK], keep=0)
"""

FORWARD_HEAD = '''
    def _forward(self, cache: $cache, tokens: list[int], keep: int) -> torch.Tensor:
        """Append ``tokens`` to the KV cache; logits of the last ``keep`` positions."""
        input_ids = torch.tensor([tokens], device=self.device)  # [1, n]
'''

COMPILED_PICK = """\
        # decode/verify forwards read every row and run compiled; prefills (keep < n) stay eager
        decode = keep == len(tokens) <= COMPILED_MAX_TOKENS
        model = self.compiled_model if decode else self.model
"""

FORWARD_FULL = """\
        # [1, n, vocab]: the LM head runs on every input position
        logits = $model(input_ids=input_ids, cache=cache, use_cache=True).logits
        self.forwards += 1
        return logits[0, -keep:]  # [keep, vocab]
"""

FORWARD_LEAN = """\
        # [1, keep, vocab]: the LM head runs only on the rows that are read
        logits = $model(
            input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=keep
        ).logits
        self.forwards += 1
        return logits[0]  # [keep, vocab]
"""

LEAN_MATMUL_TORCH = '''
    @staticmethod
    def _prepare(weight: torch.Tensor) -> torch.Tensor:
        """Weights stay the model's [out, in] tensors (Q/K/V and gate/up fused)."""
        return weight.contiguous()

    @staticmethod
    def _linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight)
'''

LEAN_CACHE = """\
        # Preallocated once per request, then written in place. It never holds more than
        # prompt + max_new_tokens - 1 positions (a draft stops before the last token).
        cache = self.lean.new_cache(len(request.prompt_token_ids) + request.max_new_tokens)
"""

FORWARD_HEAD_LEAN = '''
    def _forward(self, cache: LeanCache, tokens: list[int], keep: int) -> torch.Tensor:
        """Append ``tokens`` to the KV cache; logits of the last ``keep`` positions."""
'''

FORWARD_LEAN_MODEL = """\
        logits = self.lean(cache, tokens, keep)  # [keep, vocab]: the LM head on read rows only
        self.forwards += 1
        return logits
"""

LEAN_MODEL = '''
$cache


class LeanLlama:
    """The Llama forward of ``model`` written out with plain tensor ops over its own weights.

    The arithmetic is transformers' (RMSNorm in float32, the model's own rotary table, SDPA with
    grouped KV heads, SiLU-gated MLP), so the logits are the same; what goes is the machinery:
    Q/K/V and gate/up each become one matmul, the KV cache is two preallocated tensors, the mask
    is built once per forward, and the LM head runs only on the rows that are read.
    """

    def __init__(self, model: torch.nn.Module) -> None:
$supported
        self.eps = config.rms_norm_eps
        self.embed = body.embed_tokens.weight
        self.layers = []
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            self.layers.append(
                (
                    layer.input_layernorm.weight,
                    self._prepare(qkv),
                    self._prepare(attn.o_proj.weight),
                    layer.post_attention_layernorm.weight,
                    self._prepare(gate_up),
                    self._prepare(mlp.down_proj.weight),
                )
            )
        self.norm = body.norm.weight
        self.head = self._prepare(model.lm_head.weight)
        self.rotary = body.rotary_emb
        self.cos = self.sin = self.embed.new_empty(0, self.head_dim)

$matmul
    def new_cache(self, capacity: int) -> LeanCache:
        self._rope(capacity)
        shape = (len(self.layers), 1, self.kv_heads, capacity, self.head_dim)
        return LeanCache(shape, self.embed.dtype, self.embed.device)

    def _rope(self, positions: int) -> None:
        """The model's own rotary table (its scaling included) for positions [0, positions)."""
        if self.cos.shape[0] >= positions:
            return
        ids = torch.arange(positions, device=self.embed.device)[None]
        cos, sin = self.rotary(self.embed[:1][None], ids)
        self.cos, self.sin = cos[0], sin[0]

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        hidden = x.to(torch.float32)
        variance = hidden.pow(2).mean(-1, keepdim=True)
        return weight * (hidden * torch.rsqrt(variance + self.eps)).to(x.dtype)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def __call__(self, cache: LeanCache, tokens: list[int], keep: int) -> torch.Tensor | None:
        """Append ``tokens`` to ``cache``; logits of the last ``keep`` rows (None for keep=0)."""
        n, start = len(tokens), cache.length
        end = start + n
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        x = self.embed[torch.tensor(tokens, device=self.embed.device)]  # [n, hidden]
        cos, sin = self.cos[start:end], self.sin[start:end]
        # row i attends to cached positions and to new positions up to start + i
        mask = None
        if n > 1:
            mask = torch.ones(n, end, dtype=torch.bool, device=x.device).tril(diagonal=start)
        q_end, k_end = heads * dim, (heads + kv_heads) * dim
        for i, (norm_in, qkv, out, norm_post, gate_up, down) in enumerate(self.layers):
            y = self._linear(self._norm(x, norm_in), qkv)  # [n, (heads + 2 kv_heads) * dim]
            q = y[:, :q_end].view(n, heads, dim).transpose(0, 1)
            k = y[:, q_end:k_end].view(n, kv_heads, dim).transpose(0, 1)
            v = y[:, k_end:].view(n, kv_heads, dim).transpose(0, 1)
            cache.keys[i, 0, :, start:end] = self._rotate(k, cos, sin)
            cache.values[i, 0, :, start:end] = v
            attended = F.scaled_dot_product_attention(
                self._rotate(q, cos, sin)[None],
                cache.keys[i, :, :, :end],
                cache.values[i, :, :, :end],
                attn_mask=mask,
                enable_gqa=True,
            )  # [1, heads, n, dim]
            x = x + self._linear(attended[0].transpose(0, 1).reshape(n, heads * dim), out)
            g = self._linear(self._norm(x, norm_post), gate_up)
            gated = F.silu(g[:, : self.intermediate]) * g[:, self.intermediate :]
            x = x + self._linear(gated, down)
        cache.length = end
        if keep == 0:
            return None
        return self._linear(self._norm(x[-keep:], self.norm), self.head)
'''

LOGPROBS = '''
def _top_logprobs(logits: torch.Tensor, tokens: list[int], k: int) -> list[dict[int, float]] | None:
    """Top-k log-probabilities per emitted token; row i of ``logits`` chose ``tokens[i]``."""
    if k <= 0:
        return None
    out = []
    for row, token in zip(logits.float().log_softmax(dim=-1), tokens, strict=False):
        top = {token: float(row[token])}  # the chosen token first, even on an exact tie
        for idx in torch.topk(row, min(k + 1, row.numel())).indices.tolist():
            if len(top) == k:
                break
            top.setdefault(idx, float(row[idx]))
        out.append(top)
    return out
'''

FACTORY = """
def create_engine(spec: EngineSpec) -> GreedyEngine:
    return GreedyEngine(spec)
"""

LEAN_CACHE_CLASS = '''
class LeanCache:
    """Keys and values of one request: $layout.

    Preallocated, the first ``length`` positions valid; a rollback only moves ``length`` back."""

$init
    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        """As transformers' caches: ``crop(-k)`` drops the last k positions; ``crop(0)`` none."""
        if tokens_to_remove > 0:
            raise ValueError(f"crop({tokens_to_remove}): pass minus the positions to drop")
        self.length += tokens_to_remove
'''

# The lean forwards' shared start of __init__: what they can write out, and their shapes.
LEAN_SUPPORTED = """\
        config = model.config
        problems = []
        if config.model_type != "llama":
            problems.append(f"model_type {config.model_type!r} (only 'llama')")
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            problems.append("attention or MLP biases")
        if config.hidden_act != "silu":
            problems.append(f"hidden_act {config.hidden_act!r} (only 'silu')")
$extra        if problems:
            raise NotImplementedError(
                "LeanLlama writes out the plain Llama forward$where; this model has "
                + ", ".join(problems)
                + ": use $fix for it"
            )
        body = model.model
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.intermediate = config.intermediate_size
"""

LEAN_SUPPORTED_NUMPY = """\
        if model.device.type != "cpu" or model.dtype != torch.float32:
            problems.append(f"weights {model.dtype} on {model.device} (only float32 on the CPU)")
"""

LEAN_CACHE_TORCH = """\
    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        self.keys = torch.empty(shape, dtype=dtype, device=device)
        self.values = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0
"""

LEAN_CACHE_NUMPY = """\
    def __init__(self, layers: int, kv_heads: int, capacity: int, head_dim: int) -> None:
        # keys stored transposed: a query row times keys[i, h, :, :end] is one GEMM without a copy
        self.keys = np.empty((layers, kv_heads, head_dim, capacity), dtype=np.float32)
        self.values = np.empty((layers, kv_heads, capacity, head_dim), dtype=np.float32)
        self.length = 0
"""

LEAN_MODEL_NUMPY = '''
$cache


class LeanLlama:
    """The Llama forward of ``model`` in numpy, over its own float32 weights.

    transformers' arithmetic (RMSNorm, the model's own rotary table, grouped-query attention with
    a causal mask, SiLU-gated MLP) with Q/K/V and gate/up fused into one matmul each, and every
    op a numpy call: the matmuls run in numpy's OpenBLAS over pre-transposed weights, and the
    small ops cost ~1 us each instead of torch's ~5 (about 700 of them per forward). Queries and
    keys are rotated in one pass, keys are cached transposed (the score GEMM reads them in place),
    and a forward over many rows hands softmax and SiLU to torch's fused kernels. The LM head
    runs only on the rows that are read. Logits differ from transformers' in the last bits
    (another summation order and softmax): only near-ties can flip.
    """

    def __init__(self, model: torch.nn.Module) -> None:
$supported
        self.eps = np.float32(config.rms_norm_eps)
        self.scale = np.float32(self.head_dim**-0.5)
        self.embed = self._array(body.embed_tokens.weight)
        self.layers = []
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
            self.layers.append(
                (
                    self._array(layer.input_layernorm.weight),
                    self._transposed(qkv),
                    self._transposed(attn.o_proj.weight),
                    self._array(layer.post_attention_layernorm.weight),
                    self._transposed(gate_up),
                    self._transposed(mlp.down_proj.weight),
                )
            )
        self.norm = self._array(body.norm.weight)
        self.head = self._transposed(model.lm_head.weight)
        self.rotary = body.rotary_emb
        self.first_weight = body.embed_tokens.weight[:1]
        self.cos = self.sin = np.empty((0, self.head_dim), dtype=np.float32)

    @staticmethod
    def _array(weight: torch.Tensor) -> np.ndarray:
        return weight.detach().numpy()

    @staticmethod
    def _transposed(weight: torch.Tensor) -> np.ndarray:
        """A contiguous [in, out] copy: ``x @ w`` is then one OpenBLAS GEMM over rows of x."""
        return np.ascontiguousarray(weight.detach().numpy().T)

    def new_cache(self, capacity: int) -> LeanCache:
        self._rope(capacity)
        return LeanCache(len(self.layers), self.kv_heads, capacity, self.head_dim)

    def _rope(self, positions: int) -> None:
        """The model's own rotary table (its scaling included) for positions [0, positions)."""
        if self.cos.shape[0] >= positions:
            return
        ids = torch.arange(positions)[None]
        cos, sin = (t[0].numpy() for t in self.rotary(self.first_weight[None], ids))
        half = self.head_dim // 2
        # rotate_half folded into the sine: x * cos + concat(x2, x1) * concat(-sin1, sin2)
        self.cos = cos
        self.sin = np.concatenate([-sin[:, :half], sin[:, half:]], axis=1)

    def _norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        variance = np.einsum("ij,ij->i", x, x)[:, None] * np.float32(1 / x.shape[-1])
        return weight * (x * (1 / np.sqrt(variance + self.eps)))

    def __call__(self, cache: LeanCache, tokens: list[int], keep: int) -> torch.Tensor | None:
        """Append ``tokens`` to ``cache``; logits of the last ``keep`` rows (None for keep=0)."""
        n, start = len(tokens), cache.length
        end = start + n
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        group = heads // kv_heads  # query heads per KV head
        rotated = heads + kv_heads  # queries and keys, rotated together
        half, inter = dim // 2, self.intermediate
        x = self.embed[tokens]  # [n, hidden], a copy: the residual stream is updated in place
        cos, sin = self.cos[start:end, None], self.sin[start:end, None]
        mask = None
        if n > 1:  # rows are (query head of the group, token i); token i sees up to start + i,
            # so only the scores against the n new positions need a mask
            mask = np.tile(np.triu(np.full((n, n), -np.inf, dtype=np.float32), k=1), (group, 1))
        for i, (norm_in, qkv, out, norm_post, gate_up, down) in enumerate(self.layers):
            y = self._norm(x, norm_in) @ qkv  # [n, (heads + 2 kv_heads) * dim]
            qk = y[:, : rotated * dim].reshape(n, rotated, dim)
            qk = qk * cos + np.concatenate((qk[..., half:], qk[..., :half]), axis=-1) * sin
            cache.keys[i, :, :, start:end] = qk[:, heads:].transpose(1, 2, 0)
            v = y[:, rotated * dim :].reshape(n, kv_heads, dim)
            cache.values[i, :, start:end] = v.transpose(1, 0, 2)
            # the scale folded into the queries (a power of two for head_dim 64: exact)
            q = qk[:, :heads].transpose(1, 0, 2).reshape(kv_heads, group * n, dim) * self.scale
            scores = q @ cache.keys[i, :, :, :end]  # [kv_heads, group * n, end]
            if mask is None:  # one row per head: numpy's ~1 us ops beat torch's softmax
                scores -= scores.max(axis=-1, keepdims=True)
                np.exp(scores, out=scores)
                scores /= scores.sum(axis=-1, keepdims=True)
            else:  # many rows: torch's fused softmax is ~1.5x numpy's five passes
                scores[:, :, start:] += mask
                scores = torch.softmax(torch.from_numpy(scores), dim=-1).numpy()
            attended = (scores @ cache.values[i, :, :end]).reshape(heads, n, dim)
            x += attended.transpose(1, 0, 2).reshape(n, heads * dim) @ out
            g = self._norm(x, norm_post) @ gate_up
            if n == 1:
                gate = g[:, :inter]
                x += (gate / (1 + np.exp(-gate)) * g[:, inter:]) @ down
            else:  # torch's fused SiLU: ~2x numpy's four passes on many rows
                g_t = torch.from_numpy(g)
                x += (torch.nn.functional.silu(g_t[:, :inter]) * g_t[:, inter:]).numpy() @ down
        cache.length = end
        if keep == 0:
            return None
        return torch.from_numpy(self._norm(x[-keep:], self.norm) @ self.head)
'''
