"""The image side of the engine contract: ImageRequest validation and wire form, image_event and
its decoders, image_problem's verdict on malformed answers (also through a real worker), the image
metrics a run yields, their medians, and the FLOP ceiling they are measured against."""

from __future__ import annotations

import base64
import json
import math
import textwrap

import numpy as np
import pytest

from pytest_vibeserve.contract import (
    EngineSpec,
    Event,
    ImageRequest,
    decode_image,
    decode_probe,
    image_event,
    image_problem,
)
from pytest_vibeserve.metrics import compute_metrics
from pytest_vibeserve.report import median_metrics
from pytest_vibeserve.roofline import MachineLimits, roofline_for
from pytest_vibeserve.runner import EngineFailure, EngineProcess, Limits, RequestRecord, RunResult

REQUEST = ImageRequest("img", "a red fox", seed=3, steps=8, guidance=5.0, probe_step=2)
FAST = Limits(load_timeout_s=60, step_timeout_s=10, memory_bytes=4 << 30)


def pixels(height: int = 8, width: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def probe() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((16, 4, 4)).astype(np.float32)


def good_event(request: ImageRequest = REQUEST) -> Event:
    calls = request.steps - 1
    return image_event(
        request.request_id,
        pixels(),
        probe_latent=probe(),
        trajectory=[[0.1 * i] * 16 for i in range(calls)],
        model_calls=calls,
        uncond_calls=calls,
        timings_ms={"encode": 1.5, "denoise": 20, "decode": 3.25},
    )


# --------------------------------------------------------------------------------------------------
# ImageRequest


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"steps": 1, "probe_step": 0}, "steps=1; a schedule needs at least 2 points"),
        ({"steps": 0, "probe_step": 0}, "steps=0"),
        ({"probe_step": 7}, "probe_step=7 is not one of the 7 Euler steps (0..6)"),
        ({"probe_step": -1}, "probe_step=-1 is not one of the 7 Euler steps"),
        ({"guidance": -0.5}, "guidance=-0.5 must be >= 0"),
        ({"guidance": float("nan")}, "guidance=nan must be >= 0"),
    ],
)
def test_an_invalid_image_request_names_its_field(changes, named):
    fields = {**REQUEST.to_dict(), **changes}
    with pytest.raises(ValueError, match="image request 'img'") as error:
        ImageRequest(**fields)
    assert named in str(error.value)


def test_edge_values_are_valid():
    one_call = ImageRequest("a", "", seed=0, steps=2, guidance=0.0, probe_step=0)
    assert one_call.model_calls == 1
    assert ImageRequest("b", "x", seed=1, steps=8, probe_step=6).model_calls == 7


def test_image_request_round_trips_through_its_dict_and_json():
    data = REQUEST.to_dict()
    assert data == {
        "request_id": "img",
        "prompt": "a red fox",
        "seed": 3,
        "steps": 8,
        "guidance": 5.0,
        "probe_step": 2,
    }
    assert ImageRequest.from_dict(json.loads(json.dumps(data))) == REQUEST
    # the defaults fill what the wire leaves out; the types are coerced
    short = ImageRequest.from_dict({"request_id": 7, "prompt": "p", "seed": "4"})
    assert short == ImageRequest("7", "p", 4, steps=20, guidance=5.0, probe_step=0)
    with pytest.raises(ValueError, match="probe_step=9"):
        ImageRequest.from_dict({**data, "probe_step": 9})


# --------------------------------------------------------------------------------------------------
# image_event and its decoders


def test_image_event_round_trips_pixels_probe_and_trajectory():
    event = good_event()
    assert event.request_id == "img" and event.finished and event.token_ids == []
    wire = Event.from_dict(json.loads(json.dumps(event.to_dict())))  # what the worker sends
    payload = wire.payload
    assert payload["type"] == "image"
    assert payload["shape"] == [8, 6, 3] and payload["probe_shape"] == [16, 4, 4]
    image, latent = decode_image(payload), decode_probe(payload)
    assert image.dtype == np.uint8 and np.array_equal(image, pixels())
    assert latent.dtype == np.float32 and np.array_equal(latent, probe())
    assert payload["trajectory"] == [[0.1 * i] * 16 for i in range(7)]
    assert payload["model_calls"] == payload["uncond_calls"] == 7
    assert payload["timings_ms"] == {"encode": 1.5, "denoise": 20.0, "decode": 3.25}
    assert image_problem(REQUEST, wire) is None


