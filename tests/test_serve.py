"""``vibeserve serve``: a real uvicorn server in front of a real engine worker, on loopback.

Expected tokens come from the reference greedy decoder on the same `tiny` model. Request parsing
and detokenization are also tested alone, without a server.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_vibeserve.cli import main
from pytest_vibeserve.contract import EngineSpec, Event, Request
from pytest_vibeserve.runner import EngineFailure
from pytest_vibeserve.serve import (
    ApiError,
    EngineDriver,
    RequestParser,
    ServedModel,
    Transcript,
    bind_socket,
    serve_in_thread,
)
from reference_impls.greedy import ReferenceOutput, greedy_decode, load_model
from reference_impls.models import materialize
from reference_impls.tiny import BOS_ID, EOS_ID
from tests.scripted_process import ScriptedProcess, stepping_clock

ROOT = Path(__file__).resolve().parent.parent
STARTER = ROOT / "scenarios/standard/starter"  # greedy, lists "logprobs"
NO_LOGPROBS = ROOT / "scenarios/predicted_outputs/starter"  # greedy, lists no capability
CRASH = ROOT / "tests/engines/crash"  # segfaults on its fourth model forward
HELLO = [BOS_ID, *b"Hello"]  # the tiny vocabulary is one token per byte
TIMEOUT_S = 60.0


# -- fixtures and clients --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def model_dir(cache_dir: Path) -> Path:
    return materialize("tiny", cache_dir)


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
def reference(model_dir: Path) -> Any:
    model = load_model(model_dir)

    def decode(prompt: list[int], max_tokens: int, stop: tuple[int, ...] = (EOS_ID,), top_k=5):
        return greedy_decode(model, prompt, max_tokens, stop_token_ids=stop, top_k=top_k)

    return decode


def _request(url: str, method: str, path: str, body: Any = None) -> tuple[int, str]:
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=TIMEOUT_S)
    try:
        payload = None if body is None else json.dumps(body)
        connection.request(method, path, payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def get(url: str, path: str) -> tuple[int, dict[str, Any]]:
    status, text = _request(url, "GET", path)
    return status, json.loads(text)


def post(url: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, text = _request(url, "POST", path, body)
    return status, json.loads(text)


def stream(url: str, path: str, body: dict[str, Any]) -> list[Any]:
    """The data of every server-sent event: parsed JSON, or the literal ``[DONE]``."""
    status, text = _request(url, "POST", path, {**body, "stream": True})
    assert status == 200, text
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def finish_reason(tokens: list[int], stop: tuple[int, ...] = (EOS_ID,)) -> str:
    return "stop" if tokens[-1] in stop else "length"


# -- the server, end to end ------------------------------------------------------------------


def test_health_and_models(server: str, model_dir: Path) -> None:
    assert get(server, "/health") == (200, {"status": "ok"})
    status, models = get(server, "/v1/models")
    assert status == 200
    assert models["object"] == "list"
    [card] = models["data"]
    assert card["id"] == model_dir.name
    assert card["root"] == str(model_dir)
    assert card["owned_by"] == "vibeserve"
    assert card["max_model_len"] == 4096
    assert isinstance(card["created"], int)


def test_token_prompt_returns_the_reference_tokens(server: str, reference, tokenizer) -> None:
    expected: ReferenceOutput = reference(HELLO, 12)
    status, body = post(
        server, "/v1/completions", {"prompt": HELLO, "max_tokens": 12, "return_token_ids": True}
    )
    assert status == 200, body
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["prompt_token_ids"] == HELLO
    [choice] = body["choices"]
    assert choice["token_ids"] == expected.tokens
    assert choice["text"] == tokenizer.decode(expected.tokens, skip_special_tokens=True)
    assert choice["finish_reason"] == finish_reason(expected.tokens)
    assert choice["logprobs"] is None
    n = len(expected.tokens)
    assert body["usage"] == {
        "prompt_tokens": len(HELLO),
        "completion_tokens": n,
        "total_tokens": len(HELLO) + n,
    }


def test_request_ids_are_unique(server: str) -> None:
    ids = {post(server, "/v1/completions", {"prompt": HELLO, "max_tokens": 1})[1]["id"]}
    ids.add(post(server, "/v1/completions", {"prompt": HELLO, "max_tokens": 1})[1]["id"])
    assert len(ids) == 2


def test_streaming_returns_the_reference_tokens(server: str, reference, tokenizer) -> None:
    expected = reference(HELLO, 10)
    events = stream(
        server,
        "/v1/completions",
        {
            "prompt": HELLO,
            "max_tokens": 10,
            "return_token_ids": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    assert usage_chunk["choices"] == []
    n = len(expected.tokens)
    assert usage_chunk["usage"] == {
        "prompt_tokens": len(HELLO),
        "completion_tokens": n,
        "total_tokens": len(HELLO) + n,
    }
    assert chunks[0]["prompt_token_ids"] == HELLO
    assert all("prompt_token_ids" not in chunk for chunk in chunks[1:])
    assert {chunk["id"] for chunk in events[:-1]} == {chunks[0]["id"]}
    choices = [chunk["choices"][0] for chunk in chunks]
    assert [t for choice in choices for t in choice["token_ids"]] == expected.tokens
    assert [c["finish_reason"] for c in choices[:-1]] == [None] * (len(choices) - 1)
    assert choices[-1]["finish_reason"] == finish_reason(expected.tokens)
    text = "".join(choice["text"] for choice in choices)
    assert text == tokenizer.decode(expected.tokens, skip_special_tokens=True)


def test_logprobs_match_the_reference(server: str, reference) -> None:
    expected = reference(HELLO, 6, top_k=3)
    status, body = post(
        server,
        "/v1/completions",
        {"prompt": HELLO, "max_tokens": 6, "logprobs": 3, "return_tokens_as_token_ids": True},
    )
    assert status == 200, body
    logprobs = body["choices"][0]["logprobs"]
    assert logprobs["tokens"] == [f"token_id:{t}" for t in expected.tokens]
    for position, token in enumerate(expected.tokens):
        want = expected.top_logprobs[position][token]
        assert logprobs["token_logprobs"][position] == pytest.approx(want, abs=1e-4)
        top = logprobs["top_logprobs"][position]
        assert len(top) == 3
        assert top[f"token_id:{token}"] == pytest.approx(want, abs=1e-4)
    assert logprobs["text_offset"][0] == 0
    assert logprobs["text_offset"] == sorted(logprobs["text_offset"])


def test_string_prompt(server: str, reference, tokenizer) -> None:
    prompt_ids = tokenizer("Once upon a time").input_ids
    expected = reference(prompt_ids, 8)
    status, body = post(
        server,
        "/v1/completions",
        {"prompt": "Once upon a time", "max_tokens": 8, "return_token_ids": True},
    )
    assert status == 200, body
    assert body["prompt_token_ids"] == prompt_ids
    assert body["choices"][0]["token_ids"] == expected.tokens


def test_stop_token_ids_end_the_request_early(server: str, reference) -> None:
    tokens = reference(HELLO, 16).tokens
    at = next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])
    status, body = post(
        server,
        "/v1/completions",
        {
            "prompt": HELLO,
            "max_tokens": 16,
            "stop_token_ids": [tokens[at]],
            "return_token_ids": True,
        },
    )
    assert status == 200, body
    [choice] = body["choices"]
    assert choice["token_ids"] == tokens[: at + 1]
    assert choice["finish_reason"] == "stop"


def test_chat_completion_follows_the_chat_template(server: str, reference, tokenizer) -> None:
    messages = [{"role": "user", "content": "Say hi"}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    prompt_ids = list(encoded["input_ids"])
    expected = reference(prompt_ids, 8)
    body = {"messages": messages, "max_completion_tokens": 8, "return_token_ids": True}
    status, answer = post(server, "/v1/chat/completions", body)
    assert status == 200, answer
    assert answer["object"] == "chat.completion"
    assert answer["prompt_token_ids"] == prompt_ids
    [choice] = answer["choices"]
    assert choice["token_ids"] == expected.tokens
    text = tokenizer.decode(expected.tokens, skip_special_tokens=True)
    assert choice["message"] == {"role": "assistant", "content": text}

    events = stream(server, "/v1/chat/completions", {**body, "logprobs": True, "top_logprobs": 2})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    deltas = [chunk["choices"][0] for chunk in chunks[1:]]
    assert "".join(d["delta"]["content"] for d in deltas) == text
    entries = [entry for d in deltas for entry in d["logprobs"]["content"]]
    assert len(entries) == len(expected.tokens)
    for entry, top in zip(entries, expected.top_logprobs, strict=True):
        assert entry["logprob"] == pytest.approx(next(iter(top.values())), abs=1e-4)
        assert len(entry["top_logprobs"]) == 2


def test_unknown_model_is_404_naming_the_served_one(server: str, model_dir: Path) -> None:
    status, body = post(server, "/v1/completions", {"model": "gpt-4", "prompt": HELLO})
    assert status == 404
    error = body["error"]
    assert error["type"] == "NotFoundError"
    assert error["param"] == "model"
    assert error["code"] == 404
    assert model_dir.name in error["message"]


def test_sampling_is_refused(server: str) -> None:
    status, body = post(server, "/v1/completions", {"prompt": HELLO, "temperature": 0.7})
    assert status == 400
    assert body["error"]["param"] == "temperature"
    assert "greedy" in body["error"]["message"]


def test_bad_json_is_400(server: str) -> None:
    status, text = _request(server, "POST", "/v1/completions", None)
    assert status == 400
    assert "JSON" in json.loads(text)["error"]["message"]


def test_an_engine_without_logprobs_refuses_them(spec: EngineSpec) -> None:
    with serve_in_thread(NO_LOGPROBS, spec) as url:
        status, body = post(url, "/v1/completions", {"prompt": HELLO, "logprobs": 1})
        assert status == 400
        assert body["error"]["param"] == "logprobs"
        assert "'starter'" in body["error"]["message"]
        status, body = post(url, "/v1/completions", {"prompt": HELLO, "max_tokens": 2})
        assert status == 200, body


def test_a_crashing_engine_fails_its_requests_and_health(spec: EngineSpec) -> None:
    with serve_in_thread(CRASH, spec) as url:
        events = stream(url, "/v1/completions", {"prompt": HELLO, "max_tokens": 8})
        assert "[DONE]" not in events
        assert "engine crash" in events[-1]["error"]["message"]
        assert events[-1]["error"]["code"] == 500
        status, body = post(url, "/v1/completions", {"prompt": HELLO, "max_tokens": 8})
        assert status == 500
        assert "engine crash" in body["error"]["message"]
        status, health = get(url, "/health")
        assert status == 503
        assert health["status"] == "error"
        assert "engine crash" in health["error"]


def test_a_client_that_leaves_mid_stream_does_not_disturb_the_next(server: str, reference):
    address = urlsplit(server)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=TIMEOUT_S)
    body = {"prompt": HELLO, "max_tokens": 200, "ignore_eos": True, "stream": True}
    connection.request("POST", "/v1/completions", json.dumps(body))
    response = connection.getresponse()
    assert response.status == 200
    assert response.read(6) == b"data: "
    connection.close()
    expected = reference(HELLO, 4)
    status, answer = post(
        server, "/v1/completions", {"prompt": HELLO, "max_tokens": 4, "return_token_ids": True}
    )
    assert status == 200, answer
    assert answer["choices"][0]["token_ids"] == expected.tokens
    assert get(server, "/health") == (200, {"status": "ok"})


# -- the driver alone, with a scripted process and clock ---------------------------------------


def drive(
    script: Callable[[Request], list[Event]], *requests: Request
) -> tuple[list, ScriptedProcess]:
    """Each request's events through an ``EngineDriver``, or the ``EngineFailure`` it got."""
    process = ScriptedProcess(script)

    async def collect(driver: EngineDriver, request: Request) -> list[Event] | EngineFailure:
        try:
            return [event async for event in driver.generate(request)]
        except EngineFailure as failure:
            return failure

    async def run_all() -> list[Any]:
        with EngineDriver(process, clock=stepping_clock()) as driver:
            return [await collect(driver, request) for request in requests]

    return asyncio.run(run_all()), process


