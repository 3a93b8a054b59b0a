"""SLOs, goodput and the latency means, on hand-made runs with known timestamps; the CLI parsers."""

from __future__ import annotations

import argparse
import math

import pytest

from pytest_vibeserve.metrics import Slo, compute_metrics
from pytest_vibeserve.options import _endpoint, _slo
from pytest_vibeserve.runner import RequestRecord, RunResult


def record(
    rid: str, sent: float, times: list[float], *, finished: bool = True, prompt_len: int = 5
):
    return RequestRecord(
        rid,
        prompt_len,
        sent,
        token_ids=list(range(len(times))),
        token_times=list(times),
        finished_at=times[-1] if finished and times else (sent if finished else None),
    )


def run_of(*records: RequestRecord, wall: float = 2.0) -> RunResult:
    return RunResult("fake", {r.request_id: r for r in records}, 10.0, 10.0 + wall, 0, {})


def mixed_run(wall: float = 2.0) -> RunResult:
    """Times relative to a run that starts at 10 s.

    good:      TTFT 100 ms, TPOT 100 ms
    slow_ttft: TTFT 1000 ms, TPOT 50 ms
    slow_tpot: TTFT 100 ms, TPOT 300 ms
    one_token: TTFT 200 ms, one token (TPOT 0 by vLLM's convention)
    unfinished: TTFT 100 ms, then never finishes (its E2E runs to the end of the run)
    """
    return run_of(
        record("good", 10.0, [10.1, 10.2, 10.3], prompt_len=4),
        record("slow_ttft", 10.0, [11.0, 11.05, 11.1], prompt_len=6),
        record("slow_tpot", 10.5, [10.6, 10.9, 11.2], prompt_len=8),
        record("one_token", 11.0, [11.2], prompt_len=3),
        record("unfinished", 11.5, [11.6], finished=False, prompt_len=7),
        wall=wall,
    )


# -- goodput -------------------------------------------------------------------------------------


def test_goodput_counts_finished_requests_meeting_every_slo_per_second():
    metrics = compute_metrics(mixed_run(), Slo(ttft_ms=500, tpot_ms=150))
    # good and one_token meet both; slow_ttft misses TTFT, slow_tpot misses TPOT, unfinished
    # meets both latencies but never finished
    assert metrics.goodput_req_per_s == pytest.approx(2 / 2.0)


def test_goodput_is_per_second_of_wall_time():
    metrics = compute_metrics(mixed_run(wall=4.0), Slo(ttft_ms=500, tpot_ms=150))
    assert metrics.goodput_req_per_s == pytest.approx(2 / 4.0)


def test_each_slo_alone_counts_what_it_should():
    run = mixed_run()
    # TTFT only: everyone but slow_ttft and the unfinished one
    assert compute_metrics(run, Slo(ttft_ms=500)).goodput_req_per_s == pytest.approx(3 / 2)
    # TPOT only: everyone but slow_tpot and the unfinished one
    assert compute_metrics(run, Slo(tpot_ms=150)).goodput_req_per_s == pytest.approx(3 / 2)
    # E2E only: good 300 ms, slow_tpot 700 ms, one_token 200 ms; slow_ttft 1100 ms misses
    assert compute_metrics(run, Slo(e2el_ms=800)).goodput_req_per_s == pytest.approx(3 / 2)
    # limits nobody meets
    assert compute_metrics(run, Slo(ttft_ms=50)).goodput_req_per_s == 0.0


def test_a_one_token_request_meets_any_tpot_slo():
    run = run_of(record("one", 10.0, [10.2]), wall=1.0)
    assert compute_metrics(run, Slo(tpot_ms=0.001)).goodput_req_per_s == pytest.approx(1.0)
    # but its TTFT still counts
    assert compute_metrics(run, Slo(ttft_ms=100, tpot_ms=0.001)).goodput_req_per_s == 0.0


def test_goodput_is_nan_without_an_slo():
    assert math.isnan(compute_metrics(mixed_run()).goodput_req_per_s)
    assert math.isnan(compute_metrics(mixed_run(), None).goodput_req_per_s)


def test_latency_means_and_input_tokens():
    metrics = compute_metrics(mixed_run())
    assert metrics.ttft_mean_ms == pytest.approx((100 + 1000 + 100 + 200 + 100) / 5)
    # TPOT averages requests of two tokens or more: a one-token output has no TPOT
    assert metrics.tpot_mean_ms == pytest.approx((100 + 50 + 300) / 3)
    assert metrics.itl_mean_ms == pytest.approx((100 * 2 + 50 * 2 + 300 * 2) / 6)
    # E2E to finish; the unfinished request's runs to the end of the run (12 - 11.5)
    assert metrics.e2e_mean_ms == pytest.approx((300 + 1100 + 700 + 200 + 500) / 5)
    assert metrics.input_tokens == 4 + 6 + 8 + 3 + 7
    assert metrics.output_tokens == 3 + 3 + 3 + 1 + 1
    assert metrics.requests == 5


def test_means_are_nan_with_no_tokens_at_all():
    metrics = compute_metrics(run_of(record("empty", 10.0, [], finished=False)))
    assert math.isnan(metrics.ttft_mean_ms)
    assert math.isnan(metrics.tpot_mean_ms)
    assert math.isnan(metrics.itl_mean_ms)
    assert metrics.e2e_mean_ms == pytest.approx(2000.0)


