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

Images (scenario ``unified_multimodal``) use ``add_image(ImageRequest)``: the engine denoises from
the seed's noise over the request's schedule with classifier-free guidance and answers with one
finished ``Event`` built by ``image_event``: the pixels, the latent after Euler step
``probe_step``, the channel means of the latent after every step (the trajectory), the model calls
it ran (and how many evaluated the unconditional branch) and its own per-stage timings.
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


@dataclass(frozen=True, slots=True)
class ImageRequest:
    """Text to image: ``steps`` schedule points (``steps - 1`` model calls), CFG ``guidance``."""

    request_id: str
    prompt: str
    seed: int  # the initial noise: torch.randn from a CPU generator seeded with it
    steps: int = 20
    guidance: float = 5.0
    probe_step: int = 0  # report the latent after this Euler step (0 = after the first call)

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise ValueError(
                f"image request {self.request_id!r}: steps={self.steps}; a schedule needs at "
                "least 2 points (one model call)"
            )
        if not 0 <= self.probe_step < self.steps - 1:
            raise ValueError(
                f"image request {self.request_id!r}: probe_step={self.probe_step} is not one of "
                f"the {self.steps - 1} Euler steps (0..{self.steps - 2})"
            )
        if not self.guidance >= 0:
            raise ValueError(
                f"image request {self.request_id!r}: guidance={self.guidance} must be >= 0"
            )

    @property
    def model_calls(self) -> int:
        return self.steps - 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRequest:
        return cls(
            request_id=str(data["request_id"]),
            prompt=str(data["prompt"]),
            seed=int(data["seed"]),
            steps=int(data.get("steps", 20)),
            guidance=float(data.get("guidance", 5.0)),
            probe_step=int(data.get("probe_step", 0)),
        )


def image_event(
    request_id: str,
    pixels: Any,
    *,
    probe_latent: Any,
    trajectory: list[list[float]],
    model_calls: int,
    uncond_calls: int,
    timings_ms: dict[str, float] | None = None,
) -> Event:
    """The one event that answers an ``ImageRequest``.

    ``pixels``: (H, W, 3) uint8 (numpy); ``probe_latent``: the (C, h, w) latent after Euler step
    ``probe_step``; ``trajectory``: one list of C channel means of the latent after every step;
    ``model_calls``: velocity evaluations run for this image; ``uncond_calls``: how many of them
    evaluated the unconditional branch (fresh, not reused); ``timings_ms``: the engine's own
    stage timings (e.g. encode, denoise, decode), reported, never trusted for speed.
    """
    import numpy as np

    image = np.ascontiguousarray(pixels)
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"pixels must be HxWxC uint8, got {image.dtype} {image.shape}")
    probe = np.ascontiguousarray(probe_latent, dtype="<f4")
    payload = {
        "type": "image",
        "shape": list(image.shape),
        "pixels": base64.b64encode(image.tobytes()).decode("ascii"),
        "probe_shape": list(probe.shape),
        "probe_latent": base64.b64encode(probe.tobytes()).decode("ascii"),
        "trajectory": [[float(x) for x in means] for means in trajectory],
        "model_calls": int(model_calls),
        "uncond_calls": int(uncond_calls),
        "timings_ms": {str(k): float(v) for k, v in (timings_ms or {}).items()},
    }
    return Event(request_id, [], finished=True, payload=payload)


def image_problem(request: ImageRequest, event: Event) -> str | None:
    """Why ``event`` is not a well-formed answer to ``request``, or None (what it holds is for
    the checkers to judge): the one rule the runner, the server and the endpoint client check."""
    rid = request.request_id
    payload = event.payload
    if not event.finished or not isinstance(payload, dict) or payload.get("type") != "image":
        return (
            f"image {rid!r}: an image request is answered by one finished event whose payload "
            f"comes from contract.image_event (type 'image'), got finished={event.finished}, "
            f"payload type {None if not isinstance(payload, dict) else payload.get('type')!r}"
        )
    try:
        decode_image(payload)
        decode_probe(payload)
    except (KeyError, TypeError, ValueError) as error:
        return f"image {rid!r}: unreadable image payload ({error}); build it with image_event"
    trajectory = payload.get("trajectory")
    if not isinstance(trajectory, list) or not all(isinstance(m, list) for m in trajectory):
        return f"image {rid!r}: trajectory must be a list of per-step lists of channel means"
    for key in ("model_calls", "uncond_calls"):
        if not isinstance(payload.get(key), int):
            return f"image {rid!r}: payload[{key!r}] must be an int, got {payload.get(key)!r}"
    return None


def decode_image(payload: dict[str, Any]) -> Any:
    """The (H, W, C) uint8 image of an image payload."""
    import numpy as np

    shape = tuple(int(x) for x in payload["shape"])
    data = base64.b64decode(payload["pixels"])
    if len(shape) != 3 or len(data) != int(np.prod(shape)):
        raise ValueError(f"{len(data)} pixel bytes do not fill shape {shape}")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def decode_probe(payload: dict[str, Any]) -> Any:
    """The float32 probe latent of an image payload."""
    import numpy as np

    shape = tuple(int(x) for x in payload["probe_shape"])
    data = base64.b64decode(payload["probe_latent"])
    if len(data) != 4 * int(np.prod(shape)):
        raise ValueError(f"{len(data)} probe bytes do not fill float32 shape {shape}")
    return np.frombuffer(data, dtype="<f4").reshape(shape)


@runtime_checkable
class Engine(Protocol):
    def add_request(self, request: Request) -> None: ...

    def step(self) -> list[Event]: ...

    def has_unfinished_requests(self) -> bool: ...

    def counters(self) -> dict[str, int]:
        """Debug counters; must include ``model_forward_calls`` (forwards of the real model)."""
        ...
