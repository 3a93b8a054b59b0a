"""``vibeserve serve`` of a text-to-image engine: ``POST /v1/images/generations``, the refusals
between model kinds, and ``EndpointEngine.run`` of ``ImageRequest``s as the harness's client.

A real uvicorn server runs ``tests/engines/image_fake`` (numpy pixels from the seed and prompt, no
model) on the ``t2i-tiny`` model directory over loopback; expected payloads come from the same
engine driven directly by ``EngineProcess.run``. The driver's image routing and the endpoint
client's reading of wrong replies are also tested alone.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from pytest_vibeserve.contract import (
    EngineSpec,
    Event,
    ImageRequest,
    Request,
    decode_image,
    decode_probe,
    image_event,
)
from pytest_vibeserve.endpoint import EndpointEngine
from pytest_vibeserve.runner import EngineFailure, EngineProcess, Limits, RequestRecord
from pytest_vibeserve.serve import EngineDriver, ServedModel, serve_in_thread
from reference_impls.models import materialize
from tests.scripted_process import ScriptedProcess, stepping_clock

ROOT = Path(__file__).resolve().parent.parent
FAKE = ROOT / "tests/engines/image_fake"
TEXT_STARTER = ROOT / "scenarios/standard/starter"
SCENARIO = ROOT / "scenarios/unified_multimodal"
IMAGES_PATH = "/v1/images/generations"
TIMEOUT_S = 60.0
PAYLOAD_FIELDS = ("probe_shape", "probe_latent", "trajectory", "model_calls", "uncond_calls")


# -- fixtures and clients --------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(vibeserve_cache: Path) -> Path:
    return materialize("t2i-tiny", vibeserve_cache)


@pytest.fixture(scope="module")
def size(model_dir: Path) -> int:
    """The side of the model's square images, pixels."""
    return int(json.loads((model_dir / "config.json").read_text())["image_size"])


@pytest.fixture(scope="module")
def max_prompt(model_dir: Path) -> int:
    """The model's max_text_tokens: UTF-8 bytes of a prompt."""
    return int(json.loads((model_dir / "config.json").read_text())["max_text_tokens"])


@pytest.fixture(scope="module")
def spec(model_dir: Path) -> EngineSpec:
    return EngineSpec(model_path=str(model_dir))


@pytest.fixture(scope="module")
def server(spec: EngineSpec) -> Iterator[str]:
    with serve_in_thread(FAKE, spec) as url:
        yield url


@pytest.fixture(scope="module")
def direct(spec: EngineSpec) -> Iterator[Callable[..., dict[str, RequestRecord]]]:
    """The fake engine driven by ``EngineProcess.run``: records by request id."""
    with EngineProcess(FAKE, spec, limits=Limits(step_timeout_s=TIMEOUT_S)) as process:

        def run(*requests: ImageRequest) -> dict[str, RequestRecord]:
            return process.run(requests).records

        yield run