def test_a_finished_request_without_tokens_fails_a_ttft_slo():
    run = run_of(record("empty", 10.0, [], finished=True), wall=1.0)
    assert compute_metrics(run, Slo(ttft_ms=10_000)).goodput_req_per_s == 0.0
    assert compute_metrics(run, Slo(e2el_ms=10_000)).goodput_req_per_s == pytest.approx(1.0)


def test_goodput_is_a_headline_metric():
    metrics = compute_metrics(mixed_run(), Slo(ttft_ms=500))
    assert metrics.get("goodput_req_per_s") == metrics.goodput_req_per_s


# -- Slo -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "slo"),
    [
        ("ttft:2000 tpot:100", Slo(ttft_ms=2000, tpot_ms=100)),
        ("ttft:2000,tpot:100", Slo(ttft_ms=2000, tpot_ms=100)),
        (" e2el:1500.5 ,  ttft:1e3 ", Slo(ttft_ms=1000, e2el_ms=1500.5)),
        ("tpot:7", Slo(tpot_ms=7)),
    ],
)
def test_parse(text, slo):
    assert Slo.parse(text) == slo


@pytest.mark.parametrize("text", ["latency:100", "ttft2000", "TTFT:100", "ttft_ms:100"])
def test_parse_names_the_keys_it_knows(text):
    with pytest.raises(ValueError, match=r"KEY:MILLISECONDS with KEY one of ttft, tpot, e2el"):
        Slo.parse(text)


@pytest.mark.parametrize(("text", "raw"), [("ttft:fast", "fast"), ("tpot:", ""), ("e2el:1s", "1s")])
def test_parse_refuses_a_value_that_is_not_a_number(text, raw):
    with pytest.raises(ValueError, match=rf"'{raw}' is not a number of milliseconds"):
        Slo.parse(text)


@pytest.mark.parametrize("text", ["ttft:0", "tpot:-5", "ttft:2000 e2el:-1", "ttft:nan"])
def test_parse_refuses_a_limit_that_is_not_positive(text):
    with pytest.raises(ValueError, match=r"an SLO must be a number > 0 ms"):
        Slo.parse(text)


@pytest.mark.parametrize("text", ["", "   ", " , ,"])
def test_parse_of_nothing_gives_an_example(text):
    with pytest.raises(ValueError, match=r"no SLO given; write e\.g\. ttft:2000 tpot:100"):
        Slo.parse(text)


@pytest.mark.parametrize("text", ["ttft:2000 tpot:100", "e2el:1500.5", "ttft:1 tpot:2 e2el:3"])
def test_str_reads_back_through_parse(text):
    slo = Slo.parse(text)
    assert str(slo) == text
    assert Slo.parse(str(slo)) == slo


def test_to_dict_holds_only_the_limits_given():
    assert Slo(ttft_ms=2000, e2el_ms=9000).to_dict() == {"ttft_ms": 2000, "e2el_ms": 9000}


def test_from_table():
    slo = Slo.from_table({"ttft_ms": 2000, "tpot_ms": "50"}, "[performance]")
    assert slo == Slo(ttft_ms=2000.0, tpot_ms=50.0)


def test_from_table_names_unknown_keys_and_the_known_ones():
    with pytest.raises(
        ValueError, match=r"perf\.slo: unknown SLO key\(s\) \['ttft'\]; use .*'ttft_ms'"
    ):
        Slo.from_table({"ttft": 2000}, "perf.slo")


@pytest.mark.parametrize("raw", [0, -100, "soon", None, float("nan")])
def test_from_table_refuses_a_limit_that_is_not_a_positive_number(raw):
    with pytest.raises(ValueError, match=r"perf\.slo\.tpot_ms = .*(milliseconds|> 0 ms)"):
        Slo.from_table({"tpot_ms": raw}, "perf.slo")


def test_met_is_inclusive_and_checks_only_the_limits_given():
    slo = Slo(ttft_ms=100, tpot_ms=20)
    assert slo.met(0.1, 0.02, 99.0)  # exactly at the limits; no E2E limit
    assert not slo.met(0.1001, 0.02, 0.0)
    assert not slo.met(0.1, 0.0201, 0.0)
    assert not slo.met(None, 0.0, 0.0)  # no first token: no TTFT to meet a TTFT limit with
    assert Slo(e2el_ms=500).met(None, 99.0, 0.5)


# -- CLI options ---------------------------------------------------------------------------------


def test_the_goodput_option_parses_an_slo():
    assert _slo("ttft:2000 tpot:100") == Slo(ttft_ms=2000, tpot_ms=100)


def test_the_goodput_option_reports_a_bad_slo_to_argparse():
    with pytest.raises(argparse.ArgumentTypeError, match=r"'speed:1'.*one of ttft, tpot, e2el"):
        _slo("speed:1")


@pytest.mark.parametrize(
    ("raw", "url"),
    [
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000"),
        ("http://host:8000/v1", "http://host:8000"),
        ("http://host:8000/v1/", "http://host:8000"),
        ("https://serve.example/api", "https://serve.example/api"),
    ],
)
def test_the_endpoint_option_takes_a_base_url(raw, url):
    assert _endpoint(raw) == url


@pytest.mark.parametrize("raw", ["localhost:8000", "ftp://x", "127.0.0.1:8000", "http://", ""])
def test_the_endpoint_option_says_how_to_write_a_url(raw):
    with pytest.raises(argparse.ArgumentTypeError, match=r"not a server URL; write e\.g\. http://"):
        _endpoint(raw)
