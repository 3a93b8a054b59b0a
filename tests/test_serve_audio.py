"""``vibeserve serve`` of a speech engine: the WebSocket /v1/audio/stream, the offline
/v1/audio/transcriptions, and ``EndpointEngine.run_streams`` as the harness's client of both.

A real uvicorn server runs the streaming_asr starter on the ``asr-tiny`` model over loopback;
expected transcripts come from the same engine driven directly by ``EngineProcess.run_streams``.
The audio is espeak-ng speech. The driver's audio routing is also tested alone, scripted.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import http.client
import io
import itertools
import json
import threading
import wave
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from websockets.sync.server import serve as serve_websocket

from pytest_vibeserve.contract import AudioChunk, EngineSpec, Event, transcript_event
from pytest_vibeserve.endpoint import EndpointEngine
from pytest_vibeserve.peers import free_port
from pytest_vibeserve.runner import EngineFailure, EngineProcess, Limits, RequestRecord
from pytest_vibeserve.serve import EngineDriver, parse_multipart, serve_in_thread
from pytest_vibeserve.workload import AudioStream
from pytest_vibeserve.workloads.speech import speech_stream
from reference_impls.models import materialize
from tests.scripted_process import ScriptedProcess, stepping_clock

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios/streaming_asr"
STARTER = SCENARIO / "starter"
TEXT_STARTER = ROOT / "scenarios/standard/starter"
STREAM_PATH = "/v1/audio/stream"
CHUNK = 32000  # 2 s at 16 kHz: the scenario's chunk
CHUNK_BYTES = 2 * CHUNK
SEED = 7
TIMEOUT_S = 60.0

TEXT_ONLY_ENGINE = '''
from pytest_vibeserve.contract import FORWARD_COUNTER


class TextOnly:
    """Loads nothing and serves text only: it has no add_audio."""

    def add_request(self, request):
        raise NotImplementedError

    def step(self):
        return []

    def has_unfinished_requests(self):
        return False

    def counters(self):
        return {FORWARD_COUNTER: 0}


def create_engine(spec):
    return TextOnly()
'''


# -- fixtures and clients --------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(vibeserve_cache: Path) -> Path:
    return materialize("asr-tiny", vibeserve_cache)


@pytest.fixture(scope="module")
def spec(model_dir: Path) -> EngineSpec:
    return EngineSpec(model_path=str(model_dir))


@pytest.fixture(scope="module")
def server(spec: EngineSpec) -> Iterator[str]:
    with serve_in_thread(STARTER, spec) as url:
        yield url


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def direct(spec: EngineSpec) -> Iterator[Callable[..., dict[str, RequestRecord]]]:
    """The starter driven by ``EngineProcess.run_streams`` (pace 0): records by stream id."""
    with EngineProcess(STARTER, spec, limits=Limits(step_timeout_s=TIMEOUT_S)) as process:

        def run(*streams: AudioStream) -> dict[str, RequestRecord]:
            return process.run_streams(streams, pace=0).records

        yield run


@functools.cache
def speech(index: int, seconds: float = 6.0) -> bytes:
    """espeak-ng speech, 16 kHz mono PCM16, exactly ``seconds`` long."""
    return speech_stream(SEED, index, seconds)[0]


def ws_url(server: str, query: str = "") -> str:
    return server.replace("http://", "ws://", 1) + STREAM_PATH + query


def finish(audio: bytes = b"") -> str:
    message = {"type": "finish"}
    if audio:
        message["audio"] = base64.b64encode(audio).decode()
    return json.dumps(message)


def chunked(audio: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    return [audio[i : i + size] for i in range(0, len(audio), size)]


def as_chunks(audio: bytes) -> list[bytes | str]:
    """The workload's way: one binary message per 2 s chunk, the last one inside finish."""
    *first, last = chunked(audio)
    return [*first, finish(last)]


