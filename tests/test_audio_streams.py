"""Audio streams: the chunk contract, the workload's streams, and the runner pushing them."""

from __future__ import annotations

import itertools
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pytest_vibeserve.contract import (
    AUDIO_FRAME_SAMPLES,
    AUDIO_SAMPLE_RATE,
    AudioChunk,
    EngineSpec,
)
from pytest_vibeserve.metrics import compute_metrics
from pytest_vibeserve.reference import ReferenceOutput
from pytest_vibeserve.runner import EngineFailure, EngineProcess, Limits
from pytest_vibeserve.workload import AudioStream, Workload, partial_key

FAST = Limits(load_timeout_s=60, step_timeout_s=3, memory_bytes=4 << 30)


def pcm(samples: int, start: int = 0) -> bytes:
    """``samples`` int16 little-endian samples with distinct, signed values."""
    values = (np.arange(start, start + samples) * 37 % 65536 - 32768).astype("<i2")
    return values.tobytes()


# -- AudioChunk ----------------------------------------------------------------------------------


def test_chunk_dict_round_trip_preserves_bytes() -> None:
    chunk = AudioChunk("s0", 2, pcm(AUDIO_FRAME_SAMPLES * 2), final=True)
    data = chunk.to_dict()
    assert isinstance(data["pcm16"], str)  # base64 text, JSON-safe
    back = AudioChunk.from_dict(data)
    assert back == chunk
    assert back.pcm16 == chunk.pcm16
    assert back.num_samples == 2 * AUDIO_FRAME_SAMPLES
    without_final = {"stream_id": "s0", "index": 0, "pcm16": data["pcm16"]}
    assert AudioChunk.from_dict(without_final).final is False


def test_chunk_samples_are_int16_over_32768() -> None:
    raw = np.array([0, 1, -1, 32767, -32768] + [123] * (AUDIO_FRAME_SAMPLES - 5), dtype="<i2")
    chunk = AudioChunk("s0", 0, raw.tobytes())
    samples = chunk.samples()
    assert samples.dtype == np.float32
    np.testing.assert_array_equal(samples, raw.astype(np.float32) / 32768.0)
    assert samples[3] == np.float32(32767 / 32768)
    assert samples[4] == -1.0