def test_image_event_takes_a_float64_probe_and_no_timings():
    event = image_event(
        "x",
        pixels(4, 4),
        probe_latent=np.ones((2, 2), dtype=np.float64),
        trajectory=[],
        model_calls=1,
        uncond_calls=0,
    )
    assert decode_probe(event.payload).dtype == np.float32
    assert event.payload["timings_ms"] == {}


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4, 3), dtype=np.float32), np.zeros((4, 4), dtype=np.uint8)],
    ids=["float pixels", "two dimensions"],
)
def test_image_event_refuses_what_is_not_hxwxc_uint8(bad):
    with pytest.raises(ValueError, match="pixels must be HxWxC uint8"):
        image_event("x", bad, probe_latent=probe(), trajectory=[], model_calls=1, uncond_calls=1)


def broken(change) -> Event:
    """A good event's payload, changed by ``change(payload)``."""
    event = good_event()
    payload = json.loads(json.dumps(event.payload))
    change(payload)
    return Event(event.request_id, [], finished=True, payload=payload)


def _set(key, value):
    return lambda payload: payload.__setitem__(key, value)


@pytest.mark.parametrize(
    ("event", "named"),
    [
        (
            Event("img", [], finished=False, payload=good_event().payload),
            "answered by one finished event whose payload comes from contract.image_event "
            "(type 'image'), got finished=False, payload type 'image'",
        ),
        (
            Event("img", [5, 6], finished=True),
            "got finished=True, payload type None",
        ),
        (broken(_set("type", "transcript")), "payload type 'transcript'"),
        (broken(_set("shape", [9, 6, 3])), "unreadable image payload (144 pixel bytes do not fill"),
        (broken(_set("shape", [8, 6])), "pixel bytes do not fill shape (8, 6)"),
        (
            broken(_set("probe_latent", base64.b64encode(b"\0" * 12).decode())),
            "unreadable image payload (12 probe bytes do not fill float32 shape (16, 4, 4))",
        ),
        (broken(lambda p: p.pop("pixels")), "unreadable image payload ('pixels')"),
        (broken(_set("pixels", "not base64!")), "unreadable image payload"),
        (broken(_set("trajectory", {"0": [0.0]})), "trajectory must be a list of per-step lists"),
        (broken(_set("trajectory", [0.1, 0.2])), "trajectory must be a list of per-step lists"),
        (broken(_set("model_calls", "7")), "payload['model_calls'] must be an int, got '7'"),
        (broken(_set("model_calls", 7.0)), "payload['model_calls'] must be an int, got 7.0"),
        (broken(lambda p: p.pop("uncond_calls")), "payload['uncond_calls'] must be an int"),
    ],
    ids=[
        "unfinished",
        "no payload",
        "wrong payload type",
        "pixels short of the shape",
        "two-dimensional shape",
        "probe bytes short",
        "no pixels",
        "pixels not base64",
        "trajectory a dict",
        "trajectory of floats",
        "model_calls a string",
        "model_calls a float",
        "no uncond_calls",
    ],
)
def test_image_problem_names_each_malformed_answer(event, named):
    problem = image_problem(REQUEST, event)
    assert problem is not None
    assert problem.startswith("image 'img': ")
    assert named in problem


# --------------------------------------------------------------------------------------------------
# Metrics


def image_record(rid: str, sent: float, latency: float | None, timings: dict) -> RequestRecord:
    record = RequestRecord(rid, 0, sent)
    if latency is not None:
        payload = dict(good_event().payload, timings_ms=timings)
        record.payloads.append(payload)
        record.finished_at = sent + latency
    return record