def exchange(server: str, messages: list[bytes | str], query: str = "") -> tuple[list, int | None]:
    """Send ``messages`` on one WebSocket, then read every answer until the server closes it."""
    with connect(ws_url(server, query), open_timeout=TIMEOUT_S, max_size=None) as ws:
        try:
            for message in messages:
                ws.send(message)
        except ConnectionClosed:
            pass  # refused early: the answers say why
        answers = []
        try:
            while True:
                answers.append(json.loads(ws.recv(timeout=TIMEOUT_S)))
        except ConnectionClosed:
            pass
        return answers, ws.close_code


def _http(url: str, method: str, path: str, body: bytes | None, content_type: str | None):
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=TIMEOUT_S)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        connection.request(method, path, body, headers)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def get(url: str, path: str) -> tuple[int, Any]:
    status, text = _http(url, "GET", path, None, None)
    return status, json.loads(text)


def wav(pcm: bytes, *, rate: int = 16000, channels: int = 1, width: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(pcm[: len(pcm) // (channels * width) * channels * width])
    return out.getvalue()


def multipart(fields: dict[str, str], file: bytes) -> tuple[bytes, str]:
    """An OpenAI-style form: the fields, and ``file`` as an uploaded WAV."""
    boundary = "vibeserve-test-7d1f"
    body = b""
    for name, value in fields.items():
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        body += value.encode() + b"\r\n"
    body += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    body += file + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def transcribe(url: str, file: bytes, **fields: str) -> tuple[int, Any]:
    body, content_type = multipart(fields, file)
    status, text = _http(url, "POST", "/v1/audio/transcriptions", body, content_type)
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def check_answers(answers: list[dict], record: RequestRecord, tokenizer: Any) -> None:
    """The server's answers are the direct run's partials: kind, chunk, token ids, and text."""
    assert [(a["type"], a["chunk"]) for a in answers] == [
        (p.kind, p.chunk) for p in record.partials
    ]
    assert [a["token_ids"] for a in answers] == [list(p.token_ids) for p in record.partials]
    for answer in answers:
        assert answer["text"] == tokenizer.decode(answer["token_ids"], skip_special_tokens=True)


# -- the WebSocket stream ----------------------------------------------------------------------


def test_one_stream_gets_each_chunks_transcript_in_order(server, direct, tokenizer) -> None:
    audio = speech(0)
    answers, code = exchange(server, as_chunks(audio))
    assert code == 1000
    assert [(a["type"], a["chunk"]) for a in answers] == [
        ("partial", 0),
        ("partial", 1),
        ("final", 2),
    ]
    assert all(a["text"] for a in answers)
    check_answers(answers, direct(AudioStream("one", audio, CHUNK))["one"], tokenizer)


def test_audio_as_base64_text_and_a_bare_finish_give_an_empty_final(server, direct, tokenizer):
    audio = speech(0)
    messages = [json.dumps({"type": "audio", "audio": base64.b64encode(c).decode()}) for c in
                chunked(audio)]  # fmt: skip
    answers, code = exchange(server, [*messages, finish()])
    assert code == 1000
    expected = direct(AudioStream("bare", audio, CHUNK, empty_final=True))["bare"]
    assert [a["type"] for a in answers] == ["partial"] * 3 + ["final"]
    check_answers(answers, expected, tokenizer)
    assert answers[-1]["token_ids"] == answers[-2]["token_ids"]  # no new audio, same transcript


def test_concurrent_streams_each_get_their_own_transcripts(server, direct, tokenizer) -> None:
    streams = [
        AudioStream("c1", speech(1), CHUNK),
        AudioStream("c2", speech(2), CHUNK),
        AudioStream("c3", speech(3), CHUNK, empty_final=True),
    ]
    expected = direct(*streams)
    start = threading.Barrier(len(streams))

    def client(stream: AudioStream) -> tuple[list, int | None]:
        with connect(ws_url(server), open_timeout=TIMEOUT_S) as ws:
            start.wait(timeout=TIMEOUT_S)
            answers = []
            for chunk in stream.chunks():  # chunk by chunk: each waits for its answer
                ws.send(chunk.pcm16 if not chunk.final else finish(chunk.pcm16))
                answers.append(json.loads(ws.recv(timeout=TIMEOUT_S)))
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=TIMEOUT_S)
            return answers, ws.close_code

    with ThreadPoolExecutor(len(streams)) as pool:
        results = list(pool.map(client, streams))
    finals = set()
    for stream, (answers, code) in zip(streams, results, strict=True):
        assert code == 1000
        check_answers(answers, expected[stream.stream_id], tokenizer)
        finals.add(tuple(answers[-1]["token_ids"]))
    assert len(finals) == 3  # different speech, different transcripts


@pytest.mark.parametrize(
    ("size", "seconds"),
    [(2000, 4.0), (999, 2.0)],  # 1000 samples a message; 999 bytes: messages split samples
    ids=["1000-samples", "999-bytes"],
)
def test_odd_sized_messages_are_rechunked_into_whole_frames(
    server, direct, tokenizer, size: int, seconds: float
) -> None:
    audio = speech(4, seconds)
    answers, code = exchange(server, [*chunked(audio, size), finish()])
    assert code == 1000
    *partials, final = answers
    assert final["type"] == "final" and {a["type"] for a in partials} == {"partial"}
    assert [a["chunk"] for a in answers] == list(range(len(answers)))
    assert len(partials) >= len(audio) // size - 1  # a chunk whenever a whole frame is held
    expected = direct(AudioStream("whole", audio, CHUNK))["whole"]
    assert final["token_ids"] == expected.token_ids  # the same audio: the same transcript
    assert final["text"] == tokenizer.decode(expected.token_ids, skip_special_tokens=True)


def test_a_last_partial_frame_is_padded_with_silence(server, direct) -> None:
    audio = speech(5, 2.0)[: 2 * (CHUNK - 100)]  # 100 samples short of a whole frame
    answers, _ = exchange(server, [audio[:-1000], finish(audio[-1000:])])
    padded = audio + bytes(200)
    expected = direct(AudioStream("padded", padded, CHUNK))["padded"]
    assert answers[-1]["type"] == "final"
    assert answers[-1]["token_ids"] == expected.token_ids


@pytest.mark.parametrize(
    ("messages", "code", "says"),
    [
        (["hello"], 1007, "must be JSON"),
        ([json.dumps({"type": "speak"})], 1003, "unknown message"),
        ([json.dumps(["finish"])], 1003, "unknown message"),
        ([json.dumps({"type": "audio", "audio": "@@not base64@@"})], 1007, "base64"),
        ([json.dumps({"type": "audio", "audio": 5})], 1007, "base64"),
        ([finish()], 1007, "no audio"),
        ([bytes(641), finish()], 1007, "not a whole number of int16 samples"),
    ],
    ids=["not-json", "unknown-type", "not-an-object", "bad-base64", "audio-not-text", "empty",
         "half-sample"],
)  # fmt: skip
def test_a_malformed_message_gets_an_error_and_a_close(server, messages, code, says) -> None:
    answers, close_code = exchange(server, messages)
    assert close_code == code
    [error] = answers
    assert error["type"] == "error"
    assert says in error["error"]
    assert get(server, "/health") == (200, {"status": "ok"})


def test_another_models_name_is_refused(server, model_dir: Path) -> None:
    answers, code = exchange(server, [speech(0)[:CHUNK_BYTES]], query="?model=whisper-1")
    assert code == 1008
    assert "'whisper-1' does not exist" in answers[0]["error"]
    assert model_dir.name in answers[0]["error"]
    answers, code = exchange(server, as_chunks(speech(0, 2.0)), query=f"?model={model_dir.name}")
    assert code == 1000 and answers[-1]["type"] == "final"


def test_clients_that_leave_mid_stream_do_not_disturb_the_others(server, direct, tokenizer):
    audio = speech(6)
    expected = direct(AudioStream("after", audio, CHUNK))["after"]
    with connect(ws_url(server)) as ws:  # leaves with chunks in flight and the stream open
        ws.send(audio[:CHUNK_BYTES])
        ws.send(audio[CHUNK_BYTES : 2 * CHUNK_BYTES])
    with connect(ws_url(server)) as ws:  # leaves after its finish, before the final
        ws.send(audio[:CHUNK_BYTES])
        ws.send(finish())
    with connect(ws_url(server)) as leaving:  # drops its TCP connection without a handshake
        leaving.send(audio[:CHUNK_BYTES])
        leaving.socket.close()
    answers, code = exchange(server, as_chunks(audio))
    assert code == 1000
    check_answers(answers, expected, tokenizer)
    assert get(server, "/health") == (200, {"status": "ok"})


# -- offline transcription -------------------------------------------------------------------


def test_a_wav_file_gets_the_streams_final_transcript(server, model_dir: Path, tokenizer):
    audio = speech(8, 4.0)
    answers, _ = exchange(server, as_chunks(audio))
    final = answers[-1]
    assert final["type"] == "final" and final["text"]
    assert transcribe(server, wav(audio)) == (200, {"text": final["text"]})
    status, verbose = transcribe(
        server, wav(audio), model=model_dir.name, response_format="verbose_json"
    )
    assert status == 200, verbose
    assert verbose["text"] == final["text"]
    assert verbose["token_ids"] == final["token_ids"]
    assert verbose["duration"] == 4.0
    assert transcribe(server, wav(audio), response_format="text") == (200, final["text"])
    status, text = _http(server, "POST", "/v1/audio/transcriptions", wav(audio), "audio/wav")
    assert (status, json.loads(text)) == (200, {"text": final["text"]})


def test_a_wav_that_is_not_a_chunk_multiple_is_padded(server, direct) -> None:
    audio = speech(9, 3.0)[: 2 * 47_000]  # 2 s + 15,000 samples: not whole 20 ms frames
    expected = direct(AudioStream("odd", audio + bytes(2 * 40), CHUNK))["odd"]
    status, verbose = transcribe(server, wav(audio), response_format="verbose_json")
    assert status == 200, verbose
    assert verbose["token_ids"] == expected.token_ids


@pytest.mark.parametrize(
    ("shape", "says"),
    [
        ({"rate": 8000}, "8000 Hz"),
        ({"channels": 2}, "2 channel(s)"),
        ({"width": 1}, "8-bit"),
    ],
    ids=["8kHz", "stereo", "8-bit"],
)
def test_a_wav_of_another_format_is_400_naming_the_one_needed(server, shape, says) -> None:
    status, body = transcribe(server, wav(speech(0, 2.0), **shape))
    assert status == 400
    error = body["error"]
    assert error["param"] == "file"
    assert says in error["message"]
    assert "16 kHz mono 16-bit PCM" in error["message"]


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b"RIFF????WAVEjunk", "audio/wav", "not a readable WAV"),
        (b"{}", "application/json", "multipart/form-data"),
        (b"--x\r\nno blank line--x--", "multipart/form-data; boundary=x", "blank line"),
        (b"", "multipart/form-data", "no boundary"),
    ],
    ids=["not-wav", "json", "broken-form", "no-boundary"],
)
def test_unreadable_uploads_are_400(server, body: bytes, content_type: str, says: str) -> None:
    status, text = _http(server, "POST", "/v1/audio/transcriptions", body, content_type)
    assert status == 400
    assert says in json.loads(text)["error"]["message"]


