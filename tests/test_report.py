"""The performance tables printed for people: ``format_table`` of one record and
``format_summary`` across a scenario's records. Text and audio runs get the token columns; image
runs, whose token metrics mean nothing, get their image latencies and stages instead."""

from __future__ import annotations

import math
from typing import Any

from pytest_vibeserve.compare import Comparison
from pytest_vibeserve.metrics import RunMetrics, Slo
from pytest_vibeserve.report import format_summary, format_table, median_metrics, table_rows
from pytest_vibeserve.roofline import MachineLimits, Roofline, roofline_for
from pytest_vibeserve.session import BASELINE, CANDIDATE, PerformanceRecord

NAN = math.nan
LIMITS = MachineLimits("cpu", 2, read_bandwidth_gbs=10.0, matmul_gflops=100.0)
TEXT_ROOFLINE = roofline_for(LIMITS, 100 * 2**20)
STAGES = {"encode": 2.5, "denoise": 431.5, "decode": 40.0}  # as the starter reports them
TOKEN_HEADERS = ("tok/s", "TTFT", "TPOT", "tok/fwd", "prefix hit")


def metrics(**values: Any) -> RunMetrics:
    """A text run's metrics, with ``values`` in place of some."""
    text = {
        "requests": 8,
        "output_tokens": 512,
        "wall_s": 4.0,
        "output_tok_per_s": 128.0,
        "request_per_s": 2.0,
        "ttft_p50_ms": 40.0,
        "ttft_p90_ms": 60.0,
        "ttft_p99_ms": 80.0,
        "tpot_p50_ms": 7.5,
        "tpot_p90_ms": 9.0,
        "tpot_p99_ms": 12.0,
        "itl_p50_ms": 7.0,
        "itl_p90_ms": 9.0,
        "itl_p99_ms": 12.0,
        "e2e_p50_ms": 500.0,
        "e2e_p90_ms": 700.0,
        "e2e_p99_ms": 900.0,
        "peak_rss_mib": 300.0,
        "tokens_per_forward": 1.0,
    }
    return RunMetrics(**{**text, **values})


def image_metrics(p50: float, p90: float, mean: float, stages: dict[str, float], **values: Any):
    """An image run's metrics as ``compute_metrics`` gives them: no tokens, no TTFT or TPOT."""
    return metrics(
        output_tokens=0,
        output_tok_per_s=0.0,
        **dict.fromkeys(("ttft_p50_ms", "ttft_p90_ms", "ttft_p99_ms"), NAN),
        **dict.fromkeys(("tpot_p50_ms", "tpot_p90_ms", "tpot_p99_ms"), NAN),
        **dict.fromkeys(("itl_p50_ms", "itl_p90_ms", "itl_p99_ms"), NAN),
        e2e_p50_ms=p50 * 1000,
        e2e_p90_ms=p90 * 1000,
        e2e_p99_ms=p90 * 1000,
        peak_rss_mib=900.0,
        tokens_per_forward=0.0,
        image_latency_s_p50=p50,
        image_latency_s_p90=p90,
        image_latency_s_mean=mean,
        image_stages_ms=stages,
        **values,
    )


def record(
    candidate: list[RunMetrics],
    baseline: list[RunMetrics],
    *,
    metric: str = "output_tok_per_s",
    unit: str = "tok/s",
    higher_is_better: bool = True,
    roofline: Roofline | None = None,
    label: str = "load",
    headline: bool = True,
    peers: dict[str, list[RunMetrics]] | None = None,
    slo: Slo | None = None,
) -> PerformanceRecord:
    c, b = candidate[0].get(metric), baseline[0].get(metric)
    comparison = Comparison(
        metric,
        unit,
        higher_is_better,
        candidate=c,
        baseline=b,
        ratio=c / b if higher_is_better else b / c,
        noise=0.02,
        repeats=len(candidate),
        candidate_runs=candidate,
        baseline_runs=baseline,
        peers=peers or {},
    )
    engines = {CANDIDATE: "engines/candidate", BASELINE: "engines/baseline"}
    return PerformanceRecord(
        "test_perf.py::test_speed",
        label,
        comparison,
        roofline,
        engines,
        slo=slo,
        label=label,
        headline=headline,
    )


def text_record(**kwargs: Any) -> PerformanceRecord:
    return record(
        [metrics(goodput_req_per_s=1.5, prefix_hit_fraction=0.25)] * 2,
        [metrics(output_tok_per_s=64.0, ttft_p50_ms=90.0)] * 2,
        roofline=TEXT_ROOFLINE,
        slo=Slo(ttft_ms=200.0),
        **kwargs,
    )