def _http(url: str, method: str, path: str, body: bytes | None) -> tuple[int, str, bytes]:
    """Status, Content-Type and body of one request."""
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=TIMEOUT_S)
    try:
        connection.request(method, path, body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, response.getheader("content-type", ""), response.read()
    finally:
        connection.close()


def post(url: str, body: Any, path: str = IMAGES_PATH) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, data = _http(url, "POST", path, raw)
    return status, json.loads(data)


def get(url: str, path: str) -> tuple[int, Any]:
    status, _, data = _http(url, "GET", path, None)
    return status, json.loads(data)


def png_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def b64_pixels(reply: dict[str, Any]) -> np.ndarray:
    return png_pixels(base64.b64decode(reply["data"][0]["b64_json"]))


def request_of(body: dict[str, Any], request_id: str = "direct") -> ImageRequest:
    """The ``ImageRequest`` a body's fields stand for (the route's defaults where left out)."""
    return ImageRequest(
        request_id,
        body["prompt"],
        body.get("seed", 0),
        steps=body.get("num_inference_steps", 20),
        guidance=body.get("guidance_scale", 5.0),
        probe_step=body.get("probe_step", 0),
    )


# -- the route ----------------------------------------------------------------------------------


# a body, or a function of (image size, max prompt bytes) giving one
Body = dict[str, Any] | Callable[[int, int], dict[str, Any]]


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "a red cube", "seed": 5, "num_inference_steps": 6, "guidance_scale": 3.5},
        lambda size, most: {
            "prompt": "é" * (most // 2),  # 2 bytes a character: at the limit
            "seed": 2**64 - 1,
            "probe_step": 18,
            "size": "auto",
        },
        lambda size, most: {
            "prompt": "",  # the unconditional image
            "n": 1,
            "size": f"{size}x{size}",
            "response_format": "b64_json",
        },
        {"prompt": "defaults", "model": None},
    ],
    ids=["extensions", "limits", "openai-fields", "defaults"],
)
def test_b64_json_carries_the_engines_image_and_payload(
    server, direct, size: int, max_prompt: int, body: Body
) -> None:
    body = body(size, max_prompt) if callable(body) else body
    status, reply = post(server, body)
    assert status == 200, reply
    [payload] = direct(request_of(body))["direct"].payloads
    pixels = b64_pixels(reply)
    assert pixels.dtype == np.uint8 and pixels.shape == (size, size, 3)
    assert np.array_equal(pixels, decode_image(payload))
    assert reply["data"][0]["revised_prompt"] is None
    assert isinstance(reply["created"], int) and abs(reply["created"] - time.time()) < 60
    extras = reply["vibeserve"]
    assert extras["shape"] == payload["shape"] == [size, size, 3]
    for key in (*PAYLOAD_FIELDS, "timings_ms"):
        assert extras[key] == payload[key], key
    steps = body.get("num_inference_steps", 20)
    assert extras["probe_shape"] == [16, size // 8, size // 8]
    assert extras["model_calls"] == extras["uncond_calls"] == steps - 1
    assert extras["trajectory"] == [[0.0] * 16] * (steps - 1)


def test_png_is_the_same_image_as_b64_json(server) -> None:
    body = {"prompt": "a blue sphere", "seed": 11, "num_inference_steps": 3}
    status, content_type, png = _http(
        server, "POST", IMAGES_PATH, json.dumps({**body, "response_format": "png"}).encode()
    )
    assert status == 200 and content_type == "image/png"
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    _, reply = post(server, body)
    assert np.array_equal(png_pixels(png), b64_pixels(reply))


def test_seed_and_prompt_reach_the_engine(server) -> None:
    images = {}
    for prompt, seed in [("cat", 0), ("cat", 1), ("dog", 0), ("cat", 0)]:
        status, reply = post(server, {"prompt": prompt, "seed": seed, "num_inference_steps": 2})
        assert status == 200
        images.setdefault((prompt, seed), []).append(b64_pixels(reply))
    assert np.array_equal(*images["cat", 0])  # the same request, the same image
    assert not np.array_equal(images["cat", 0][0], images["cat", 1][0])
    assert not np.array_equal(images["cat", 0][0], images["dog", 0][0])


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"prompt": None}, "prompt", "prompt must be a string (the image's description), got None"),
        ({"prompt": ["a", "b"]}, "prompt", "prompt must be a string"),
        (lambda size, most: {"prompt": "x" * (most + 1)}, "prompt", "{over} UTF-8 bytes, over"),
        (
            lambda size, most: {"prompt": "é" * (most // 2 + 1)},
            "prompt",
            "{over} UTF-8 bytes, over this model's max_text_tokens={most} (its prompt tokens are "
            "UTF-8 bytes); shorten it",
        ),
        ({"n": 2}, "n", "n must be 1 (one image a request), got 2; send n requests"),
        ({"n": True}, "n", "n must be 1"),
        (
            {"size": "4096x4096"},
            "size",
            'this model makes {size}x{size} images only; send "size": "{size}x{size}"',
        ),
        (lambda size, most: {"size": size}, "size", "{size}x{size} images only"),
        ({"response_format": "url"}, "response_format", "'url' is not offered"),
        ({"response_format": "jpeg"}, "response_format", "use 'b64_json' (the default) or 'png'"),
        ({"seed": -1}, "seed", "seed must be an integer in [0, 18446744073709551615]"),
        ({"seed": 2**64}, "seed", "seed must be an integer in"),
        ({"seed": "7"}, "seed", "got '7'"),
        ({"seed": 1.5}, "seed", "got 1.5"),
        ({"num_inference_steps": 1}, "num_inference_steps", "[2, 1000] (schedule points"),
        ({"num_inference_steps": 1001}, "num_inference_steps", "[2, 1000]"),
        ({"probe_step": 19}, "probe_step", "[0, 18] (one of the num_inference_steps - 1 = 19"),
        ({"num_inference_steps": 6, "probe_step": 5}, "probe_step", "[0, 4]"),
        ({"probe_step": -1}, "probe_step", "[0, 18]"),
        ({"guidance_scale": -0.5}, "guidance_scale", "a number >= 0 (0: no guidance)"),
        ({"guidance_scale": "5"}, "guidance_scale", "got '5'"),
        ({"guidance_scale": False}, "guidance_scale", "got False"),
    ],
)
def test_bad_fields_are_400_naming_the_field_and_the_fix(
    server, size: int, max_prompt: int, body: Body, param: str, says: str
) -> None:
    body = body(size, max_prompt) if callable(body) else body
    status, reply = post(server, {"prompt": "a cat", **body})
    assert status == 400
    assert reply["error"]["param"] == param
    assert reply["error"]["type"] == "BadRequestError" and reply["error"]["code"] == 400
    prompt = body.get("prompt")
    over = len(prompt.encode()) if isinstance(prompt, str) else 0
    assert says.format(size=size, most=max_prompt, over=over) in reply["error"]["message"]
    assert get(server, "/health") == (200, {"status": "ok"})  # the engine never saw it


