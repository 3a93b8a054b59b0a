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