def test_the_driver_hands_each_request_its_events() -> None:
    def two_batches(request: Request) -> list[Event]:
        rid = request.request_id
        return [Event(rid, [1]), Event(rid, [2, 3], finished=True)]

    (first, second), process = drive(two_batches, Request("a", (1,), 3), Request("b", (1,), 3))
    assert [e.token_ids for e in first] == [[1], [2, 3]]
    assert [e.request_id for e in second] == ["b", "b"]
    assert not process.closed


@pytest.mark.parametrize(
    ("script", "says"),
    [
        (lambda r: [], "hang: [scripted] no event for"),
        (lambda r: [Event("other", [1], finished=True)], "not in flight"),
        (lambda r: [Event(r.request_id, [1, 2, 3], finished=True)], "over its max_new_tokens=2"),
        (lambda r: [Event(r.request_id, [1], finished=True)], "asked for top_logprobs"),
    ],
    ids=["silent", "unknown-id", "too-many-tokens", "no-logprobs"],
)
def test_the_driver_fails_every_request_of_a_broken_engine(script, says: str) -> None:
    request = Request("a", (1,), max_new_tokens=2, top_logprobs=1)
    (failure, later), process = drive(script, request, Request("b", (1,), 2))
    assert isinstance(failure, EngineFailure)
    assert says in str(failure)
    assert "scripted log" in str(failure)
    assert later is failure
    assert process.closed