def test_unreadable_bodies_and_other_models_are_refused(server, model_dir: Path) -> None:
    assert post(server, b"{not json")[1]["error"]["message"] == "the request body is not valid JSON"
    status, reply = post(server, [{"prompt": "a"}])
    assert status == 400 and "must be a JSON object" in reply["error"]["message"]
    status, reply = post(server, {"prompt": "a", "model": "dall-e-3"})
    assert status == 404 and reply["error"]["type"] == "NotFoundError"
    assert f"this server serves {model_dir.name!r}" in reply["error"]["message"]
    status, reply = post(server, {"prompt": "a", "model": model_dir.name})
    assert status == 200 and reply["vibeserve"]["model_calls"] == 19


# -- refusals between model kinds -----------------------------------------------------------------


def test_an_image_server_refuses_text_and_audio_and_says_what_it_serves(
    server, model_dir: Path, size: int, max_prompt: int
) -> None:
    for path in ("/v1/completions", "/v1/chat/completions"):
        status, reply = post(server, {"prompt": [1, 2], "messages": []}, path)
        assert status == 400 and reply["error"]["param"] == "model"
        assert f"is a text-to-image model ({size}x{size} images)" in reply["error"]["message"]
        assert "no text completions; post a prompt to /v1/images/generations" in str(
            reply["error"]["message"]
        )
    status, reply = post(server, b"RIFF", "/v1/audio/transcriptions")
    assert status == 400 and "no audio transcriptions" in reply["error"]["message"]
    with connect(server.replace("http", "ws", 1) + "/v1/audio/stream") as ws:
        error = json.loads(ws.recv(timeout=TIMEOUT_S))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=TIMEOUT_S)
        assert ws.close_code == 1011
    assert error["type"] == "error" and "no audio streams" in error["error"]
    status, models = get(server, "/v1/models")
    card = models["data"][0]
    assert (card["id"], card["task"], card["image_size"]) == (model_dir.name, "text-to-image", size)
    assert card["max_model_len"] == max_prompt
    assert get(server, "/health") == (200, {"status": "ok"})