@pytest.mark.parametrize(
    ("index", "pcm16", "final", "match"),
    [
        (0, b"\x00" * 641, False, "641 bytes is not a whole number of int16 samples"),
        (0, pcm(AUDIO_FRAME_SAMPLES + 1), True, "321 samples is not a whole number of 20 ms"),
        (0, pcm(100), False, "100 samples is not a whole number of 20 ms frames"),
        (-1, pcm(AUDIO_FRAME_SAMPLES), False, "chunk index -1 is negative"),
        (3, b"", False, "chunk 3: empty; only the final chunk may carry no audio"),
    ],
)
def test_invalid_chunks_raise(index: int, pcm16: bytes, final: bool, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AudioChunk("s0", index, pcm16, final)


def test_empty_final_chunk_is_allowed() -> None:
    chunk = AudioChunk("s0", 4, b"", final=True)
    assert chunk.num_samples == 0
    assert chunk.samples().shape == (0,)
    assert AudioChunk.from_dict(chunk.to_dict()) == chunk


# -- AudioStream and Workload --------------------------------------------------------------------


def test_stream_chunks_concatenate_back_and_end_final() -> None:
    k = 2
    audio = pcm(3 * AUDIO_FRAME_SAMPLES * k)
    stream = AudioStream("s0", audio, AUDIO_FRAME_SAMPLES * k)
    chunks = stream.chunks()
    assert stream.num_chunks == stream.audio_chunks == 3
    assert [c.index for c in chunks] == [0, 1, 2]
    assert [c.final for c in chunks] == [False, False, True]
    assert [c.num_samples for c in chunks] == [AUDIO_FRAME_SAMPLES * k] * 3
    assert all(c.stream_id == "s0" for c in chunks)
    assert b"".join(c.pcm16 for c in chunks) == audio
    assert stream.seconds == pytest.approx(3 * AUDIO_FRAME_SAMPLES * k / AUDIO_SAMPLE_RATE)
    assert stream.chunk_seconds == pytest.approx(0.04)


def test_stream_with_empty_final_adds_a_chunk_without_samples() -> None:
    audio = pcm(3 * AUDIO_FRAME_SAMPLES)
    stream = AudioStream("s0", audio, AUDIO_FRAME_SAMPLES, empty_final=True)
    chunks = stream.chunks()
    assert stream.audio_chunks == 3
    assert stream.num_chunks == 4
    assert len(chunks) == 4
    assert [c.final for c in chunks] == [False, False, False, True]
    assert chunks[-1].index == 3
    assert chunks[-1].pcm16 == b""
    assert b"".join(c.pcm16 for c in chunks) == audio


@pytest.mark.parametrize(
    ("audio", "chunk_samples"), [(b"", 320), (b"\x00" * 3, 320), (b"\x00" * 640, 0)]
)
def test_stream_rejects_bad_audio(audio: bytes, chunk_samples: int) -> None:
    with pytest.raises(ValueError, match="needs whole int16 samples and chunk_samples >= 1"):
        AudioStream("s0", audio, chunk_samples)


def ref_output(tokens: list[int]) -> ReferenceOutput:
    return ReferenceOutput(tokens, [1.0] * len(tokens), [{} for _ in tokens])


def test_workload_needs_every_chunk_transcript() -> None:
    stream = AudioStream("s0", pcm(3 * AUDIO_FRAME_SAMPLES), AUDIO_FRAME_SAMPLES, empty_final=True)
    expected = {partial_key("s0", k): ref_output([k + 1]) for k in range(4)}
    workload = Workload("w", (), expected, streams=(stream,), pace=0.0)
    assert workload.streams == (stream,)
    assert partial_key("s0", 3) == "s0#3"

    del expected[partial_key("s0", 3)]  # the empty final chunk's transcript is needed too
    with pytest.raises(ValueError, match=r"no expected output for \['s0#3'\]"):
        Workload("w", (), expected, streams=(stream,))


def test_workload_rejects_duplicate_stream_ids() -> None:
    stream = AudioStream("s0", pcm(AUDIO_FRAME_SAMPLES), AUDIO_FRAME_SAMPLES)
    expected = {partial_key("s0", 0): ref_output([1])}
    with pytest.raises(ValueError, match="duplicate stream ids"):
        Workload("w", (), expected, streams=(stream, stream))


# -- EngineProcess.run_streams -------------------------------------------------------------------

# Answers every queued chunk on the next step; {answer} builds the event for chunk c.
AUDIO_ENGINE = """
from pytest_vibeserve.contract import AUDIO_FRAME_SAMPLES, Event, transcript_event

class Engine:
    def __init__(self, spec):
        self.queue, self.samples, self.forwards = [], {{}}, 0
    def add_audio(self, chunk):
        self.queue.append(chunk)
    def step(self):
        self.forwards += 1
        events = []
        for c in self.queue:
            self.samples[c.stream_id] = self.samples.get(c.stream_id, 0) + c.num_samples
            heard = self.samples[c.stream_id] // AUDIO_FRAME_SAMPLES
            events.append({answer})
        self.queue = []
        return events
    def has_unfinished_requests(self):
        return {busy}
    def counters(self):
        return {{"model_forward_calls": self.forwards}}

def create_engine(spec):
    return Engine(spec)
"""
ECHO = "transcript_event(c.stream_id, c.index, [c.index, heard], c.final)"


def make_engine(tmp_path: Path, answer: str = ECHO, busy: str = "bool(self.queue)") -> Path:
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir(exist_ok=True)
    source = AUDIO_ENGINE.format(answer=answer, busy=busy)
    (engine_dir / "engine.py").write_text(textwrap.dedent(source))
    return engine_dir


def frames_stream(stream_id: str, frames: list[int], **options: object) -> AudioStream:
    """A stream of len(frames) chunks; frames[k] 20 ms frames per chunk (the last may be short)."""
    chunk_frames = max(frames)
    audio = pcm(sum(frames) * AUDIO_FRAME_SAMPLES)
    return AudioStream(stream_id, audio, chunk_frames * AUDIO_FRAME_SAMPLES, **options)


def test_echo_engine_answers_every_chunk_in_order(tmp_path) -> None:
    streams = [
        frames_stream("a", [2, 2, 1]),
        frames_stream("b", [1, 1], empty_final=True),
    ]
    with EngineProcess(make_engine(tmp_path), EngineSpec(str(tmp_path)), limits=FAST) as engine:
        run = engine.run_streams(streams, pace=0)
    assert set(run.records) == {"a", "b"}

    a, b = run.records["a"], run.records["b"]
    assert [p.chunk for p in a.partials] == [0, 1, 2]
    assert [p.kind for p in a.partials] == ["partial", "partial", "final"]
    assert [p.token_ids for p in a.partials] == [(0, 2), (1, 4), (2, 5)]
    assert a.token_ids == [2, 5]
    assert a.audio_samples == 5 * AUDIO_FRAME_SAMPLES

    assert [p.chunk for p in b.partials] == [0, 1, 2]
    assert [p.kind for p in b.partials] == ["partial", "partial", "final"]
    assert [p.token_ids for p in b.partials] == [(0, 1), (1, 2), (2, 2)]  # empty final: no audio
    assert b.token_ids == [2, 2]
    assert b.audio_samples == 2 * AUDIO_FRAME_SAMPLES

    for record in (a, b):
        assert record.finished_at == record.partials[-1].arrived_at
        for earlier, later in itertools.pairwise(record.partials):
            # pace 0 is a closed loop: a chunk goes out only after the previous one's answer
            assert later.sent_at >= earlier.arrived_at
        for partial in record.partials:
            assert run.started_at <= partial.sent_at <= partial.arrived_at <= run.ended_at
    assert run.forward_calls is not None and run.forward_calls >= 1

    metrics = compute_metrics(run)
    assert math.isfinite(metrics.chunk_latency_ms_p50)
    assert metrics.chunk_latency_ms_p50 >= 0
    assert math.isfinite(metrics.chunk_latency_ms_p99)
    assert metrics.chunk_latency_ms_p99 >= metrics.chunk_latency_ms_p50
    assert metrics.audio_s == pytest.approx(sum(s.seconds for s in streams))
    assert metrics.audio_s == pytest.approx(7 * AUDIO_FRAME_SAMPLES / AUDIO_SAMPLE_RATE)
    assert metrics.output_tokens == 4
    assert metrics.requests == 2
    assert math.isfinite(metrics.realtime_streams) and metrics.realtime_streams > 0


def test_run_without_partials_has_no_audio_metrics(tmp_path) -> None:
    with EngineProcess(make_engine(tmp_path), EngineSpec(str(tmp_path)), limits=FAST) as engine:
        run = engine.run_streams([frames_stream("a", [1])], pace=0)
    run.records["a"].partials.clear()  # as in a text run: no chunk answers recorded
    metrics = compute_metrics(run)
    assert math.isnan(metrics.chunk_latency_ms_p50)
    assert metrics.audio_s == 0.0


@pytest.mark.parametrize(
    ("answer", "wanted"),
    [
        # answers chunk k as chunk k + 1: out of order
        (
            "transcript_event(c.stream_id, c.index + 1, [1], c.final)",
            "stream 'a': chunk 0 awaits one event with payload {'type': 'partial', 'chunk': 0}",
        ),
        # calls every answer final
        (
            "transcript_event(c.stream_id, c.index, [1], True)",
            "stream 'a': chunk 0 awaits one event with payload {'type': 'partial', 'chunk': 0}",
        ),
        # the right payload, but finishes the stream at a partial
        (
            "Event(c.stream_id, [1], True, payload={'type': 'partial', 'chunk': c.index})",
            "stream 'a' chunk 0: finished=True, but only the final chunk's event finishes",
        ),
        # no payload at all
        ("Event(c.stream_id, [1], c.final)", "stream 'a': chunk 0 awaits one event"),
        # answers a stream that was never opened
        (
            "transcript_event('nobody', c.index, [1], c.final)",
            "event for unknown stream 'nobody'",
        ),
    ],
)
def test_protocol_violations_name_stream_and_chunk(tmp_path, answer: str, wanted: str) -> None:
    engine_dir = make_engine(tmp_path, answer=answer)
    with EngineProcess(engine_dir, EngineSpec(str(tmp_path)), limits=FAST) as engine:
        with pytest.raises(EngineFailure) as caught:
            engine.run_streams([frames_stream("a", [1, 1])], pace=0)
        assert caught.value.kind == "protocol"
        assert wanted in str(caught.value)
        with pytest.raises(EngineFailure) as again:  # a failed engine stays failed
            engine.run_streams([frames_stream("a", [1, 1])], pace=0)
        assert again.value is caught.value


def test_two_answers_for_one_chunk_is_a_protocol_failure(tmp_path) -> None:
    # every chunk's answer is appended twice: the second answers no chunk
    answer = "transcript_event(c.stream_id, c.index, [1], c.final)); events.append(events[-1]"
    with EngineProcess(make_engine(tmp_path, answer), EngineSpec(str(tmp_path)), limits=FAST) as e:
        with pytest.raises(EngineFailure) as caught:
            e.run_streams([frames_stream("a", [1, 1])], pace=0)
    assert caught.value.kind == "protocol"
    assert "stream 'a': an event with no chunk awaiting an answer" in str(caught.value)


def test_silent_engine_is_a_hang(tmp_path) -> None:
    limits = Limits(load_timeout_s=60, step_timeout_s=1.0, memory_bytes=4 << 30)
    # never busy: the worker never steps it, so no chunk is ever answered
    engine_dir = make_engine(tmp_path, busy="False")
    with EngineProcess(engine_dir, EngineSpec(str(tmp_path)), limits=limits) as engine:
        with pytest.raises(EngineFailure) as caught:
            engine.run_streams([frames_stream("a", [1, 1])], pace=0)
    assert caught.value.kind == "hang"
    assert "with 1 request(s) in flight (step timeout 1 s)" in str(caught.value)


def test_run_streams_validates_arguments(tmp_path) -> None:
    stream = frames_stream("a", [1])
    with EngineProcess(make_engine(tmp_path), EngineSpec(str(tmp_path)), limits=FAST) as engine:
        with pytest.raises(ValueError, match="pace must be >= 0"):
            engine.run_streams([stream], pace=-1)
        with pytest.raises(ValueError, match="stream ids in one run must be unique"):
            engine.run_streams([stream, stream], pace=0)
        # the engine is still usable after argument errors
        run = engine.run_streams([stream], pace=0)
    assert run.records["a"].token_ids == [0, 1]


def test_real_time_pace_sends_each_chunk_when_its_audio_is_recorded(tmp_path) -> None:
    chunk_s = AUDIO_FRAME_SAMPLES / AUDIO_SAMPLE_RATE  # 0.02 s per chunk
    streams = [
        frames_stream("a", [1, 1, 1]),
        frames_stream("b", [1, 1, 1], start_offset_s=0.05),
    ]
    with EngineProcess(make_engine(tmp_path), EngineSpec(str(tmp_path)), limits=FAST) as engine:
        run = engine.run_streams(streams, pace=1)
    for stream in streams:
        record = run.records[stream.stream_id]
        assert [p.chunk for p in record.partials] == [0, 1, 2]
        assert [p.kind for p in record.partials] == ["partial", "partial", "final"]
        for k, partial in enumerate(record.partials):
            due = stream.start_offset_s + (k + 1) * chunk_s
            assert partial.sent_at - run.started_at >= due - 1e-6, (stream.stream_id, k)
    metrics = compute_metrics(run)
    assert metrics.audio_s == pytest.approx(6 * chunk_s)
    # the last chunk went out no earlier than b's offset + 3 chunks, and the run ended after it
    assert math.isfinite(metrics.real_time_factor) and metrics.real_time_factor >= 1.0


def test_double_pace_sends_chunks_twice_as_fast_but_not_sooner(tmp_path) -> None:
    chunk_s = 2 * AUDIO_FRAME_SAMPLES / AUDIO_SAMPLE_RATE  # 0.04 s of audio per chunk
    stream = frames_stream("a", [2, 2, 2])
    with EngineProcess(make_engine(tmp_path), EngineSpec(str(tmp_path)), limits=FAST) as engine:
        run = engine.run_streams([stream], pace=2)
    for k, partial in enumerate(run.records["a"].partials):
        assert partial.sent_at - run.started_at >= (k + 1) * chunk_s / 2 - 1e-6