# -- parsing and detokenizing alone ----------------------------------------------------------


@pytest.fixture(scope="module")
def parser(tokenizer: Any, model_dir: Path) -> RequestParser:
    return RequestParser(
        tokenizer,
        ServedModel.from_dir(model_dir),
        engine_name="fake",
        capabilities=frozenset({"logprobs"}),
    )


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"n": 2}, "n", "greedy"),
        ({"stop": ["\n"]}, "stop", "stop_token_ids"),
        ({"echo": True}, "echo", "false"),
        ({"logprobs": 21}, "logprobs", "[0, 20]"),
        ({"logprobs": True}, "logprobs", "integer"),
        ({"max_tokens": 0}, "max_tokens", "[1, "),
        ({"max_tokens": 4094}, "max_tokens", "max_model_len"),  # "hi" is 3 tokens
        ({"response_format": {"type": "json_object"}}, "response_format", "'fake'"),
        ({"prediction": "text"}, "prediction", '"type": "content"'),
        ({"stop_token_ids": ["x"]}, "stop_token_ids", "token ids"),
        ({"prompt": {"text": "hi"}}, "prompt", "non-empty string"),
        ({"prompt": []}, "prompt", "non-empty"),
        ({"prompt": ""}, "prompt", "non-empty"),
        ({"prompt": [1, 300]}, "prompt", "vocabulary"),
        ({"prompt": ["a", "b"]}, "prompt", "one of those"),
    ],
)
def test_bad_completion_fields_are_400_naming_the_field(
    parser: RequestParser, body: dict[str, Any], param: str, says: str
) -> None:
    with pytest.raises(ApiError) as raised:
        parser.completion({"prompt": "hi", **body})
    assert raised.value.status == 400
    assert raised.value.param == param
    assert says in str(raised.value)


