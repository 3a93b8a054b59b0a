"""Profiles an engine's ``add_request``/``step`` calls in its worker; only JSON numbers leave it.

The worker starts a ``StepProfiler`` on a ``profile_start`` command and wraps every engine call in
``engine_call()``; ``profile_stop`` returns ``summarize_events`` of what was recorded: time per op
(self and total), how many aten ops ran, and how much of the time went to matmuls, attention and
the LM head. torch.profiler is used when torch imports, cProfile otherwise. The parent reads the
summary back with ``EngineProfile.from_dict``, which checks every field: the engine is untrusted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from pytest_vibeserve.contract import FORWARD_COUNTER

ENGINE_CALL = "vibeserve::engine_call"  # the span around each add_request/step call
TOOLS = ("auto", "torch", "cprofile")
MAX_TOP_OPS = 50
MAX_NAME_CHARS = 200
MATMUL_OPS = frozenset(
    {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"}
)
ATTENTION_MARKERS = ("scaled_dot_product", "attention", "softmax")
# which input is the weight: linear [out, in]; mm/matmul [in, out]; addmm(bias, x, [in, out])
WEIGHT_OPERAND = {"aten::linear": 1, "aten::mm": 1, "aten::matmul": 1, "aten::addmm": 2}
CPROFILE_MATMUL = re.compile(r"\b(matmul|mm|addmm|bmm|baddbmm|linear|dot|einsum)\b")


def is_matmul(name: str) -> bool:
    return name in MATMUL_OPS or name.startswith("aten::_scaled_dot_product")


def is_attention(name: str) -> bool:
    return name.startswith("aten::") and any(marker in name for marker in ATTENTION_MARKERS)


@dataclass(slots=True)  # not frozen: hundreds of thousands are made per profile
class OpEvent:
    """One recorded op span on one thread; ``shapes`` are its input shapes, when recorded."""

    name: str
    start_ns: int
    duration_ns: int
    thread: int = 0
    shapes: list[list[int]] | None = None


@dataclass(frozen=True, slots=True)
class OpStat:
    name: str
    calls: int
    self_ms: float  # time in the op itself, not in the ops it called
    total_ms: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpStat:
        return cls(
            name=_text(data["name"]),
            calls=_count(data["calls"], "calls"),
            self_ms=_ms(data["self_ms"], "self_ms"),
            total_ms=_ms(data["total_ms"], "total_ms"),
        )


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """What one profiled run cost, by op; ms are summed over the whole run."""

    tool: str  # torch or cprofile
    total_ms: float  # inside the engine's calls
    engine_calls: int
    forwards: int | None  # model forwards during the run, from the engine's counter
    aten_ops: int  # every op dispatch, nested ones included (cProfile: every function call)
    top_level_ops: int  # ops the engine's own code called
    op_ms: float  # self time of aten ops (cProfile: builtins); the rest is Python and glue
    matmul_ms: float  # self time of mm/addmm/bmm/matmul/linear/baddbmm/_scaled_dot_product*
    attention_ms: float  # sdpa/softmax ops, and matmuls of two batched activations (eager QK^T, PV)
    lm_head_ms: float | None  # matmuls with a vocab-sized output; None: vocabulary unknown
    top_ops: list[OpStat] = field(default_factory=list)  # by self time, highest first

    @property
    def per_forward(self) -> int:
        """The run's forwards, or its engine calls when the engine does not count forwards."""
        return max(self.forwards or self.engine_calls, 1)

    def share(self, ms: float | None) -> float | None:
        return None if ms is None or self.total_ms <= 0 else min(ms / self.total_ms, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> EngineProfile:
        """Read (and check) a profile the worker sent; raises ValueError naming the bad field."""
        if not isinstance(data, dict):
            raise ValueError(f"a profile is a JSON object, got {type(data).__name__}")
        try:
            forwards, lm_head = data["forwards"], data["lm_head_ms"]
            top_ops = data["top_ops"]
            if not isinstance(top_ops, list) or len(top_ops) > MAX_TOP_OPS:
                raise ValueError(f"top_ops must be a list of at most {MAX_TOP_OPS} ops")
            return cls(
                tool=_text(data["tool"]),
                total_ms=_ms(data["total_ms"], "total_ms"),
                engine_calls=_count(data["engine_calls"], "engine_calls"),
                forwards=None if forwards is None else _count(forwards, "forwards"),
                aten_ops=_count(data["aten_ops"], "aten_ops"),
                top_level_ops=_count(data["top_level_ops"], "top_level_ops"),
                op_ms=_ms(data["op_ms"], "op_ms"),
                matmul_ms=_ms(data["matmul_ms"], "matmul_ms"),
                attention_ms=_ms(data["attention_ms"], "attention_ms"),
                lm_head_ms=None if lm_head is None else _ms(lm_head, "lm_head_ms"),
                top_ops=[OpStat.from_dict(op) for op in top_ops],
            )
        except KeyError as error:
            raise ValueError(f"the profile lacks field {error}") from None
        except TypeError as error:
            raise ValueError(f"malformed profile: {error}") from None


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} = {value!r} is not a count")
    return value