def test_transcription_fields_are_checked(server, model_dir: Path) -> None:
    audio = wav(speech(0, 2.0))
    status, body = transcribe(server, audio, model="whisper-1")
    assert status == 404 and model_dir.name in body["error"]["message"]
    status, body = transcribe(server, audio, response_format="srt")
    assert status == 400 and "json, verbose_json, text" in body["error"]["message"]
    status, body = transcribe(server, audio, temperature="0.5")
    assert status == 400 and "greedy" in body["error"]["message"]
    boundary = "b0"
    no_file = f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n'
    no_file += f"--{boundary}--\r\n"
    content_type = f"multipart/form-data; boundary={boundary}"
    status, text = _http(server, "POST", "/v1/audio/transcriptions", no_file.encode(), content_type)
    assert status == 400 and "no 'file' field" in json.loads(text)["error"]["message"]


def test_multipart_fields_keep_binary_content_exactly() -> None:
    content = bytes(range(256)) * 3 + b"\r\n--not-the-boundary\r\n\r\n"
    body, content_type = multipart({"model": "m", "response_format": "json"}, content)
    fields = parse_multipart(body, content_type)
    assert fields["file"] == (content, "a.wav")
    assert fields["model"] == (b"m", None)
    assert fields["response_format"] == (b"json", None)