def image_run(counters: dict, before: dict, latencies=(1.0, 2.0, 4.0), stages=None) -> RunResult:
    stages = stages or [
        {"encode": 1.0, "denoise": 900.0, "decode": 100.0},
        {"encode": 3.0, "denoise": 1900.0, "decode": 100.0},
        {"encode": 2.0, "denoise": 3800.0, "decode": 200.0},
    ]
    records = {
        f"r{i}": image_record(f"r{i}", 10.0 + i, latency, timing)
        for i, (latency, timing) in enumerate(zip(latencies, stages, strict=True))
    }
    return RunResult("candidate", records, 10.0, 20.0, 1 << 30, counters, None, before)


STARTER_BEFORE = {
    "model_forward_calls": 14,
    "images": 2,
    "body_token_rows": 14 * 304,
    "logit_rows": 14 * 304,
    "input_path_rows": 28,
    "vae_time_taps": 6,
    "modulation_loops": 140,
}


def test_image_metrics_read_latencies_stages_and_counter_ratios():
    calls = 21  # three images of 8 steps in this run, after 14 calls (2 images) of warm-up
    after = {
        "model_forward_calls": 14 + calls,
        "images": 2 + 3,
        "body_token_rows": (14 + calls) * 304,
        "logit_rows": (14 + calls) * 304,
        "input_path_rows": 28 + 2 * calls,
        "vae_time_taps": 6 + 9,
        "modulation_loops": 140 + 10 * calls,
        "weight_bits": 32,
    }
    metrics = compute_metrics(image_run(after, STARTER_BEFORE))
    assert metrics.image_latency_s_p50 == pytest.approx(2.0)
    assert metrics.image_latency_s_p90 == pytest.approx(3.6)  # linear: 2 + 0.8 * (4 - 2)
    assert metrics.image_latency_s_mean == pytest.approx(7.0 / 3)
    assert metrics.image_stages_ms == pytest.approx(
        {"encode": 2.0, "denoise": 2200.0, "decode": 400.0 / 3}
    )
    assert metrics.body_tokens_per_call == pytest.approx(304.0)
    assert metrics.logit_rows_per_call == pytest.approx(304.0)
    assert metrics.input_rows_per_call == pytest.approx(2.0)
    assert metrics.modulation_loops_per_call == pytest.approx(10.0)
    assert metrics.vae_taps_per_image == pytest.approx(3.0)
    assert metrics.weight_bits == 32.0
    assert metrics.get("image_latency_s_p50") == pytest.approx(2.0)  # a headline metric
    assert metrics.output_tokens == 0
    assert json.loads(json.dumps(metrics.to_dict()))["image_stages_ms"]["encode"] == 2.0


def test_image_metrics_are_nan_where_the_engine_reports_no_counters():
    metrics = compute_metrics(image_run({}, {}))
    assert metrics.image_latency_s_p50 == pytest.approx(2.0)
    for name in (
        "body_tokens_per_call",
        "logit_rows_per_call",
        "input_rows_per_call",
        "modulation_loops_per_call",
        "vae_taps_per_image",
        "weight_bits",
    ):
        assert math.isnan(getattr(metrics, name)), name
    # counters reported, but no model call and no image in this run: no ratio either
    idle = compute_metrics(image_run(dict(STARTER_BEFORE), dict(STARTER_BEFORE)))
    assert math.isnan(idle.body_tokens_per_call) and math.isnan(idle.vae_taps_per_image)


def test_unfinished_images_and_text_runs_have_no_image_metrics():
    run = image_run({}, {}, latencies=(1.0, None, 3.0))
    metrics = compute_metrics(run)
    assert metrics.image_latency_s_p50 == pytest.approx(2.0)  # the two that arrived
    assert metrics.image_stages_ms == {
        "encode": pytest.approx(1.5),
        "denoise": pytest.approx(2350.0),
        "decode": pytest.approx(150.0),
    }
    text = RequestRecord("t", 4, 10.0, token_ids=[1, 2], token_times=[10.5, 10.6])
    text.finished_at = 10.6
    plain = compute_metrics(RunResult("c", {"t": text}, 10.0, 11.0, 0, {"weight_bits": 32}))
    assert math.isnan(plain.image_latency_s_p50) and plain.image_stages_ms == {}
    assert math.isnan(plain.weight_bits)  # only image runs read it