def test_prompt_forms_agree(parser: RequestParser, tokenizer: Any) -> None:
    ids = tokenizer("hi").input_ids
    for prompt in ("hi", ["hi"], ids, [ids]):
        assert parser.completion({"prompt": prompt}).prompt_token_ids == ids


def test_completion_options_reach_the_engine_request(parser: RequestParser) -> None:
    generation = parser.completion(
        {
            "prompt": [1, 2],
            "max_tokens": 3,
            "logprobs": 0,
            "stop_token_ids": [7],
            "prediction": {"type": "content", "content": "ab"},
            "unknown_field": "ignored",
        }
    )
    request = generation.engine_request("cmpl-1")
    assert request.stop_token_ids == (7, EOS_ID)
    assert request.top_logprobs == 1  # logprobs=0 still reports the chosen token
    assert request.prediction_token_ids == (ord("a"), ord("b"))  # no BOS
    assert request.max_new_tokens == 3
    unbounded = parser.completion({"prompt": [1], "ignore_eos": True}).engine_request("cmpl-2")
    assert unbounded.stop_token_ids == ()
    assert unbounded.max_new_tokens == 16
    assert unbounded.top_logprobs == 0


def test_response_format_reaches_an_engine_that_lists_it(tokenizer, model_dir: Path) -> None:
    parser = RequestParser(
        tokenizer,
        ServedModel.from_dir(model_dir),
        engine_name="json",
        capabilities=frozenset({"response_format"}),
    )
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    generation = parser.completion({"prompt": "hi", "response_format": schema})
    assert generation.engine_request("cmpl-1").response_format == schema
    with pytest.raises(ApiError, match="'json' does not support logprobs"):
        parser.completion({"prompt": "hi", "logprobs": 1})


