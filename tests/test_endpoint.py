"""The endpoint client against fake OpenAI-compatible servers: one right, and one per way of being
wrong (dropping the last token, another model's tokens, stalling mid-stream, text without ids,
no finish_reason, unreachable, another model's name). Each wrong one fails with its own reason."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pytest_vibeserve.checkers.tokens import ExpectedTokens, check_token_equality
from pytest_vibeserve.contract import Request
from pytest_vibeserve.endpoint import EndpointEngine, read_choice
from pytest_vibeserve.peers import free_port
from pytest_vibeserve.runner import EngineFailure, Limits


def continuation(prompt: list[int], count: int, shift: int = 0) -> list[int]:
    """The fake model: token i is (last prompt token + i + 1 + shift) mod 1000."""
    return [(prompt[-1] + i + 1 + shift) % 1000 for i in range(count)]


class FakeServer(BaseHTTPRequestHandler):
    mode = "good"
    model = "fake-model"

    def log_message(self, *args) -> None:
        pass

    def _json(self, status: int, data) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": self.model, "object": "model"}]})
        else:
            self._json(404, {"error": "no such path"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt, count = body["prompt"], body["max_tokens"]
        tokens = continuation(prompt, count, shift=7 if self.mode == "other_model" else 0)
        text_only = self.mode == "text_only"

        def choice(ids, reason):
            data = {"index": 0, "text": " ".join(map(str, ids)), "finish_reason": reason}
            if not text_only:
                data["token_ids"] = ids
            return data

        if not body.get("stream"):
            usage = {"prompt_tokens": len(prompt), "completion_tokens": len(tokens)}
            self._json(200, {"choices": [choice(tokens, "length")], "usage": usage})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        streamed = tokens[:-1] if self.mode == "drop_last" else tokens
        for i, token in enumerate(streamed):
            last = i == len(streamed) - 1
            reason = "length" if last and self.mode != "no_finish" else None
            self._event({"choices": [choice([token], reason)]})
            if self.mode == "stall" and i == 1:
                time.sleep(5)
                return
        self._event({"choices": [], "usage": {"completion_tokens": len(tokens)}})
        self.wfile.write(b"data: [DONE]\n\n")

    def _event(self, data) -> None:
        self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


@contextmanager
def fake_server(mode: str, model: str = "fake-model") -> Iterator[str]:
    handler = type("Handler", (FakeServer,), {"mode": mode, "model": model})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


REQUESTS = [Request(f"r{i}", (10 * i + 1, 10 * i + 2, 10 * i + 3), 6) for i in range(3)]
LIMITS = Limits(step_timeout_s=1.0)


def run(mode: str, **kwargs):
    with fake_server(mode) as url:
        engine = EndpointEngine(url, name="candidate", limits=LIMITS, **kwargs)
        engine.start()
        return engine, engine.run(REQUESTS, arrival_offsets_s=[0.0, 0.05, 0.1])


def test_a_right_server_gives_every_token_stamped_by_the_parent():
    engine, result = run("good")
    assert engine.id_source == "token_ids" and engine.model == "fake-model"
    for request in REQUESTS:
        record = result.records[request.request_id]
        assert record.token_ids == continuation(list(request.prompt_token_ids), 6)
        assert len(record.token_times) == 6 and record.finished_at is not None
        assert record.sent_at <= record.token_times[0] <= record.finished_at
    sent = sorted(r.sent_at - result.started_at for r in result.records.values())
    assert sent[2] >= 0.1  # the parent held the third request until its arrival time


def test_a_server_that_drops_the_last_streamed_token_fails_naming_it():
    with pytest.raises(EngineFailure, match=r"finish_reason 'length' after 5 streamed tokens.*6"):
        run("drop_last")


def test_a_server_that_stalls_mid_stream_fails_as_a_hang():
    with pytest.raises(EngineFailure, match=r"engine hang.*(stalled|timed out) mid-stream"):
        run("stall")


def test_a_stream_without_finish_reason_fails():
    with pytest.raises(EngineFailure, match="without a finish_reason"):
        run("no_finish")


def test_another_models_tokens_fail_the_token_check_at_the_first_token():
    _, result = run("other_model")
    expected = {
        r.request_id: ExpectedTokens(continuation(list(r.prompt_token_ids), 6), [5.0] * 6)
        for r in REQUESTS
    }
    check = check_token_equality(expected, result.outputs, tie_tolerance=1e-3)
    assert not check.passed
    assert check.failures[0].position == 0
    assert "r0" in check.failures[0].message


def test_a_server_returning_text_without_token_ids_is_refused_at_start():
    with fake_server("text_only") as url:
        engine = EndpointEngine(url, limits=LIMITS)
        with pytest.raises(EngineFailure, match="returns text but no token ids"):
            engine.start()


def test_an_unreachable_server_says_how_to_fix_it():
    engine = EndpointEngine(f"http://127.0.0.1:{free_port()}", limits=LIMITS)
    with pytest.raises(EngineFailure, match=r"cannot reach the server.*--vibeserve-endpoint"):
        engine.start()


def test_a_server_of_another_model_is_refused_naming_both():
    with fake_server("good", model="llama-3-70b") as url:
        engine = EndpointEngine(url, model="smollm2", limits=LIMITS)
        with pytest.raises(EngineFailure, match=r"does not serve model 'smollm2'.*llama-3-70b"):
            engine.start()


def test_token_ids_are_read_from_each_servers_own_field():
    assert read_choice({"token_ids": [5, 6]}, "token_ids") == ([5, 6], [])
    llama = {"logprobs": {"content": [{"id": 9, "logprob": -0.1, "top_logprobs": []}]}}
    assert read_choice(llama, "logprob_ids")[0] == [9]
    vllm = {
        "logprobs": {
            "tokens": ["token_id:4", "token_id:0"],
            "top_logprobs": [{"token_id:4": -0.5, "token_id:2": -1.5}, {"token_id:0": -0.1}],
        }
    }
    ids, tops = read_choice(vllm, "token_id_strings")
    assert ids == [4, 0] and tops == [{4: -0.5, 2: -1.5}, {0: -0.1}]
    assert read_choice({"text": "hi"}, "token_ids") == ([], [])