def test_a_text_model_server_refuses_images_and_stays_up(vibeserve_cache: Path) -> None:
    spec = EngineSpec(model_path=str(materialize("tiny", vibeserve_cache)))
    with serve_in_thread(TEXT_STARTER, spec) as url:
        status, reply = post(url, {"prompt": "a cat"})
        assert status == 400 and reply["error"]["param"] == "model"
        assert "is a text model, so this server makes no images" in reply["error"]["message"]
        assert "t2i-tiny" in reply["error"]["message"]
        assert get(url, "/v1/models")[1]["data"][0]["task"] == "generate"
        assert get(url, "/health") == (200, {"status": "ok"})
        engine = EndpointEngine(url, limits=Limits(step_timeout_s=10))
        engine.start()
        with pytest.raises(EngineFailure, match=r"engine load: .* is no text-to-image model"):
            engine.run([ImageRequest("i", "a cat", 0, steps=2)])


def test_served_model_reads_an_image_models_config(model_dir, size: int, max_prompt: int):
    model = ServedModel.from_dir(model_dir, "t2i")
    assert (model.name, model.image_size, model.max_model_len) == ("t2i", size, max_prompt)
    assert model.makes_images


# -- a crashing engine ----------------------------------------------------------------------------


def test_a_crashing_engine_fails_its_request_the_next_and_health(spec: EngineSpec) -> None:
    crashing = EngineSpec(model_path=spec.model_path, options={"crash_on_prompt": "boom"})
    with serve_in_thread(FAKE, crashing) as url:
        assert post(url, {"prompt": "fine", "num_inference_steps": 2})[0] == 200
        status, reply = post(url, {"prompt": "boom"})
        assert status == 500
        error = reply["error"]
        assert (error["type"], error["code"], error["param"]) == ("InternalServerError", 500, None)
        assert "engine crash" in error["message"] and "(on purpose)" in error["message"]
        status, reply = post(url, {"prompt": "fine"})
        assert status == 500 and "engine crash" in reply["error"]["message"]
        status, health = get(url, "/health")
        assert status == 503 and "on purpose" in health["error"]


# -- EndpointEngine.run against the server ------------------------------------------------------


def test_endpoint_run_records_what_the_runner_records(server, spec: EngineSpec, model_dir):
    requests = [
        ImageRequest("r0", "a red cube", 1, steps=4),
        ImageRequest("r1", "a blue sphere", 2, steps=6, guidance=0.0, probe_step=3),
        ImageRequest("r2", "", 3, steps=2),
        ImageRequest("r3", "é" * 20, 2**40, steps=3, guidance=7.5, probe_step=1),
    ]
    offsets = [0.0, 0.0, 0.15, 0.3]
    with EngineProcess(FAKE, spec) as process:
        expected = process.run(requests).records
    engine = EndpointEngine(server, limits=Limits(step_timeout_s=TIMEOUT_S))
    engine.start()
    assert engine.serves_images and not engine.serves_audio and engine.id_source is None
    assert engine.model == model_dir.name
    result = engine.run(requests, concurrency=1, arrival_offsets_s=offsets)
    assert result.counters == {} and result.forward_calls is None
    assert list(result.records) == [r.request_id for r in requests]
    for request, offset in zip(requests, offsets, strict=True):
        record, want = result.records[request.request_id], expected[request.request_id]
        assert record.payloads == want.payloads  # every field, as the runner records it
        [payload] = record.payloads
        assert np.array_equal(decode_image(payload), decode_image(want.payloads[0]))
        assert np.array_equal(decode_probe(payload), decode_probe(want.payloads[0]))
        assert payload["trajectory"] == want.payloads[0]["trajectory"]
        assert (record.prompt_len, record.token_ids) == (0, [])
        assert record.sent_at - result.started_at >= offset
        assert record.sent_at < record.finished_at <= result.ended_at
    for before, after in itertools.pairwise(result.records.values()):  # concurrency 1
        assert before.finished_at <= after.sent_at