# -- a speech server's text routes, and servers that cannot serve audio --------------------------


def test_a_speech_server_refuses_text_completions_and_says_so(server, model_dir: Path) -> None:
    body = json.dumps({"prompt": [1, 2, 3], "max_tokens": 2}).encode()
    status, text = _http(server, "POST", "/v1/completions", body, "application/json")
    assert status == 400
    assert "/v1/audio/stream" in json.loads(text)["error"]["message"]
    status, models = get(server, "/v1/models")
    assert models["data"][0]["task"] == "transcription"
    assert get(server, "/health") == (200, {"status": "ok"})  # the engine never saw it


def test_a_text_model_server_refuses_audio_and_stays_up(vibeserve_cache: Path) -> None:
    spec = EngineSpec(model_path=str(materialize("tiny", vibeserve_cache)))
    with serve_in_thread(TEXT_STARTER, spec) as url:
        answers, code = exchange(url, as_chunks(speech(0, 2.0)))
        assert code == 1011
        assert "text model" in answers[0]["error"] and "asr-tiny" in answers[0]["error"]
        status, body = transcribe(url, wav(speech(0, 2.0)))
        assert status == 400 and "text model" in body["error"]["message"]
        assert get(url, "/v1/models")[1]["data"][0]["task"] == "generate"
        assert get(url, "/health") == (200, {"status": "ok"})
        engine = EndpointEngine(url, limits=Limits(step_timeout_s=10))
        with pytest.raises(EngineFailure, match=r"engine protocol: .*text model"):
            engine.run_streams([AudioStream("s", speech(0, 2.0), CHUNK)], pace=0)


