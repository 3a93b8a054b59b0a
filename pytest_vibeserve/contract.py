"""The engine contract: what a candidate engine receives and returns.

An engine is a directory whose ``engine.py`` defines ``create_engine(spec: EngineSpec) -> Engine``.
The harness hosts it in a worker process and drives it step by step, in the style of
vLLM/nano-vllm: ``add_request`` queues work, ``step`` advances it and returns the tokens it emitted,
``has_unfinished_requests`` says whether to keep stepping.

Decoding is greedy. A request ends after ``max_new_tokens`` tokens, or right after emitting one of
its ``stop_token_ids`` (that token is part of the output). The contract imports nothing from pytest
or the rest of the harness, so an engine and its worker load only this module.

Audio streams (scenario ``streaming_asr``) use the same loop with ``add_audio`` in place of
``add_request``: the first ``AudioChunk`` of a stream opens it, each chunk is answered by exactly
one ``Event`` carrying the whole transcript of the audio so far (``token_ids``, after the decoder
start token) with ``payload={"type": "partial", "chunk": index}``, and the chunk marked ``final``
(which may carry no samples) by one with ``"type": "final"`` and ``finished=True``, after which the
stream is closed. Chunks of a stream arrive in order; streams interleave.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

FACTORY_NAME = "create_engine"
FORWARD_COUNTER = "model_forward_calls"
# An engine may set ``capabilities`` (an iterable of these names) to say which optional request
# fields it honours; a server refuses a request using a field the engine does not list.
# ``prediction`` is a hint every engine may ignore, so it is always passed.
CAPABILITIES = frozenset({"prediction", "response_format", "logprobs"})
AUDIO_SAMPLE_RATE = 16000  # audio chunks carry 16 kHz mono int16 little-endian samples
AUDIO_FRAME_SAMPLES = 320  # ... a whole number of 20 ms frames (the encoder's frame) each


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


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """A piece of one audio stream: 16 kHz mono PCM, int16 little-endian."""

    stream_id: str
    index: int  # 0, 1, 2, ... in order; index 0 opens the stream
    pcm16: bytes
    final: bool = False  # the stream's last chunk: answer with a "final" event, then close it

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"stream {self.stream_id!r}: chunk index {self.index} is negative")
        if len(self.pcm16) % 2:
            raise ValueError(
                f"stream {self.stream_id!r} chunk {self.index}: {len(self.pcm16)} bytes is not a "
                "whole number of int16 samples"
            )
        if (len(self.pcm16) // 2) % AUDIO_FRAME_SAMPLES:
            raise ValueError(
                f"stream {self.stream_id!r} chunk {self.index}: {len(self.pcm16) // 2} samples is "
                f"not a whole number of 20 ms frames ({AUDIO_FRAME_SAMPLES} samples); a server "
                "buffers the remainder until the next chunk (or pads the last with silence)"
            )
        if not self.pcm16 and not self.final:
            raise ValueError(
                f"stream {self.stream_id!r} chunk {self.index}: empty; only the final chunk "
                "may carry no audio"
            )

    @property
    def num_samples(self) -> int:
        return len(self.pcm16) // 2

    def samples(self) -> Any:
        """The samples as float32 in [-1, 1) (numpy): sample / 32768, the reference's scaling."""
        import numpy as np

        return np.frombuffer(self.pcm16, dtype="<i2").astype(np.float32) / 32768.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "index": self.index,
            "pcm16": base64.b64encode(self.pcm16).decode("ascii"),
            "final": self.final,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioChunk:
        return cls(
            stream_id=str(data["stream_id"]),
            index=int(data["index"]),
            pcm16=base64.b64decode(data["pcm16"]),
            final=bool(data.get("final", False)),
        )


def transcript_event(stream_id: str, index: int, token_ids: list[int], final: bool) -> Event:
    """The one event that answers chunk ``index`` of a stream."""
    kind = "final" if final else "partial"
    payload = {"type": kind, "chunk": index}
    return Event(stream_id, list(token_ids), finished=final, payload=payload)


def transcript_problem(chunk: AudioChunk, event: Event) -> str | None:
    """Why ``event`` cannot be the answer to ``chunk`` (the oldest unanswered chunk of its
    stream), or None: the one rule the runner, the server's driver and the endpoint client check."""
    sid = chunk.stream_id
    kind = "final" if chunk.final else "partial"
    payload = event.payload or {}
    if payload.get("type") != kind or payload.get("chunk") != chunk.index:
        return (
            f"stream {sid!r}: chunk {chunk.index} awaits one event with payload "
            f"{{'type': {kind!r}, 'chunk': {chunk.index}}} (chunks are answered in order, one "
            f"event each), got payload {event.payload!r}"
        )
    if event.finished != chunk.final:
        return (
            f"stream {sid!r} chunk {chunk.index}: finished={event.finished}, but only the final "
            "chunk's event finishes the stream"
        )
    return None


@runtime_checkable
class Engine(Protocol):
    def add_request(self, request: Request) -> None: ...

    def step(self) -> list[Event]: ...

    def has_unfinished_requests(self) -> bool: ...

    def counters(self) -> dict[str, int]:
        """Debug counters; must include ``model_forward_calls`` (forwards of the real model)."""
        ...