def test_chat_fields(parser: RequestParser) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    generation = parser.chat({"messages": messages, "max_completion_tokens": 5})
    assert generation.max_tokens == 5
    assert generation.logprobs is None
    assert parser.chat({"messages": messages, "logprobs": True}).logprobs == 0
    with pytest.raises(ApiError, match="top_logprobs needs logprobs: true"):
        parser.chat({"messages": messages, "top_logprobs": 2})
    with pytest.raises(ApiError, match="non-empty list"):
        parser.chat({"messages": []})


def test_a_tokenizer_without_chat_template_refuses_chat(tokenizer, model_dir: Path) -> None:
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(model_dir)
    plain.chat_template = None
    parser = RequestParser(
        plain, ServedModel.from_dir(model_dir), engine_name="x", capabilities=frozenset()
    )
    with pytest.raises(ApiError, match=r"no chat template.*/v1/completions") as raised:
        parser.chat({"messages": [{"role": "user", "content": "hi"}]})
    assert raised.value.status == 400


def test_partial_characters_are_held_back_until_complete(tokenizer: Any) -> None:
    transcript = Transcript(tokenizer)
    e_acute = list("é".encode())  # two byte tokens
    assert transcript.add([ord("a"), e_acute[0]], None, final=False).text == "a"
    assert transcript.add([e_acute[1]], None, final=False).text == "é"
    assert transcript.add([e_acute[0]], None, final=True).text == "\ufffd"  # flushed at the end


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.integers(0, 255), min_size=1, max_size=24),
    cuts=st.lists(st.integers(0, 24), max_size=6),
)
def test_streamed_text_adds_up_to_the_whole(tokenizer: Any, data: list[int], cuts) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    transcript = Transcript(tokenizer)
    batches = [data[a:b] for a, b in itertools.pairwise(bounds)]
    text = "".join(
        transcript.add(batch, None, final=i == len(batches) - 1).text
        for i, batch in enumerate(batches)
    )
    assert text == tokenizer.decode(data, skip_special_tokens=True)


# -- the command line ------------------------------------------------------------------------


def test_cli_refuses_a_directory_without_engine_py(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["serve", str(tmp_path), "--scale", "tiny"])
    assert raised.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "no engine.py" in err
    assert "create_engine(spec)" in err


def test_cli_refuses_an_unknown_scale(capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["serve", str(STARTER), "--scale", "huge"])
    assert raised.value.code == 2
    assert "use one of tiny" in capsys.readouterr().err


def test_cli_refuses_a_port_in_use(capsys) -> None:
    with bind_socket("127.0.0.1", 0) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as raised:
            main(["serve", str(STARTER), "--port", str(port)])
    assert raised.value.code == 2
    assert "pick a free port with --port" in capsys.readouterr().err


def _worker_children(pid: int) -> list[int]:
    """Engine worker processes whose parent is ``pid``."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"pytest_vibeserve.worker" in cmdline:
            workers.append(int(stat.parent.name))
    return workers


def test_cli_serves_until_sigterm_and_closes_the_worker(cache_dir: Path, tmp_path: Path) -> None:
    with bind_socket("127.0.0.1", 0) as probe:
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pytest_vibeserve.cli", "serve", str(STARTER)]
    command += ["--scale", "tiny", "--cache", str(cache_dir), "--port", str(port)]
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            try:
                if get(url, "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        [worker] = _worker_children(process.pid)
        status, body = post(url, "/v1/completions", {"prompt": HELLO, "max_tokens": 3})
        assert status == 200, body
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not Path(f"/proc/{worker}").exists()
    assert f"serving {STARTER}" in log_path.read_text()
