"""Metrics, same-run A/B comparison and gates, on synthetic runs with known timestamps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_vibeserve.compare import (
    Comparison,
    NoiseGate,
    RatioGate,
    compare_alternating,
    measure_alone,
    oriented_ratio,
)
from pytest_vibeserve.metrics import compute_metrics, percentile
from pytest_vibeserve.roofline import MachineLimits, roofline_for
from pytest_vibeserve.runner import RequestRecord, RunResult


def fake_run(seconds_per_token: float, tokens: int = 10, requests: int = 2) -> RunResult:
    """Sequential requests, a token every ``seconds_per_token``, the first after two of them."""
    records = {}
    clock = 0.0
    for i in range(requests):
        sent = clock
        times = [sent + seconds_per_token * (k + 2) for k in range(tokens)]
        records[f"r{i}"] = RequestRecord(
            f"r{i}", 5, sent, list(range(tokens)), times, finished_at=times[-1]
        )
        clock = times[-1]
    return RunResult("fake", records, 0.0, clock, 100 << 20, {"model_forward_calls": 1})


def test_metrics_from_known_timestamps():
    metrics = compute_metrics(fake_run(0.01, tokens=10, requests=2))
    assert metrics.output_tokens == 20
    assert metrics.ttft_p50_ms == pytest.approx(20.0)
    assert metrics.tpot_p50_ms == pytest.approx(10.0)
    assert metrics.itl_p50_ms == pytest.approx(10.0)
    assert metrics.e2e_p50_ms == pytest.approx(110.0)
    assert metrics.output_tok_per_s == pytest.approx(20 / 0.22)
    assert metrics.peak_rss_mib == pytest.approx(100.0)


def test_tokens_in_one_batch_share_an_arrival_time():
    run = fake_run(0.01, tokens=4, requests=1)
    record = run.records["r0"]
    record.token_times = [0.05, 0.05, 0.05, 0.09]
    metrics = compute_metrics(run)
    assert metrics.itl_p50_ms == pytest.approx(0.0)
    assert metrics.ttft_p50_ms == pytest.approx(50.0)


@given(st.lists(st.floats(0, 1e6), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_is_within_range(values, q):
    result = percentile(values, q)
    assert min(values) <= result <= max(values)


def test_percentile_of_nothing_is_nan():
    assert math.isnan(percentile([], 50))


def test_ratio_is_oriented_so_bigger_is_better():
    assert oriented_ratio(200.0, 100.0, higher_is_better=True) == 2.0
    assert oriented_ratio(50.0, 100.0, higher_is_better=False) == 2.0
    with pytest.raises(ValueError):
        oriented_ratio(0.0, 1.0, higher_is_better=True)


def test_alternating_comparison_orders_runs_abba_and_measures_noise():
    order = []
    speeds = iter([0.005, 0.010, 0.010, 0.004, 0.005, 0.010])

    def runner(name):
        def run():
            order.append(name)
            return fake_run(next(speeds))

        return run

    comparison = compare_alternating(
        runner("cand"),
        runner("base"),
        metric="output_tok_per_s",
        unit="tok/s",
        higher_is_better=True,
        repeats=3,
    )
    assert order == ["cand", "base", "base", "cand", "cand", "base"]
    # candidate took 0.005, 0.004, 0.005 s/token against 0.010 each time
    assert comparison.ratio == pytest.approx(2.0)
    assert comparison.noise == pytest.approx((2.5 - 2.0) / 2 / 2.0)
    assert len(comparison.candidate_runs) == len(comparison.baseline_runs) == 3


def test_measured_alone_has_no_ratio_and_its_own_spread():
    speeds = iter([0.010, 0.008, 0.012])
    runs = []

    def run():
        runs.append(1)
        return fake_run(next(speeds))

    alone = measure_alone(
        run, metric="output_tok_per_s", unit="tok/s", higher_is_better=True, repeats=3
    )
    assert len(runs) == 3 and alone.baseline is None and alone.ratio is None
    assert alone.baseline_runs == [] and len(alone.candidate_runs) == 3
    values = sorted(m.output_tok_per_s for m in alone.candidate_runs)
    assert alone.candidate == pytest.approx(values[1])
    assert alone.noise == pytest.approx((values[2] - values[0]) / 2 / values[1])
    once = measure_alone(
        lambda: fake_run(0.01),
        metric="output_tok_per_s",
        unit="tok/s",
        higher_is_better=True,
        repeats=1,
    )
    assert once.noise == 0.0 and once.repeats == 1
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        measure_alone(
            run, metric="output_tok_per_s", unit="tok/s", higher_is_better=True, repeats=0
        )
    # a ratio gate has nothing to judge without a baseline, and says so instead of passing
    with pytest.raises(ValueError, match="needs a baseline"):
        RatioGate(0.7).fails(alone)


def test_latency_metric_comparison_is_direction_aware():
    speeds = iter([0.02, 0.01, 0.01, 0.02])
    comparison = compare_alternating(
        lambda: fake_run(next(speeds)),
        lambda: fake_run(next(speeds)),
        metric="e2e_p50_ms",
        unit="ms",
        higher_is_better=False,
        repeats=2,
    )
    # the candidate is twice as slow: for a lower-is-better metric that is a ratio of 0.5
    assert comparison.ratio == pytest.approx(0.5)


def comparison(ratio: float, noise: float, higher_is_better: bool = True) -> Comparison:
    return Comparison(
        "output_tok_per_s", "tok/s", higher_is_better, 10 * ratio, 10.0, ratio, noise, 3, [], []
    )


def test_ratio_gate_fails_below_the_noise_band_with_the_numbers():
    message = RatioGate(0.9).fails(comparison(0.5, 0.05))
    assert message is not None
    assert "0.500" in message and "min_ratio=0.9" in message and "higher is better" in message


def test_ratio_gate_passes_inside_the_noise_band():
    assert RatioGate(0.9).fails(comparison(0.88, 0.05)) is None
    assert RatioGate(0.9).fails(comparison(1.5, 0.0)) is None


def test_noise_gate_fails_on_a_noisy_measurement():
    assert "max_noise=10.0%" in NoiseGate(0.1).fails(comparison(1.0, 0.3))
    assert NoiseGate(0.1).fails(comparison(1.0, 0.05)) is None


def test_roofline_floor_and_efficiency():
    limits = MachineLimits("cpu", 2, read_bandwidth_gbs=20.0, matmul_gflops=100.0)
    roof = roofline_for(limits, model_bytes=500_000_000)
    assert roof.decode_floor_ms == pytest.approx(25.0)
    assert roof.roofline_tok_per_s == pytest.approx(40.0)
    assert roof.efficiency_pct(20.0) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        roofline_for(limits, 0)