def test_vibeserve_serve_passes_the_unified_multimodal_correctness_checks(
    spec: EngineSpec, pytester, vibeserve_cache: Path
) -> None:
    with serve_in_thread(SCENARIO / "starter", spec) as url:
        argv = [str(SCENARIO), "--vibeserve-scale", "tiny"]
        argv += ["--vibeserve-cache", str(vibeserve_cache), "--vibeserve-endpoint", url]
        argv += ["-k", "correctness", "--vibeserve-report", "report.json", "-p", "no:cacheprovider"]
        result = pytester.runpytest_subprocess(*argv, timeout=600)
    # the integrity check runs and skips: a server reports no forward counter
    result.assert_outcomes(passed=4, skipped=1)
    result.stdout.fnmatch_lines(["PASS image: 4/4 images close*", "PASS denoising: 4/4 images*"])
    report = json.loads((pytester.path / "report.json").read_text())
    assert report["engine"] == url
    assert report["correctness"]["passed"] is True


def test_endpoint_run_keeps_image_and_text_requests_apart(server) -> None:
    engine = EndpointEngine(server, limits=Limits(step_timeout_s=TIMEOUT_S))
    engine.start()
    with pytest.raises(EngineFailure, match=r"engine load: .*makes images \(text-to-image\)"):
        engine.run([Request("t", (1, 2), 2)])
    with pytest.raises(ValueError, match="all text requests or all image requests"):
        engine.run([ImageRequest("i", "a", 0), Request("t", (1, 2), 2)])
    assert engine.run([ImageRequest("i", "a", 0, steps=2)]).records["i"].finished_at is not None


# -- EndpointEngine.run against wrong image servers ---------------------------------------------