def test_an_engine_without_add_audio_fails_the_stream_with_1011(spec, tmp_path: Path) -> None:
    (tmp_path / "engine.py").write_text(TEXT_ONLY_ENGINE)
    with serve_in_thread(tmp_path, spec) as url:
        answers, code = exchange(url, as_chunks(speech(0, 2.0)))
        assert code == 1011
        [error] = answers
        assert error["type"] == "error"
        assert "engine crash" in error["error"] and "add_audio(chunk)" in error["error"]
        status, health = get(url, "/health")
        assert status == 503 and "add_audio" in health["error"]
        answers, code = exchange(url, [bytes(CHUNK_BYTES)])  # later streams: refused at once
        assert code == 1011 and "engine failed" in answers[0]["error"]
        status, body = transcribe(url, wav(speech(0, 2.0)))
        assert status == 500 and "add_audio" in body["error"]["message"]


# -- EndpointEngine.run_streams against the server ---------------------------------------------


def test_endpoint_run_streams_records_what_the_runner_records(server, direct, model_dir: Path):
    streams = [
        AudioStream("e1", speech(1), CHUNK),
        AudioStream("e2", speech(2), CHUNK, start_offset_s=0.05, empty_final=True),
    ]
    expected = direct(*streams)
    engine = EndpointEngine(server, limits=Limits(step_timeout_s=TIMEOUT_S))
    engine.start()
    assert engine.serves_audio and engine.model == model_dir.name and engine.id_source is None
    with pytest.raises(EngineFailure, match="transcribes speech"):
        engine.run([])
    result = engine.run_streams(streams, pace=0)
    assert result.counters == {} and result.forward_calls is None
    for stream in streams:
        record, want = result.records[stream.stream_id], expected[stream.stream_id]
        assert [(p.chunk, p.kind, p.token_ids) for p in record.partials] == [
            (p.chunk, p.kind, p.token_ids) for p in want.partials
        ]
        assert record.token_ids == want.token_ids
        assert record.audio_samples == want.audio_samples == stream.num_samples
        assert record.sent_at == record.partials[0].sent_at
        assert record.finished_at == record.partials[-1].arrived_at
        for before, after in itertools.pairwise(record.partials):  # closed loop: one at a time
            assert before.sent_at < before.arrived_at <= after.sent_at
    assert result.started_at <= min(r.sent_at for r in result.records.values())


