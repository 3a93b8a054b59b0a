"""A workload ready to run: the requests, how they arrive, and what the reference says they give.

The expected outputs stay in the parent process; only ``requests`` ever reach an engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pytest_vibeserve.contract import AUDIO_SAMPLE_RATE, AudioChunk, ImageRequest, Request
from pytest_vibeserve.reference import ReferenceImage, ReferenceOutput


def partial_key(stream_id: str, chunk: int) -> str:
    """The ``Workload.expected`` key of the transcript after chunk ``chunk`` of a stream."""
    return f"{stream_id}#{chunk}"


@dataclass(frozen=True, slots=True)
class AudioStream:
    """One client's audio, cut into chunks pushed at ``chunk_seconds`` intervals of real time."""

    stream_id: str
    pcm16: bytes  # 16 kHz mono int16 little-endian, the whole stream
    chunk_samples: int
    start_offset_s: float = 0.0  # when the stream's first chunk is due, after the run starts
    # the client closes with an extra empty final chunk (else the last audio chunk is final)
    empty_final: bool = False

    def __post_init__(self) -> None:
        if self.chunk_samples < 1 or not self.pcm16 or len(self.pcm16) % 2:
            raise ValueError(
                f"stream {self.stream_id!r}: needs whole int16 samples and chunk_samples >= 1"
            )

    @property
    def num_samples(self) -> int:
        return len(self.pcm16) // 2

    @property
    def audio_chunks(self) -> int:
        return -(-self.num_samples // self.chunk_samples)

    @property
    def num_chunks(self) -> int:
        """Chunks sent, the empty final one included."""
        return self.audio_chunks + int(self.empty_final)

    @property
    def seconds(self) -> float:
        return self.num_samples / AUDIO_SAMPLE_RATE

    @property
    def chunk_seconds(self) -> float:
        return self.chunk_samples / AUDIO_SAMPLE_RATE

    def chunks(self) -> list[AudioChunk]:
        step = self.chunk_samples * 2
        count = self.num_chunks
        return [
            AudioChunk(self.stream_id, k, self.pcm16[k * step : (k + 1) * step], k == count - 1)
            for k in range(count)
        ]  # an empty final chunk slices past the end: no samples


@dataclass(frozen=True, slots=True)
class Workload:
    name: str  # unique within a session: runs are cached per (engine, workload name)
    requests: tuple[Request | ImageRequest, ...]
    # request id -> the reference's output: tokens (text), or an image (ImageRequest)
    expected: dict[str, ReferenceOutput | ReferenceImage]
    concurrency: int | None = None  # at most this many in flight (closed loop); None: all at once
    arrival_offsets_s: tuple[float, ...] | None = None  # open loop: send times after the start
    # run once per engine before any timed run, never measured
    warmup: tuple[Request | ImageRequest, ...] = ()
    stats: dict[str, Any] = field(default_factory=dict)  # reported beside the results
    # request id -> facts the checks need beside the expected tokens (a sentinel the output must
    # echo, the request's kind): kept in the parent, never sent to an engine nor reported
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # audio streams (scenario streaming_asr) instead of requests: ``expected`` then holds every
    # chunk's transcript under ``partial_key(stream_id, chunk)``
    streams: tuple[AudioStream, ...] = ()
    pace: float = 1.0  # 1: chunks at real time; 0: each as soon as the previous one is answered

    def __post_init__(self) -> None:
        ids = [r.request_id for r in self.requests]
        if len(set(ids)) != len(ids):
            raise ValueError(f"workload {self.name!r}: duplicate request ids")
        sids = [s.stream_id for s in self.streams]
        if len(set(sids)) != len(sids):
            raise ValueError(f"workload {self.name!r}: duplicate stream ids")
        ids += [partial_key(s.stream_id, k) for s in self.streams for k in range(s.num_chunks)]
        if missing := set(ids) - set(self.expected):
            raise ValueError(f"workload {self.name!r}: no expected output for {sorted(missing)}")
        if self.arrival_offsets_s is not None and len(self.arrival_offsets_s) != len(ids):
            raise ValueError(f"workload {self.name!r}: one arrival offset per request")

    @property
    def output_tokens(self) -> int:
        return sum(len(getattr(self.expected[r.request_id], "tokens", ())) for r in self.requests)

    @property
    def images(self) -> tuple[ImageRequest, ...]:
        return tuple(r for r in self.requests if isinstance(r, ImageRequest))
