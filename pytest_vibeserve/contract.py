"""The engine contract: what a candidate engine receives and returns.

An engine is a directory whose ``engine.py`` defines ``create_engine(spec: EngineSpec) -> Engine``.
The harness hosts it in a worker process and drives it step by step, in the style of
vLLM/nano-vllm: ``add_request`` queues work, ``step`` advances it and returns the tokens it emitted,
``has_unfinished_requests`` says whether to keep stepping.

Decoding is greedy. A request ends after ``max_new_tokens`` tokens, or right after emitting one of
its ``stop_token_ids`` (that token is part of the output). The contract imports nothing from pytest
or the rest of the harness, so an engine and its worker load only this module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

FACTORY_NAME = "create_engine"
FORWARD_COUNTER = "model_forward_calls"
# An engine may set ``capabilities`` (an iterable of these names) to say which optional request
# fields it honours; a server refuses a request using a field the engine does not list.
# ``prediction`` is a hint every engine may ignore, so it is always passed.
CAPABILITIES = frozenset({"prediction", "response_format", "logprobs"})


@dataclass(frozen=True, slots=True)
class EngineSpec:
    model_path: str  # directory: config.json, model.safetensors, tokenizer files
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1  # torch intra-op threads; the harness pins the same number for every engine
    options: dict[str, Any] = field(default_factory=dict)  # the scenario's [engine.options]

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"EngineSpec.threads must be >= 1, got {self.threads}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineSpec:
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Request:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    max_new_tokens: int
    stop_token_ids: tuple[int, ...] = ()
    # OpenAI `prediction`: tokens the output should resemble. A hint to verify, never to trust.
    prediction_token_ids: tuple[int, ...] | None = None
    top_logprobs: int = 0  # when > 0, emit this many top logprobs per generated token
    # OpenAI `response_format` (e.g. {"type": "json_schema", "json_schema": {...}}): only for
    # engines that list "response_format" in their CAPABILITIES; others never receive one.
    response_format: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError(f"request {self.request_id!r}: prompt_token_ids is empty")
        if self.max_new_tokens < 1:
            raise ValueError(f"request {self.request_id!r}: max_new_tokens must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Request:
        prediction = data.get("prediction_token_ids")
        return cls(
            request_id=data["request_id"],
            prompt_token_ids=tuple(data["prompt_token_ids"]),
            max_new_tokens=data["max_new_tokens"],
            stop_token_ids=tuple(data.get("stop_token_ids", ())),
            prediction_token_ids=None if prediction is None else tuple(prediction),
            top_logprobs=data.get("top_logprobs", 0),
            response_format=data.get("response_format"),
        )


@dataclass(slots=True)
class Event:
    """What one ``step`` produced for one request."""

    request_id: str
    token_ids: list[int] = field(default_factory=list)
    finished: bool = False
    # one {token_id: logprob} per emitted token, when the request asked for top_logprobs
    logprobs: list[dict[int, float]] | None = None
    payload: dict[str, Any] | None = None  # transcripts, images: the later scenarios' outputs

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.logprobs is not None:
            data["logprobs"] = [{str(k): float(v) for k, v in lp.items()} for lp in self.logprobs]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Event:
        logprobs = data.get("logprobs")
        return cls(
            request_id=str(data["request_id"]),
            token_ids=[int(t) for t in data.get("token_ids", [])],
            finished=bool(data.get("finished", False)),
            logprobs=None
            if logprobs is None
            else [{int(k): float(v) for k, v in lp.items()} for lp in logprobs],
            payload=data.get("payload"),
        )


@runtime_checkable
class Engine(Protocol):
    def add_request(self, request: Request) -> None: ...

    def step(self) -> list[Event]: ...

    def has_unfinished_requests(self) -> bool: ...

    def counters(self) -> dict[str, int]:
        """Debug counters; must include ``model_forward_calls`` (forwards of the real model)."""
        ...