def _ms(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e12:
        raise ValueError(f"{name} = {value!r} is not a duration in ms")
    return float(value)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value[:MAX_NAME_CHARS]


# -- summarizing (pure: events in, JSON out) ---------------------------------------------------
def _output_width(name: str, shapes: list[list[int]] | None) -> int | None:
    """The output's last dim when the op multiplies by a 2-D weight, else None (shapes: inputs)."""
    at = WEIGHT_OPERAND.get(name)
    if at is None or not shapes or len(shapes) <= at or len(shapes[at]) != 2:
        return None
    return shapes[at][0] if name == "aten::linear" else shapes[at][1]  # [out, in] or [in, out]


def _batched_pair(shapes: list[list[int]] | None) -> bool:
    """Both operands batched activations (attention's QK^T and PV), not activation x weight."""
    return bool(shapes) and len(shapes) >= 2 and len(shapes[0]) >= 3 and len(shapes[1]) >= 3


@dataclass(slots=True)
class _Frame:
    event: OpEvent
    end_ns: int
    in_call: bool  # inside an engine call (or one itself)
    under_aten: bool  # an aten op encloses this one
    outermost_call: bool  # an engine call span not nested in another
    children_ns: int = 0


def _frames(events: list[OpEvent]) -> Iterator[_Frame]:
    """Each event of one thread with its callees' time: spans nest, callers start first."""
    events.sort(key=lambda e: (e.start_ns, -e.duration_ns))
    stack: list[_Frame] = []
    for event in events:
        while stack and stack[-1].end_ns <= event.start_ns:
            yield stack.pop()
        parent = stack[-1] if stack else None
        if parent is not None:
            parent.children_ns += event.duration_ns
        in_parent_call = parent is not None and parent.in_call
        is_call = event.name == ENGINE_CALL
        under_aten = parent is not None and (
            parent.under_aten or parent.event.name.startswith("aten::")
        )
        stack.append(
            _Frame(
                event,
                end_ns=event.start_ns + event.duration_ns,
                in_call=is_call or in_parent_call,
                under_aten=under_aten,
                outermost_call=is_call and not in_parent_call,
            )
        )
    yield from reversed(stack)


def summarize_events(
    events: Iterable[OpEvent],
    *,
    vocab_size: int | None = None,
    top: int = 15,
    tool: str = "torch",
    forwards: int | None = None,
) -> dict[str, Any]:
    """Per-op self and total time of the spans inside engine calls, and the shares that matter."""
    by_thread: dict[int, list[OpEvent]] = {}
    for event in events:
        by_thread.setdefault(event.thread, []).append(event)
    stats: dict[str, list[int]] = {}  # name -> [calls, self_ns, total_ns]
    total_ns = op_ns = matmul_ns = attention_ns = lm_head_ns = 0
    engine_calls = aten_ops = top_level_ops = 0
    for thread_events in by_thread.values():
        for frame in _frames(thread_events):
            event = frame.event
            if not frame.in_call:
                continue
            if event.name == ENGINE_CALL:
                engine_calls += frame.outermost_call
                total_ns += event.duration_ns if frame.outermost_call else 0
                continue
            self_ns = max(event.duration_ns - frame.children_ns, 0)
            row = stats.setdefault(event.name, [0, 0, 0])
            row[0] += 1
            row[1] += self_ns
            row[2] += event.duration_ns
            if event.name.startswith("aten::"):
                aten_ops += 1
                top_level_ops += not frame.under_aten
                op_ns += self_ns
            if is_matmul(event.name):
                matmul_ns += self_ns
                if vocab_size is not None and _output_width(event.name, event.shapes) == vocab_size:
                    lm_head_ns += self_ns
            if is_attention(event.name) or (is_matmul(event.name) and _batched_pair(event.shapes)):
                attention_ns += self_ns
    ranked = sorted(stats.items(), key=lambda item: item[1][1], reverse=True)
    return {
        "tool": tool,
        "total_ms": total_ns / 1e6,
        "engine_calls": engine_calls,
        "forwards": forwards,
        "aten_ops": aten_ops,
        "top_level_ops": top_level_ops,
        "op_ms": op_ns / 1e6,
        "matmul_ms": matmul_ns / 1e6,
        "attention_ms": attention_ns / 1e6,
        "lm_head_ms": None if vocab_size is None else lm_head_ns / 1e6,
        "top_ops": [
            {"name": name[:MAX_NAME_CHARS], "calls": c, "self_ms": s / 1e6, "total_ms": t / 1e6}
            for name, (c, s, t) in ranked[: min(top, MAX_TOP_OPS)]
        ],
    }


# -- recording (in the worker) -----------------------------------------------------------------
def _torch_events(profiler: Any) -> Iterator[OpEvent]:
    """The recorded CPU spans; input shapes are read only for matmuls (reading them is slow)."""
    results = getattr(profiler.profiler, "kineto_results", None)
    if results is None:  # no raw results in this torch: the (slower) FunctionEvent list
        for event in profiler.events():
            shapes = event.input_shapes if is_matmul(event.name) else None
            start, end = event.time_range.start, event.time_range.end  # µs
            yield OpEvent(
                event.name, int(start * 1000), int((end - start) * 1000), event.thread, shapes
            )
        return
    from torch.autograd import DeviceType

    for event in results.events():
        if event.device_type() != DeviceType.CPU:
            continue
        name = event.name()
        shapes = event.shapes() if is_matmul(name) else None
        yield OpEvent(name, event.start_ns(), event.duration_ns(), event.start_thread_id(), shapes)


class StepProfiler:
    """Records the engine's calls between ``start`` and ``stop`` and nothing else."""

    def __init__(self, tool: str, *, vocab_size: int | None, top: int, counters: dict[str, Any]):
        if tool not in TOOLS:
            raise ValueError(f"profile tool {tool!r} is unknown; use one of {TOOLS}")
        if tool == "auto":
            try:
                import torch.profiler  # noqa: F401
            except ImportError:
                tool = "cprofile"
            else:
                tool = "torch"
        self.tool = tool
        self.vocab_size = vocab_size
        self.top = top
        self._forwards_before = counters.get(FORWARD_COUNTER)
        self._wall_ns = 0
        self._calls = 0
        if tool == "torch":
            from torch.profiler import ProfilerActivity, profile, record_function

            self._record_function = record_function
            self._profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
            self._profiler.start()
        else:
            import cProfile

            self._profiler = cProfile.Profile()

    @contextmanager
    def engine_call(self) -> Iterator[None]:
        started = time.perf_counter_ns()
        try:
            if self.tool == "torch":
                with self._record_function(ENGINE_CALL):
                    yield
            else:
                self._profiler.enable()
                try:
                    yield
                finally:
                    self._profiler.disable()
        finally:
            self._wall_ns += time.perf_counter_ns() - started
            self._calls += 1

    def stop(self, counters: dict[str, Any]) -> dict[str, Any]:
        forwards, forwards_after = None, counters.get(FORWARD_COUNTER)
        if isinstance(self._forwards_before, int) and isinstance(forwards_after, int):
            forwards = max(forwards_after - self._forwards_before, 0)
        if self.tool == "torch":
            self._profiler.stop()
            return summarize_events(
                _torch_events(self._profiler),
                vocab_size=self.vocab_size,
                top=self.top,
                forwards=forwards,
            )
        return self._summarize_cprofile(forwards)

    def _summarize_cprofile(self, forwards: int | None) -> dict[str, Any]:
        import pstats

        rows = []
        for (file, line, function), (_, calls, tottime, cumtime, _) in pstats.Stats(
            self._profiler
        ).stats.items():
            name = function if file == "~" else f"{function} ({file.rsplit('/', 1)[-1]}:{line})"
            rows.append((name, calls, tottime * 1e3, cumtime * 1e3))
        rows.sort(key=lambda row: row[2], reverse=True)
        matmul_ms = sum(row[2] for row in rows if CPROFILE_MATMUL.search(row[0]))
        builtin_ms = sum(row[2] for row in rows if row[0].startswith(("<built-in", "<method")))
        calls = sum(row[1] for row in rows)
        return {
            "tool": "cprofile",
            "total_ms": self._wall_ns / 1e6,
            "engine_calls": self._calls,
            "forwards": forwards,
            "aten_ops": calls,
            "top_level_ops": calls,
            "op_ms": builtin_ms,
            "matmul_ms": matmul_ms,
            "attention_ms": sum(
                row[2] for row in rows if any(m in row[0] for m in ATTENTION_MARKERS)
            ),
            "lm_head_ms": None,
            "top_ops": [
                {"name": name[:MAX_NAME_CHARS], "calls": c, "self_ms": s, "total_ms": t}
                for name, c, s, t in rows[: min(self.top, MAX_TOP_OPS)]
            ],
        }