def test_endpoint_run_streams_keeps_the_real_time_schedule(server) -> None:
    pace = 8.0  # 2 s chunks every 0.25 s
    stream = AudioStream("paced", speech(3, 4.0), CHUNK, start_offset_s=0.1)
    result = EndpointEngine(server).run_streams([stream], pace=pace)
    record = result.records["paced"]
    assert [p.kind for p in record.partials] == ["partial", "final"]
    for k, partial in enumerate(record.partials):
        due = 0.1 + (k + 1) * stream.chunk_seconds / pace
        assert due <= partial.sent_at - result.started_at < due + 0.2
        assert partial.arrived_at > partial.sent_at


def test_vibeserve_serve_passes_the_streaming_asr_correctness_checks(
    server, pytester, vibeserve_cache: Path
) -> None:
    argv = [str(SCENARIO), "--vibeserve-scale", "tiny", "--vibeserve-cache", str(vibeserve_cache)]
    argv += ["--vibeserve-endpoint", server, "-k", "correctness and not integrity"]
    argv += ["--vibeserve-report", "report.json", "-p", "no:cacheprovider"]
    result = pytester.runpytest_subprocess(*argv, timeout=600)
    # the integrity test's name does not say "integrity" (its marker does): it runs and skips,
    # as a server reports no forward counter
    result.assert_outcomes(passed=2, skipped=1)
    result.stdout.fnmatch_lines(["PASS transcripts: 9/9 chunk transcripts equal*"])
    report = json.loads((pytester.path / "report.json").read_text())
    assert report["engine"] == server
    assert report["correctness"]["passed"] is True


# -- EndpointEngine.run_streams against wrong servers ------------------------------------------


def fake_stream_server(mode: str) -> tuple[Any, str]:
    """A WebSocket server answering audio streams wrongly, in one way per ``mode``."""

    def handler(ws) -> None:
        index = 0
        for message in ws:
            if mode == "silent":
                continue
            if mode == "close":
                ws.close(1011, "gone")
                return
            final = isinstance(message, str)
            kind = "final" if final else "partial"
            if mode == "error":
                ws.send(json.dumps({"type": "error", "error": "the engine failed: boom"}))
                return
            chunk = index + 1 if mode == "skip" else index
            ws.send(json.dumps({"type": kind, "chunk": chunk, "text": "", "token_ids": [index]}))
            index += 1
            if final:
                return

    server = serve_websocket(handler, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.socket.getsockname()[1]}"


@pytest.mark.parametrize(
    ("mode", "match"),
    [
        ("good", None),
        ("skip", r"engine protocol: .*chunk 0 awaits one event with payload \{'type': 'partial'"),
        ("error", r"engine protocol: .*the server sent an error: the engine failed: boom"),
        ("silent", r"engine hang: .*no transcript for .* 1 audio stream\(s\)"),
        ("close", r"engine crash: .*closed the WebSocket \(code 1011: gone\) after 0 of 2"),
    ],
)
def test_endpoint_run_streams_fails_a_wrong_server_with_its_reason(mode, match) -> None:
    fake, url = fake_stream_server(mode)
    stream = AudioStream("s", bytes(2 * CHUNK_BYTES), CHUNK)
    try:
        engine = EndpointEngine(url, limits=Limits(step_timeout_s=1.0))
        if match is None:
            record = engine.run_streams([stream], pace=0).records["s"]
            assert [(p.chunk, p.kind, p.token_ids) for p in record.partials] == [
                (0, "partial", (0,)),
                (1, "final", (1,)),
            ]
        else:
            with pytest.raises(EngineFailure, match=match):
                engine.run_streams([stream], pace=0)
    finally:
        fake.shutdown()