def test_median_metrics_takes_each_stage_median_apart():
    first = compute_metrics(
        image_run({}, {}, latencies=(1.0,), stages=[{"encode": 1.0, "denoise": 10.0}])
    )
    second = compute_metrics(
        image_run(
            {}, {}, latencies=(3.0,), stages=[{"encode": 3.0, "denoise": 20.0, "decode": 5.0}]
        )
    )
    summary = median_metrics([first, second])
    assert summary["image_stages_ms"] == {"encode": 2.0, "denoise": 15.0, "decode": 5.0}
    assert summary["image_latency_s_p50"] == pytest.approx(2.0)
    assert summary["requests"] == 1
    third = compute_metrics(image_run({}, {}, latencies=(2.0,), stages=[{"encode": 100.0}]))
    assert median_metrics([first, second, third])["image_stages_ms"]["encode"] == 3.0


# --------------------------------------------------------------------------------------------------
# The FLOP ceiling


def test_the_image_ceiling_is_the_minimal_flops_at_peak():
    limits = MachineLimits("cpu", 2, read_bandwidth_gbs=10.0, matmul_gflops=50.0)
    minimal = {"input_path": 5 * 10**9, "body": 25 * 10**9, "head": 20 * 10**9, "vae": 0}
    reference = {"input_path": 10 * 10**9, "body": 90 * 10**9, "head": 100 * 10**9}
    roof = roofline_for(limits, 1 << 30, minimal_flops=minimal, reference_flops=reference)
    image = roof.image
    assert image.fp32_s == pytest.approx(50e9 / 50e9)
    assert math.isnan(image.bf16_s)  # bf16 matmul not measured
    assert roof.efficiency_pct({"image_latency_s_p50": 4.0}) == pytest.approx(25.0)
    assert roof.efficiency_pct({"image_latency_s_p50": 0.5}) == pytest.approx(200.0)
    data = json.loads(json.dumps(roof.to_dict()))
    assert data["image"]["minimal_gflop"] == pytest.approx(50.0)
    assert data["image"]["reference_gflop"] == pytest.approx(200.0)
    assert data["image"]["reference_gflop_by_stage"]["body"] == pytest.approx(90.0)
    assert data["image"]["ceiling_fp32_s"] == pytest.approx(1.0)
    with_bf16 = roofline_for(
        MachineLimits("cpu", 2, 10.0, 50.0, 200.0), 1 << 30, minimal_flops=minimal
    )
    assert with_bf16.image.bf16_s == pytest.approx(0.25)
    assert with_bf16.image.reference_flops == {}
    # each engine against the ceiling of the precision it computes in (its weight bits)
    assert with_bf16.image.ceiling(32.0) == ("fp32", pytest.approx(1.0))
    assert with_bf16.image.ceiling(16.0) == ("bf16", pytest.approx(0.25))
    assert with_bf16.image.ceiling(math.nan) == ("fp32", pytest.approx(1.0))  # not reported
    bf16_run = {"image_latency_s_p50": 0.5, "weight_bits": 16.0}
    assert with_bf16.efficiency_pct(bf16_run) == pytest.approx(50.0)
    assert with_bf16.efficiency_pct({**bf16_run, "weight_bits": 32.0}) == pytest.approx(200.0)
    # no bf16 peak measured: a bf16 engine is held to the fp32 ceiling, as before
    assert roof.image.ceiling(16.0) == ("fp32", pytest.approx(1.0))


