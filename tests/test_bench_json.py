"""Runs written as ``vllm bench serve --save-result`` JSON, from hand-made runs with known times."""

from __future__ import annotations

import json
import re
import statistics

import pytest

from pytest_vibeserve.bench_json import bench_result, write_bench_result
from pytest_vibeserve.contract import Request
from pytest_vibeserve.metrics import Slo
from pytest_vibeserve.reference import ReferenceOutput
from pytest_vibeserve.runner import RequestRecord, RunResult
from pytest_vibeserve.workload import Workload

VLLM_FIELDS = (
    "date",
    "backend",
    "model_id",
    "num_prompts",
    "request_rate",
    "burstiness",
    "max_concurrency",
    "duration",
    "completed",
    "failed",
    "total_input_tokens",
    "total_output_tokens",
    "request_throughput",
    "request_goodput",
    "output_throughput",
    "total_token_throughput",
    "input_lens",
    "output_lens",
    "ttfts",
    "itls",
    "generated_texts",
    "errors",
)
SUMMARIES = tuple(
    f"{stat}_{metric}_ms"
    for metric in ("ttft", "tpot", "itl", "e2el")
    for stat in ("mean", "median", "std", "p50", "p90", "p99")
)
PROMPT_LENS = {"r0": 4, "r1": 6, "r2": 5}


def workload(stats: dict | None = None, concurrency: int | None = 3) -> Workload:
    requests = tuple(Request(rid, (1,) * n, 3) for rid, n in PROMPT_LENS.items())
    expected = {r.request_id: ReferenceOutput([0, 0, 0], [1.0] * 3, [{}] * 3) for r in requests}
    stats = {"request_rate": "2", "burstiness": 1.0} if stats is None else stats
    return Workload("serving-poisson-2-seed0", requests, expected, concurrency, stats=stats)


def run() -> RunResult:
    """r0 and r1 finish; r2 gets one token and never finishes. Run from 10 s to 12 s.

    r0: TTFT 0.1 s, ITLs 0.1, 0.2 s (TPOT 0.15 s), E2E 0.4 s
    r1: TTFT 0.2 s, ITL 0.1 s (TPOT 0.1 s), E2E 0.3 s
    r2: TTFT 0.5 s, no ITL, E2E to the run's end 1.0 s
    """
    records = [  # out of the workload's order: the JSON must follow the workload's
        RequestRecord("r2", 5, 11.0, [7], [11.5], finished_at=None),
        RequestRecord("r1", 6, 10.5, [4, 5], [10.7, 10.8], finished_at=10.8),
        RequestRecord("r0", 4, 10.0, [1, 2, 3], [10.1, 10.2, 10.4], finished_at=10.4),
    ]
    return RunResult("cand", {r.request_id: r for r in records}, 10.0, 12.0, 0, {})


def result(slo: Slo | None = None, w: Workload | None = None) -> dict:
    w = workload() if w is None else w
    return bench_result(run(), w, backend="vibeserve", model_id="/models/tiny", slo=slo)


def test_every_vllm_field_is_there():
    out = result()
    missing = [k for k in VLLM_FIELDS + SUMMARIES if k not in out]
    assert not missing


def test_run_totals():
    out = result()
    assert out["backend"] == "vibeserve"
    assert out["model_id"] == "/models/tiny"
    assert re.fullmatch(r"\d{8}-\d{6}", out["date"])
    assert out["num_prompts"] == 3
    assert out["max_concurrency"] == 3
    assert out["burstiness"] == 1.0
    assert out["duration"] == pytest.approx(2.0)
    assert out["completed"] == 2
    assert out["failed"] == 1
    assert out["total_input_tokens"] == 15
    assert out["total_output_tokens"] == 6
    assert out["request_throughput"] == pytest.approx(2 / 2.0)  # completed requests only
    assert out["output_throughput"] == pytest.approx(6 / 2.0)
    assert out["total_token_throughput"] == pytest.approx((15 + 6) / 2.0)


def test_per_request_lists_follow_the_workload_in_seconds():
    out = result()
    assert out["input_lens"] == [4, 6, 5]
    assert out["output_lens"] == [3, 2, 1]
    assert out["ttfts"] == pytest.approx([0.1, 0.2, 0.5])
    assert [pytest.approx(gaps) for gaps in out["itls"]] == [[0.1, 0.2], [0.1], []]
    assert out["generated_texts"] == ["", "", ""]