def image_record(**kwargs: Any) -> PerformanceRecord:
    return record(
        [image_metrics(0.48, 0.52, 0.49, STAGES), image_metrics(0.5, 0.54, 0.51, STAGES)],
        [image_metrics(1.5, 1.6, 1.55, {"denoise": 1400.0, "decode": 90.0})] * 2,
        metric="image_latency_s_p50",
        unit="s",
        higher_is_better=False,
        **kwargs,
    )


# -- text and audio runs: the token table, as it always was ----------------------------------


def test_a_text_record_prints_the_token_table() -> None:
    assert format_table(text_record()) == [
        "workload load: headline output_tok_per_s (tok/s, higher is better): candidate 128 vs "
        "baseline 64 = 2.000x ± 2.0% over 2 alternating repeats",
        "engine               tok/s TTFT p50 ms TTFT p99 ms TPOT p50 ms e2e p50 ms e2e p99 ms "
        "peak MiB roofline % tok/fwd prefix hit goodput r/s",
        "candidate            128.0        40.0        80.0        7.50        500        900  "
        "    300        134    1.00        25%        1.50",
        "baseline              64.0        90.0        80.0        7.50        500        900  "
        "    300         67    1.00          -           -",
        "roofline: 100 MiB of weights / 10.0 GB/s = 10.49 ms/token (95 tok/s at batch 1); peak "
        "matmul 100 GFLOP/s; 2 thread(s)",
        "goodput SLOs (ms): ttft:200",
    ]


def test_an_audio_record_prints_the_token_table_and_its_chunk_latencies() -> None:
    audio = record(
        [
            metrics(
                chunk_latency_ms_p50=120.0,
                chunk_latency_ms_p90=150.0,
                chunk_latency_ms_p99=170.0,
                real_time_factor=1.05,
                realtime_streams=3.5,
            )
        ],
        [
            metrics(
                chunk_latency_ms_p50=240.0,
                chunk_latency_ms_p90=300.0,
                chunk_latency_ms_p99=340.0,
                real_time_factor=1.2,
                realtime_streams=1.75,
            )
        ],
        metric="chunk_latency_ms_p50",
        unit="ms",
        higher_is_better=False,
    )
    assert format_table(audio) == [
        "workload load: headline chunk_latency_ms_p50 (ms, lower is better): candidate 120 vs "
        "baseline 240 = 2.000x ± 2.0% over 1 alternating repeats",
        "engine               tok/s TTFT p50 ms TTFT p99 ms TPOT p50 ms e2e p50 ms e2e p99 ms "
        "peak MiB roofline % tok/fwd prefix hit goodput r/s",
        "candidate            128.0        40.0        80.0        7.50        500        900  "
        "    300          -    1.00          -           -",
        "baseline             128.0        40.0        80.0        7.50        500        900  "
        "    300          -    1.00          -           -",
        "chunk latency: candidate p50 120 / p90 150 / p99 170 ms, real-time factor 1.05, 3.50 "
        "real-time streams; baseline p50 240 / p90 300 / p99 340 ms, real-time factor 1.20, "
        "1.75 real-time streams",
    ]


def test_a_text_summary_prints_tok_s_by_record_and_the_headlines_latencies() -> None:
    batch_1 = record(
        [metrics(output_tok_per_s=20.0)],
        [metrics(output_tok_per_s=10.0)],
        roofline=TEXT_ROOFLINE,
        label="batch-1",
        headline=False,
    )
    assert format_summary([text_record(), batch_1]) == [
        "summary (medians; latencies and goodput under load)",
        "engine                 load tok/s  batch-1 tok/s    TTFT p50 ms    TTFT p99 ms    TPOT "
        "p50 ms    TPOT p99 ms    goodput r/s     roofline %",
        "candidate                   128.0           20.0           40.0           80.0         "
        "   7.5           12.0           1.50             21",
        "baseline                     64.0           10.0           90.0           80.0         "
        "   7.5           12.0              -             10",
    ]


# -- image runs: image latencies and stages instead of tokens ---------------------------------


def test_an_image_record_prints_image_latencies_and_stages_instead_of_tokens() -> None:
    lines = format_table(image_record())
    assert lines[0].startswith("workload load: headline image_latency_s_p50 (s, lower is better)")
    header, candidate, baseline = lines[1:4]
    assert header == (
        "engine             image p50 s image p90 s image mean s  encode ms  denoise ms  decode ms"
        " peak MiB roofline %"
    )
    assert not any(token in header for token in TOKEN_HEADERS)
    # medians of the two runs; a stage the baseline does not report is "-"
    assert candidate.split() == [
        "candidate", "0.490", "0.530", "0.500", "2.5", "431.5", "40.0", "900", "-"
    ]  # fmt: skip
    assert baseline.split() == [
        "baseline", "1.500", "1.600", "1.550", "-", "1400.0", "90.0", "900", "-"
    ]  # fmt: skip
    assert len(lines) == 4  # no roofline, SLO or audio lines
    assert all(len(line) == len(header) for line in (candidate, baseline))