def test_a_text_roofline_keeps_measuring_tokens_per_second():
    roof = roofline_for(MachineLimits("cpu", 2, 10.0, 50.0), 10**8)  # 10 ms a token at best
    assert roof.image is None and "image" not in roof.to_dict()
    assert roof.efficiency_pct(50.0) == pytest.approx(50.0)
    assert roof.efficiency_pct({"output_tok_per_s": 25.0}) == pytest.approx(25.0)


# --------------------------------------------------------------------------------------------------
# A worker that answers an image wrongly


WRONG_ENGINE = """
import numpy as np

from pytest_vibeserve.contract import Event, image_event


class Engine:
    def __init__(self, spec):
        self.queue, self.calls = [], 0

    def add_image(self, request):
        self.queue.append(request)

    def has_unfinished_requests(self):
        return bool(self.queue)

    def counters(self):
        return {{"model_forward_calls": self.calls}}

    def step(self):
        request = self.queue.pop(0)
        self.calls += request.steps - 1
        {answer}


def create_engine(spec):
    return Engine(spec)
"""
ANSWERS = {
    # a text engine's answer: tokens, no image payload
    "text event": "return [Event(request.request_id, [1, 2, 3], finished=True)]",
    # an image whose call counts are not ints
    "model_calls a string": (
        "event = image_event(request.request_id, np.zeros((4, 4, 3), np.uint8), "
        "probe_latent=np.zeros(2), trajectory=[], model_calls=1, uncond_calls=1)\n"
        "        event.payload['model_calls'] = 'seven'\n"
        "        return [event]"
    ),
}
EXPECTED_EVENTS = {
    "text event": Event("img", [1, 2, 3], finished=True),
    "model_calls a string": broken(_set("model_calls", "seven")),
}


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_a_worker_answering_an_image_wrongly_is_a_protocol_failure(answer, tmp_path):
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    source = WRONG_ENGINE.format(answer=ANSWERS[answer])
    (engine_dir / "engine.py").write_text(textwrap.dedent(source))
    expected = image_problem(REQUEST, EXPECTED_EVENTS[answer])
    assert expected is not None
    with (
        EngineProcess(engine_dir, EngineSpec(str(tmp_path)), limits=FAST) as engine,
        pytest.raises(EngineFailure) as failure,
    ):
        engine.run([REQUEST])
    assert failure.value.kind == "protocol"
    assert expected in str(failure.value)


def test_a_text_engine_sent_an_image_says_it_lacks_add_image(tmp_path):
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    source = WRONG_ENGINE.format(answer="return []").replace("def add_image", "def add_request")
    (engine_dir / "engine.py").write_text(textwrap.dedent(source))
    with (
        EngineProcess(engine_dir, EngineSpec(str(tmp_path)), limits=FAST) as engine,
        pytest.raises(EngineFailure, match=r"has no add_image\(request\) method") as failure,
    ):
        engine.run([REQUEST])
    assert failure.value.kind == "crash"


def test_the_worker_protocol_carries_a_good_image(tmp_path):
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    answer = (
        "calls = request.steps - 1\n"
        "        return [image_event(request.request_id, np.full((4, 4, 3), 7, np.uint8), "
        "probe_latent=np.zeros((2, 2)), trajectory=[[0.0]] * calls, model_calls=calls, "
        "uncond_calls=calls)]"
    )
    (engine_dir / "engine.py").write_text(textwrap.dedent(WRONG_ENGINE.format(answer=answer)))
    requests = [REQUEST, ImageRequest("two", "b", seed=1, steps=3, probe_step=1)]
    with EngineProcess(engine_dir, EngineSpec(str(tmp_path)), limits=FAST) as engine:
        result = engine.run(requests)
    assert result.forward_calls == 7 + 2
    for request in requests:
        record = result.records[request.request_id]
        assert len(record.payloads) == 1 and record.finished_at is not None
        event = Event(request.request_id, [], True, None, record.payloads[0])
        assert image_problem(request, event) is None
        assert np.array_equal(decode_image(record.payloads[0]), np.full((4, 4, 3), 7, np.uint8))