def test_an_unfinished_request_is_failed_with_an_error():
    errors = result()["errors"]
    assert errors[:2] == ["", ""]
    assert isinstance(errors[2], str)
    assert errors[2]


def test_summaries_are_in_ms():
    out = result()
    ttft = [100.0, 200.0, 500.0]
    assert out["mean_ttft_ms"] == pytest.approx(statistics.fmean(ttft))
    assert out["median_ttft_ms"] == pytest.approx(200.0)
    assert out["p50_ttft_ms"] == pytest.approx(200.0)
    assert out["std_ttft_ms"] == pytest.approx(statistics.pstdev(ttft))
    assert out["p99_ttft_ms"] == pytest.approx(200 + 300 * 0.98)  # linear, as numpy's default
    # TPOT of requests with two tokens or more
    assert out["mean_tpot_ms"] == pytest.approx(125.0)
    assert out["median_tpot_ms"] == pytest.approx(125.0)
    itl = [100.0, 200.0, 100.0]
    assert out["mean_itl_ms"] == pytest.approx(statistics.fmean(itl))
    assert out["median_itl_ms"] == pytest.approx(100.0)
    assert out["p90_itl_ms"] == pytest.approx(180.0)
    e2el = [400.0, 300.0, 1000.0]
    assert out["mean_e2el_ms"] == pytest.approx(statistics.fmean(e2el))
    assert out["median_e2el_ms"] == pytest.approx(400.0)


def test_request_goodput_is_none_without_an_slo():
    out = result()
    assert out["request_goodput"] is None


def test_request_goodput_with_an_slo():
    # only r0 has TTFT <= 150 ms and finished
    out = result(Slo(ttft_ms=150))
    assert out["request_goodput"] == pytest.approx(1 / 2.0)
    assert out["goodput"] == {"ttft_ms": 150}


def test_request_rate_is_a_number_or_inf():
    assert result()["request_rate"] == 2.0
    assert isinstance(result()["request_rate"], float)
    w = workload({"request_rate": "0.5", "burstiness": 0.5})
    out = result(w=w)
    assert out["request_rate"] == 0.5
    assert out["burstiness"] == 0.5
    assert result(w=workload({"request_rate": "inf"}, concurrency=None))["request_rate"] == "inf"
    assert result(w=workload({}, concurrency=None))["max_concurrency"] is None


def test_the_result_is_strict_json():
    for slo in (None, Slo(ttft_ms=150, tpot_ms=50)):
        text = json.dumps(result(slo), allow_nan=False)
        assert json.loads(text)["num_prompts"] == 3


def test_a_run_with_no_tokens_and_no_time_is_still_strict_json():
    records = {rid: RequestRecord(rid, n, 10.0) for rid, n in PROMPT_LENS.items()}
    empty = RunResult("cand", records, 10.0, 10.0, 0, {})
    out = bench_result(empty, workload(), backend="b", model_id="m", slo=Slo(ttft_ms=1))
    json.dumps(out, allow_nan=False)
    assert out["completed"] == 0
    assert out["failed"] == 3
    assert out["request_throughput"] == 0.0
    assert out["request_goodput"] == 0.0
    assert out["ttfts"] == [0.0, 0.0, 0.0]
    assert out["mean_ttft_ms"] == 0.0


def test_write_bench_result_writes_the_json_and_no_partial(tmp_path):
    path = tmp_path / "bench" / "standard-serving-poisson-0.5-seed0-candidate-1.json"
    out = result(Slo(ttft_ms=150))
    write_bench_result(out, path)
    assert json.loads(path.read_text()) == out
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    write_bench_result({**out, "backend": "again"}, path)  # replaces an older result
    assert json.loads(path.read_text())["backend"] == "again"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_a_result_that_cannot_be_written_leaves_the_old_file_whole(tmp_path):
    path = tmp_path / "run.json"
    write_bench_result({"completed": 1}, path)
    with pytest.raises(TypeError):
        write_bench_result({"completed": object()}, path)
    assert json.loads(path.read_text()) == {"completed": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