def test_an_image_record_with_its_ceiling_shows_the_roofline_and_goodput_when_measured() -> None:
    ceiling = roofline_for(
        LIMITS, 100 * 2**20, minimal_flops={"denoise": 10**10}, reference_flops={"denoise": 10**11}
    )  # 0.1 s an image at 100 GFLOP/s
    images = record(
        [image_metrics(0.5, 0.6, 0.55, STAGES, goodput_req_per_s=1.25)],
        [image_metrics(2.0, 2.2, 2.1, STAGES)],
        metric="image_latency_s_p50",
        unit="s",
        higher_is_better=False,
        roofline=ceiling,
        slo=Slo(e2el_ms=1000.0),
    )
    lines = format_table(images)
    assert lines[1].endswith("decode ms peak MiB roofline % goodput r/s")
    assert lines[2].split()[-3:] == ["900", "20", "1.25"]  # 0.1 s ceiling / 0.5 s = 20%
    assert lines[3].split()[-3:] == ["900", "5", "-"]
    assert "image latency candidate: p50 0.500 s, p90 0.600 s = 20.0% of the fp32 ceiling" in (
        "\n".join(lines)
    )
    assert lines[-1] == "goodput SLOs (ms): e2el:1000"


def test_a_bf16_image_engine_is_measured_against_the_bf16_ceiling() -> None:
    """Each engine against the ceiling of the precision it computes in (its weight bits): a
    bf16 engine beside an fp32 baseline, on a machine whose bf16 matmul peak is 4x fp32's."""
    limits = MachineLimits("cpu", 2, 10.0, 100.0, 400.0)
    ceiling = roofline_for(limits, 100 * 2**20, minimal_flops={"denoise": 10**10})
    images = record(
        [image_metrics(0.5, 0.6, 0.55, STAGES, weight_bits=16.0)],
        [image_metrics(2.0, 2.2, 2.1, STAGES, weight_bits=32.0)],
        metric="image_latency_s_p50",
        unit="s",
        higher_is_better=False,
        roofline=ceiling,
    )
    lines = format_table(images)
    assert lines[2].split()[-1] == "5"  # 0.025 s bf16 ceiling / 0.5 s
    assert lines[3].split()[-1] == "5"  # 0.1 s fp32 ceiling / 2.0 s
    text = "\n".join(lines)
    assert "image latency candidate: p50 0.500 s, p90 0.600 s = 5.0% of the bf16 ceiling" in text
    assert "image latency baseline: p50 2.000 s, p90 2.200 s = 5.0% of the fp32 ceiling" in text


def test_an_image_summary_prints_image_latencies_by_record_and_the_headlines_stages() -> None:
    single = record(
        [image_metrics(0.25, 0.3, 0.26, {"denoise": 200.0})],
        [image_metrics(1.0, 1.1, 1.05, {"denoise": 900.0})],
        metric="image_latency_s_p50",
        unit="s",
        higher_is_better=False,
        label="one prompt",
        headline=False,
    )
    lines = format_summary([image_record(), single])
    assert lines[0] == "summary (medians; image latencies under load)"
    names = ["load p50 s", "one prompt p50 s", "p90 s", "mean s", "encode ms", "denoise ms"]
    names += ["decode ms", "roofline %"]
    assert lines[1] == "engine".ljust(18) + "".join(name.rjust(18) for name in names)
    assert not any(token in lines[1] for token in TOKEN_HEADERS)
    assert lines[2].split() == [
        "candidate", "0.490", "0.250", "0.530", "0.500", "2.5", "431.5", "40.0", "-"
    ]  # fmt: skip
    assert lines[3].split() == [
        "baseline", "1.500", "1.000", "1.600", "1.550", "-", "1400.0", "90.0", "-"
    ]  # fmt: skip


def test_stages_keep_the_order_the_engine_reports_them_in() -> None:
    names = [f"stage{i}" for i in (7, 3, 11, 0, 5, 9, 2, 8, 1, 10, 4, 6)]
    later = {**{n: 1.0 for n in names[6:]}, "late": 2.0}
    runs = [
        image_metrics(1.0, 1.0, 1.0, {n: 1.0 for n in names[:6]}),
        image_metrics(1.0, 1.0, 1.0, later),
    ]
    assert list(median_metrics(runs)["image_stages_ms"]) == [*names, "late"]
    [row, _] = table_rows(record(runs, runs, metric="image_latency_s_p50", unit="s"))
    assert list(row["image_stages_ms"]) == [*names, "late"]
