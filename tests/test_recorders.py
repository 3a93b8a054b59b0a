"""The integrity check on an engine's forward counter, failing where it must."""

from __future__ import annotations

import pytest

from pytest_vibeserve.options import Options
from pytest_vibeserve.recorders import Checks
from pytest_vibeserve.runner import RunResult
from pytest_vibeserve.session import VibeSession


def run_with(counters: dict[str, int]) -> RunResult:
    return RunResult("candidate", {}, 0.0, 1.0, 0, counters)


@pytest.fixture
def checks(tmp_path):
    options = Options(None, "tiny", None, 0, None, None, None, None, None, 10.0, 1.0, tmp_path)
    return Checks(VibeSession(options), context=None, nodeid="t")


def test_missing_forward_counter_fails_naming_the_key(checks):
    with pytest.raises(pytest.fail.Exception, match="lacks 'model_forward_calls'"):
        checks.forward_counters(run_with({"steps": 3}))


def test_zero_forwards_fails(checks):
    with pytest.raises(pytest.fail.Exception, match="without a model forward"):
        checks.forward_counters(run_with({"model_forward_calls": 0}))


def test_counted_forwards_pass_and_are_recorded(checks):
    result = checks.forward_counters(run_with({"model_forward_calls": 7}))
    assert result.passed
    assert checks._session.checks[-1][1] is result


class FakeContext:
    """Engines whose speed depends on whether their process served the workload before."""

    def __init__(self, fresh_engine: bool) -> None:
        from pytest_vibeserve.scenario import Gates, PerformanceSpec

        spec = PerformanceSpec("output_tok_per_s", "tok/s", True, 2, "b", (), Gates(), fresh_engine)
        self.scenario = type("S", (), {"performance": spec})()
        self.has_baseline, self.peers, self.slo = True, (), None
        self.starts = {"candidate": 1, "baseline": 1}
        self.served = {"candidate": 0, "baseline": 0}  # runs since the process started

    def warm_up(self, role, workload):
        pass

    def restart(self, role):
        self.starts[role] += 1
        self.served[role] = 0

    def fresh(self, role):
        if self.served[role]:
            self.restart(role)

    def engine_dir(self, role):
        return role

    engine_source = engine_dir

    def peer_missing(self, role):
        return None

    def run(self, role, workload, cached=True):
        from pytest_vibeserve.runner import RequestRecord

        # a prefix cache: a process that ran the workload before serves it 10x faster
        seconds = 1.0 if self.served[role] == 0 or role == "baseline" else 0.1
        self.served[role] += 1
        record = RequestRecord("r", 3, 0.0, [1, 2], [seconds / 2, seconds], None, [], seconds)
        return RunResult(role, {"r": record}, 0.0, seconds, 0, {"model_forward_calls": 2})


@pytest.mark.parametrize("fresh", [False, True])
def test_fresh_engine_starts_a_process_per_measured_run(tmp_path, monkeypatch, fresh):
    from pytest_vibeserve.recorders import Perf
    from pytest_vibeserve.workload import Workload

    options = Options(None, "tiny", None, 0, None, None, None, 4, None, 10.0, 1.0, tmp_path)
    session = VibeSession(options)
    monkeypatch.setattr(session, "roofline", lambda context, workload=None: None)
    context = FakeContext(fresh)
    workload = Workload("w", (), {})
    record = Perf(session, context, "t").compare(workload)
    if fresh:  # every one of the 4 repeats on a new process: a cache never carries over, and
        # the process started before the first repeat is that repeat's (no wasted start)
        assert context.starts == {"candidate": 4, "baseline": 4}
        assert record.comparison.ratio == pytest.approx(1.0)
    else:  # the same process throughout: repeats 2-4 ride the first one's cache
        assert context.starts == {"candidate": 1, "baseline": 1}
        assert record.comparison.ratio > 5