def test_endpoint_run_streams_says_how_to_reach_a_server() -> None:
    engine = EndpointEngine(f"http://127.0.0.1:{free_port()}", limits=Limits(step_timeout_s=5))
    with pytest.raises(EngineFailure, match=r"engine load: .*cannot open the WebSocket"):
        engine.run_streams([AudioStream("s", bytes(CHUNK_BYTES), CHUNK)], pace=0)


# -- the driver's audio routing alone, scripted --------------------------------------------------


def answer(chunk: AudioChunk) -> list[Event]:
    return [transcript_event(chunk.stream_id, chunk.index, [chunk.index], chunk.final)]


def drive_streams(script, count: int, *, leave_after: int | None = None):
    """Two streams of ``count`` chunks each through an ``EngineDriver``: each one's events, or
    the ``EngineFailure`` it got; with ``leave_after``, stream "a" is abandoned after that many
    events instead of read to its end."""
    process = ScriptedProcess(script)

    async def collect(driver: EngineDriver, sid: str) -> list[Event] | EngineFailure:
        session = driver.open_stream(sid)
        closes = sid != "a" or leave_after is None
        for k in range(count):
            session.submit(bytes(640), final=closes and k == count - 1)
        events: list[Event] = []
        try:
            while not (events and events[-1].finished):
                events.append(await session.receive())
                if sid == "a" and len(events) == leave_after:
                    session.abandon()
                    return events
        except EngineFailure as failure:
            return failure
        return events

    async def run_all() -> tuple[list[Any], int]:
        with EngineDriver(process, clock=stepping_clock()) as driver:
            results = await asyncio.gather(collect(driver, "a"), collect(driver, "b"))
            await asyncio.sleep(0.05)
            return results, len(driver._streams)

    (first, second), still_open = asyncio.run(run_all())
    return first, second, process, still_open


def test_the_driver_hands_each_stream_its_events_in_order() -> None:
    first, second, process, still_open = drive_streams(answer, 3)
    assert [(e.request_id, e.token_ids, e.finished) for e in first] == [
        ("a", [0], False),
        ("a", [1], False),
        ("a", [2], True),
    ]
    assert [e.request_id for e in second] == ["b"] * 3
    assert still_open == 0 and not process.closed


def test_an_abandoned_stream_is_closed_with_an_empty_final_chunk() -> None:
    first, _, process, still_open = drive_streams(answer, 2, leave_after=1)
    assert [e.token_ids for e in first] == [[0]]
    last = [c for c in process.submitted if c.stream_id == "a"][-1]
    assert (last.index, last.pcm16, last.final) == (2, b"", True)
    assert still_open == 0  # its final event was drained, and dropped


@pytest.mark.parametrize(
    ("script", "says"),
    [
        (lambda c: [], "hang: [scripted] no event for"),
        (
            lambda c: [transcript_event(c.stream_id, c.index + 1, [], c.final)],
            "chunk 0 awaits one event with payload {'type': 'partial', 'chunk': 0}",
        ),
        (
            lambda c: [Event(c.stream_id, [1], True, payload={"type": "partial", "chunk": 0})],
            "finished=True, but only the final chunk's event finishes the stream",
        ),
    ],
    ids=["silent", "wrong-chunk", "early-finish"],
)
def test_the_driver_fails_every_stream_of_a_broken_engine(script, says: str) -> None:
    first, second, process, _ = drive_streams(script, 2)
    assert isinstance(first, EngineFailure)
    assert says in str(first)
    assert second is first
    assert process.closed
