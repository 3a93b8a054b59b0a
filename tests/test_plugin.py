"""The plugin's glue, with pytester: markers, the header line, reports, scenario discovery."""

from __future__ import annotations

import json

import pytest

SCENARIO_TOML = """
[scenario]
name = "toy"

[scales.tiny]
model = "tiny"

[performance]
metric = "output_tok_per_s"
baseline = "hf_greedy"
"""


def make_scenario(pytester, body: str, toml: str = SCENARIO_TOML):
    scenario = pytester.mkdir("toy")
    (scenario / "scenario.toml").write_text(toml)
    (scenario / "test_toy.py").write_text(body)
    return scenario


def test_markers_are_registered(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(
        ["@pytest.mark.vibeserve_correctness: *", "@pytest.mark.vibeserve_performance: *"]
    )


def test_unknown_marker_keyword_is_a_usage_error(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.vibeserve_correctness(chekcer="tokens")
        def test_x():
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*unknown keyword(s) [[]'chekcer'[]]; allowed: checker*"])


def test_unknown_checker_name_is_a_usage_error(pytester):
    pytester.makepyfile(
        """
        import pytest
        @pytest.mark.vibeserve_correctness(checker="vibes")
        def test_x():
            pass
        """
    )
    result = pytester.runpytest()
    assert result.ret == 4
    result.stderr.fnmatch_lines(["*checker='vibes' is unknown; use one of *tokens*"])


def test_header_prints_what_reproduces_the_run(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--vibeserve-seed", "7", "--vibeserve-scale", "tiny")
    result.stdout.fnmatch_lines(
        ["vibeserve: scale=tiny seed=7 device=* threads=* torch=* commit=* cache=*"]
    )


def test_report_records_outcomes_and_check_failures(pytester, tmp_path):
    body = """
import pytest
from pytest_vibeserve.checkers.tokens import ExpectedTokens
from pytest_vibeserve.checkers import check_token_equality

@pytest.mark.vibeserve_correctness(checker="tokens")
def test_good(vibeserve_checks):
    expected = {"a": ExpectedTokens([1, 2, 3], [5.0, 5.0, 5.0])}
    vibeserve_checks.record(check_token_equality(expected, {"a": [1, 2, 3]}))

@pytest.mark.vibeserve_correctness(checker="tokens")
def test_bad(vibeserve_checks):
    expected = {"a": ExpectedTokens([1, 2, 3], [5.0, 5.0, 5.0])}
    vibeserve_checks.record(check_token_equality(expected, {"a": [1, 9, 3]}))

def test_unmarked():
    pass
"""
    make_scenario(pytester, body)
    report = tmp_path / "r.json"
    result = pytester.runpytest(
        "toy", "--vibeserve-report", str(report), "--vibeserve-scale", "tiny"
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*FAIL tokens: 0/1 requests equal*request a position 1 expected 2 got 9 (margin 5*"]
    )
    data = json.loads(report.read_text())
    assert data["scenario"] == "toy"
    assert data["correctness"]["passed"] is False
    outcomes = {t["nodeid"].split("::")[-1]: t["outcome"] for t in data["correctness"]["tests"]}
    assert outcomes == {"test_good": "passed", "test_bad": "failed"}
    assert data["performance"] is None
    failing = [c for c in data["correctness"]["checks"] if not c["passed"]]
    assert failing[0]["failures"][0]["position"] == 1


def test_correctness_is_not_passed_when_no_check_ran(pytester, tmp_path):
    body = """
import pytest

@pytest.mark.vibeserve_correctness(checker="tokens")
def test_skipped(vibeserve_scenario):
    pytest.skip("nothing to check")
"""
    make_scenario(pytester, body)
    report = tmp_path / "r.json"
    pytester.runpytest("toy", "--vibeserve-report", str(report), "--vibeserve-scale", "tiny")
    data = json.loads(report.read_text())
    assert data["correctness"]["passed"] is False
    assert data["correctness"]["reason"] == "no correctness test ran"


def test_fixture_outside_a_scenario_says_where_it_must_live(pytester):
    pytester.makepyfile("def test_x(vibeserve_scenario): pass")
    result = pytester.runpytest()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*is not inside a scenario folder*scenario.toml*"])


def test_scenario_without_the_scale_names_the_fix(pytester):
    make_scenario(pytester, "def test_x(vibeserve_context): pass")
    result = pytester.runpytest("toy", "--vibeserve-scale", "gpu")
    # one usage error at collection, not a traceback per test
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*has no scale 'gpu'*add [[]scales.gpu[]]*"])


def test_broken_scenario_toml_names_the_key(pytester):
    toml = SCENARIO_TOML.replace('metric = "output_tok_per_s"', 'metric = "vibes"')
    make_scenario(pytester, "def test_x(vibeserve_scenario): pass", toml)
    result = pytester.runpytest("toy", "--vibeserve-scale", "tiny")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*metric 'vibes' is unknown; use one of output_tok_per_s*"])


def test_direction_contradicting_the_metric_is_refused(pytester):
    toml = SCENARIO_TOML + "higher_is_better = false\n"
    make_scenario(pytester, "def test_x(vibeserve_scenario): pass", toml)
    result = pytester.runpytest("toy", "--vibeserve-scale", "tiny")
    result.stderr.fnmatch_lines(["*higher_is_better = False contradicts metric*"])


def test_fresh_engine_must_be_a_boolean(pytester):
    toml = SCENARIO_TOML + 'fresh_engine = "yes"\n'
    make_scenario(pytester, "def test_x(vibeserve_scenario): pass", toml)
    result = pytester.runpytest("toy", "--vibeserve-scale", "tiny")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*[[]performance[]]: fresh_engine = 'yes' must be true or false*"])


def test_scenario_without_workload_fixture_says_so(pytester):
    make_scenario(pytester, "def test_x(vibeserve_workload): pass")
    result = pytester.runpytest("toy", "--vibeserve-scale", "tiny")
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*defines no vibeserve_workload fixture*conftest.py*"])


def test_xdist_workers_reports_are_merged(pytester, tmp_path):
    body = """
import pytest
from pytest_vibeserve.checkers import ExpectedTokens, check_token_equality

@pytest.mark.parametrize("actual", [[1, 2], [1, 2], [1, 3], [1, 2]])
@pytest.mark.vibeserve_correctness(checker="tokens")
def test_tokens(vibeserve_checks, actual):
    expected = {"a": ExpectedTokens([1, 2], [5.0, 5.0])}
    vibeserve_checks.record(check_token_equality(expected, {"a": actual}))
"""
    make_scenario(pytester, body)
    report = tmp_path / "r.json"
    result = pytester.runpytest_subprocess(
        "toy", "-n", "2", "--vibeserve-report", str(report), "--vibeserve-scale", "tiny"
    )
    result.assert_outcomes(passed=3, failed=1)
    data = json.loads(report.read_text())
    assert len(data["correctness"]["tests"]) == 4
    assert len(data["correctness"]["checks"]) == 4
    assert data["correctness"]["passed"] is False


def test_baseline_and_peers_may_be_engine_directories(pytester):
    """--vibeserve-baseline DIR and label=DIR peers: the loop compares a candidate with the best
    engine so far, and the best with the starter, through these."""
    best = pytester.mkdir("best")
    (best / "engine.py").write_text("def create_engine(spec): ...\n")
    make_scenario(
        pytester,
        "def test_x(vibeserve_context):\n"
        "    print('BASELINE', vibeserve_context.engine_dir('baseline'))\n"
        "    print('PEERS', vibeserve_context.peers)\n"
        "    print('STARTER', vibeserve_context.engine_dir('starter'))\n"
        "    print('NAMED', vibeserve_context.engine_dir('hf_greedy').name)\n",
    )
    result = pytester.runpytest(
        "toy",
        "-s",
        "--vibeserve-scale",
        "tiny",
        "--vibeserve-baseline",
        str(best),
        "--vibeserve-peers",
        f"starter={best}",
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"*BASELINE {best}", "PEERS ('starter',)", f"STARTER {best}", "NAMED hf_greedy"]
    )


def test_baseline_directory_without_an_engine_names_the_problem(pytester, tmp_path):
    make_scenario(pytester, "def test_x(): pass")
    result = pytester.runpytest("toy", "--vibeserve-baseline", str(tmp_path))
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*has no engine.py: not an engine directory*"])
    result = pytester.runpytest("toy", "--vibeserve-peers", f"old={tmp_path}")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*peer 'old'*has no engine.py*"])


def test_workload_settings_override_the_scale(pytester):
    make_scenario(
        pytester,
        "def test_x(vibeserve_context):\n"
        "    print('WORKLOAD', sorted(vibeserve_context.scale.workload.items()))\n",
        SCENARIO_TOML + "\n[scales.tiny.workload]\nrequests = 4\nmax_new_tokens = 64\n",
    )
    result = pytester.runpytest(
        "toy",
        "-s",
        "--vibeserve-scale",
        "tiny",
        "--vibeserve-workload",
        "requests=2",
        "--vibeserve-workload",
        'prediction="as_sent"',
    )
    result.assert_outcomes(passed=1)
    expected = "WORKLOAD [('max_new_tokens', 64), ('prediction', 'as_sent'), ('requests', 2)]"
    assert expected in result.stdout.str()
    result = pytester.runpytest("toy", "--vibeserve-workload", "requests")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*write KEY=VALUE*"])