def png_b64(pixels: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def good_reply(request: ImageRequest) -> dict[str, Any]:
    pixels = np.full((4, 4, 3), 7, dtype=np.uint8)
    payload = image_event(
        request.request_id,
        pixels,
        probe_latent=np.zeros((16, 1, 1), dtype=np.float32),
        trajectory=[[0.5] * 16],
        model_calls=1,
        uncond_calls=1,
    ).payload
    extras = {k: v for k, v in payload.items() if k not in ("type", "pixels")}
    return {"created": 0, "data": [{"b64_json": png_b64(pixels)}], "vibeserve": extras}


def fake_image_server(answer: Callable[[dict[str, Any]], tuple[int, Any]]) -> Any:
    """An HTTP server of an image model whose generations reply is ``answer(body)``."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._send(200, {"data": [{"id": "fake-t2i", "task": "text-to-image"}]})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._send(*answer(body))

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _without_vibeserve(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k != "vibeserve"}


def _string_calls(reply: dict[str, Any]) -> dict[str, Any]:
    reply["vibeserve"]["model_calls"] = "1"
    return reply


def _other_shape(reply: dict[str, Any]) -> dict[str, Any]:
    reply["vibeserve"]["shape"] = [8, 8, 3]
    return reply


@pytest.mark.parametrize(
    ("edit", "status", "match"),
    [
        (lambda reply: reply, 200, None),
        (_without_vibeserve, 200, r"engine protocol: .*unreadable reply .*KeyError\('vibeserve'"),
        (_other_shape, 200, r"unreadable reply .*the PNG is \(4, 4, 3\), the reply's shape"),
        (
            _string_calls,
            200,
            r"engine protocol: .*image 'i': payload\['model_calls'\] must be an int",
        ),
        (lambda reply: {"error": {"message": "boom"}}, 500, r"engine protocol: .*HTTP 500 .*boom"),
    ],
    ids=["good", "no-vibeserve", "wrong-shape", "string-calls", "http-500"],
)
def test_endpoint_run_fails_a_wrong_image_reply_with_its_reason(edit, status, match) -> None:
    seen: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    request = ImageRequest("i", "a cat", 9, steps=2, guidance=1.5)

    def answer(body: dict[str, Any]) -> tuple[int, Any]:
        seen.put(body)
        return status, edit(good_reply(request))

    fake = fake_image_server(answer)
    try:
        engine = EndpointEngine(f"http://127.0.0.1:{fake.server_address[1]}")
        engine.start()
        if match is None:
            [payload] = engine.run([request]).records["i"].payloads
            assert decode_image(payload).tolist() == np.full((4, 4, 3), 7).tolist()
            assert payload["trajectory"] == [[0.5] * 16] and payload["timings_ms"] == {}
        else:
            with pytest.raises(EngineFailure, match=match):
                engine.run([request])
        assert seen.get(timeout=5) == {
            "model": "fake-t2i",
            "prompt": "a cat",
            "n": 1,
            "response_format": "b64_json",
            "seed": 9,
            "num_inference_steps": 2,
            "guidance_scale": 1.5,
            "probe_step": 0,
        }
    finally:
        fake.shutdown()


# -- the driver's image routing alone, scripted --------------------------------------------------


def tiny_image(request: ImageRequest) -> list[Event]:
    pixels = np.full((2, 2, 3), len(request.request_id), dtype=np.uint8)
    probe = np.zeros((16, 1, 1), dtype=np.float32)
    event = image_event(
        request.request_id, pixels, probe_latent=probe, trajectory=[], model_calls=1, uncond_calls=0
    )
    return [event]


def drive_images(script, *requests: ImageRequest) -> tuple[list[Any], ScriptedProcess]:
    """Each request's event through an ``EngineDriver``, or the ``EngineFailure`` it got."""
    process = ScriptedProcess(script)

    async def collect(driver: EngineDriver, request: ImageRequest) -> Event | EngineFailure:
        try:
            return await driver.generate_image(request)
        except EngineFailure as failure:
            return failure

    async def run_all() -> list[Any]:
        with EngineDriver(process, clock=stepping_clock()) as driver:
            return list(await asyncio.gather(*(collect(driver, r) for r in requests)))

    return asyncio.run(run_all()), process


def test_the_driver_hands_each_image_request_its_event() -> None:
    (first, second), process = drive_images(
        tiny_image, ImageRequest("a", "x", 0, steps=2), ImageRequest("bb", "y", 0, steps=2)
    )
    assert (first.request_id, second.request_id) == ("a", "bb")
    assert decode_image(first.payload).max() == 1 and decode_image(second.payload).max() == 2
    assert not process.closed


@pytest.mark.parametrize(
    ("script", "says"),
    [
        (lambda r: [], "hang: [scripted] no event for"),
        (lambda r: [Event(r.request_id, [], finished=False)], "answered by one finished event"),
        (
            lambda r: [Event(r.request_id, [], True, payload={"type": "image", "shape": [2, 2]})],
            "image 'a': unreadable image payload",
        ),
        (lambda r: [Event("other", [], True)], "event for a request not in flight"),
    ],
    ids=["silent", "unfinished", "unreadable", "unknown-id"],
)
def test_the_driver_fails_every_image_request_of_a_broken_engine(script, says: str) -> None:
    (failure, later), process = drive_images(
        script, ImageRequest("a", "x", 0, steps=2), ImageRequest("b", "y", 0, steps=2)
    )
    assert isinstance(failure, EngineFailure)
    assert says in str(failure) and "scripted log" in str(failure)
    assert later is failure
    assert process.closed
