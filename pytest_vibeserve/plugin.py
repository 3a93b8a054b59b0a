"""pytest glue: options, markers, fixtures and hooks. State lives in ``VibeSession``."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_vibeserve.options import Options, add_options
from pytest_vibeserve.report import (
    build_report,
    format_summary,
    format_table,
    git_commit,
    merge_reports,
    package_version,
    write_report,
)
from pytest_vibeserve.scenario import ScenarioError, find_scenario_root, load_scenario
from pytest_vibeserve.session import (
    BASELINE,
    CANDIDATE,
    ScenarioContext,
    TestOutcome,
    VibeSession,
)
from pytest_vibeserve.synth_options import SynthOptions, add_synth_options

session_key = pytest.StashKey[VibeSession]()
# marker name -> (what it marks, the keyword arguments it accepts)
MARKERS: dict[str, tuple[str, frozenset[str]]] = {
    "vibeserve_correctness": (
        "a correctness check of the engine against the reference; counts toward "
        "correctness.passed. Keyword: checker=<tokens|logprobs|image|json_schema|words|integrity>",
        frozenset({"checker"}),
    ),
    "vibeserve_performance": (
        "a performance gate of the engine against the baseline, measured in the same run. "
        "Keyword: metric=<headline metric name>",
        frozenset({"metric"}),
    ),
}
CHECKERS = frozenset({"tokens", "logprobs", "image", "json_schema", "words", "integrity"})


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)
    add_synth_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for name, (doc, _) in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")
    session = VibeSession(Options.from_config(config))
    session.synth = SynthOptions.from_config(config)
    config.stash[session_key] = session


def pytest_report_header(config: pytest.Config) -> str:
    options = config.stash[session_key].options
    device = options.device or "scale default"
    threads = options.threads or "scale default"
    return (
        f"vibeserve: scale={options.scale} seed={options.seed} device={device} "
        f"threads={threads} torch={package_version('torch')} "
        f"commit={git_commit(config.rootpath)} cache={options.cache_dir}"
    )


def _marker_kind(item: pytest.Item) -> str | None:
    if item.get_closest_marker("vibeserve_correctness"):
        return "correctness"
    if item.get_closest_marker("vibeserve_performance"):
        return "performance"
    return None


def _guard_agents_package() -> None:
    """Fail clearly when OpenAI's Agents SDK (also named ``agents``) shadows the loop's package.

    The guard is loaded by path, so it runs even when ``import agents`` finds the other package.
    """
    guard_file = Path(__file__).resolve().parent.parent / "agents" / "__init__.py"
    spec = importlib.util.spec_from_file_location("_vibeserve_agents_guard", guard_file)
    if spec is None or spec.loader is None:
        raise pytest.UsageError(f"vibeserve's loop package is missing: {guard_file}")
    guard = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(guard)
    try:
        guard.ensure_vibeserve_agents()
    except ImportError as error:
        raise pytest.UsageError(str(error)) from None


def pytest_collection(session: pytest.Session) -> bool | None:
    """In synth mode the items are the loops, one per seed, instead of collected tests."""
    synth = session.config.stash[session_key].synth
    if synth is None:
        return None
    _guard_agents_package()
    from agents.synth import collect_synth_items

    hook = session.config.hook
    session.items = collect_synth_items(session, synth)
    hook.pytest_collection_modifyitems(session=session, config=session.config, items=session.items)
    hook.pytest_collection_finish(session=session)
    session.testscollected = len(session.items)
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _check_scale(config, items)
    for item in items:
        for name, (_, allowed) in MARKERS.items():
            for marker in item.iter_markers(name):
                if marker.args:
                    raise pytest.UsageError(
                        f"{item.nodeid}: @pytest.mark.{name} takes keyword arguments only "
                        f"({', '.join(sorted(allowed))}), got positional {marker.args!r}"
                    )
                unknown = set(marker.kwargs) - allowed
                if unknown:
                    raise pytest.UsageError(
                        f"{item.nodeid}: @pytest.mark.{name} got unknown keyword(s) "
                        f"{sorted(unknown)}; allowed: {', '.join(sorted(allowed))}"
                    )
                checker = marker.kwargs.get("checker")
                if checker is not None and checker not in CHECKERS:
                    raise pytest.UsageError(
                        f"{item.nodeid}: checker={checker!r} is unknown; use one of "
                        f"{', '.join(sorted(CHECKERS))}"
                    )


def _check_scale(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every collected scenario must define the requested --vibeserve-scale: one usage error
    naming the scales it has, not a traceback per test."""
    if session_key not in config.stash:
        return
    vibe = config.stash[session_key]
    roots = {root for item in items if (root := find_scenario_root(Path(item.path)))}
    for root in sorted(roots):
        try:
            load_scenario(root).scale(vibe.options.scale)
        except ScenarioError as error:
            raise pytest.UsageError(str(error)) from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[Any]:
    report = yield
    kind = _marker_kind(item)
    if kind is None:
        return report
    session = item.config.stash[session_key]
    if report.when == "call" or report.outcome != "passed":
        outcome = report.outcome
        if report.when != "call" and report.failed:
            outcome = "error"
        message = ""
        if report.failed:
            message = str(getattr(call.excinfo, "value", "") or report.longreprtext)[-4000:]
        elif report.skipped and isinstance(report.longrepr, tuple):
            message = report.longrepr[2]
        previous = session.outcomes.get(item.nodeid)
        if previous is None or previous.outcome == "passed":
            session.outcomes[item.nodeid] = TestOutcome(item.nodeid, kind, outcome, message)
    return report


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = config.stash[session_key]
    if session.synth is not None:
        from agents.synth import summarize_seeds

        summary = summarize_seeds(session.synth)
        if summary is not None:
            terminalreporter.section("vibeserve synthesis")
            for row in summary["seeds"]:
                best = row["best"] or {}
                line = (
                    f"seed {row['seed']}: best round {best.get('round')} "
                    f"{best.get('ratio') or float('nan'):.2f}x the {row.get('baseline')} "
                    f"({best.get('commit')})"
                )
                confirmed = row.get("confirmed") or {}
                if confirmed.get("ok"):
                    line += (
                        f"; confirmed in one same-run A/B: {confirmed['ratio_vs_starter']:.2f}x "
                        f"the starter ± {confirmed['noise']:.1%}"
                    )
                terminalreporter.write_line(line)
            if summary["ratio_median"] is not None:
                terminalreporter.write_line(
                    f"best ratio across {len(summary['seeds'])} seed(s): median "
                    f"{summary['ratio_median']:.2f}x, min {summary['ratio_min']:.2f}x, "
                    f"max {summary['ratio_max']:.2f}x"
                )
    if not session.performance and not session.checks:
        return
    terminalreporter.section("vibeserve")
    for _, result in session.checks:
        terminalreporter.write_line(f"{'PASS' if result.passed else 'FAIL'} {result.summary}")
    for record in session.performance:
        for line in format_table(record):
            terminalreporter.write_line(line)
        for message in record.gate_failures:
            terminalreporter.write_line(f"GATE FAILED: {message}")
    for line in format_summary(session.performance):
        terminalreporter.write_line(line)
    if session.options.report is not None:
        terminalreporter.write_line(f"report: {session.options.report}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    vibe = config.stash[session_key]
    report = build_report(vibe, config.rootpath) if vibe.contexts else None
    if hasattr(config, "workerinput"):  # a pytest-xdist worker: the controller writes the report
        config.workeroutput["vibeserve_report"] = report
        return
    reports = [r for r in (report, *vibe.worker_reports) if r is not None]
    if vibe.options.report is not None and reports:
        write_report(merge_reports(reports), vibe.options.report)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist: keep each worker's report for the controller's merged one."""
    report = getattr(node, "workeroutput", {}).get("vibeserve_report")
    if report is not None:
        node.config.stash[session_key].worker_reports.append(report)


def pytest_unconfigure(config: pytest.Config) -> None:
    if session_key in config.stash:
        config.stash[session_key].close()


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def vibeserve_session(pytestconfig: pytest.Config) -> VibeSession:
    """The session object: options, scenario contexts and everything bound for the report."""
    return pytestconfig.stash[session_key]


@pytest.fixture(scope="module")
def vibeserve_context(request: pytest.FixtureRequest) -> ScenarioContext:
    """The scenario this test module belongs to, at the session's scale."""
    return request.config.stash[session_key].context_for(Path(request.path))


@pytest.fixture(scope="module")
def vibeserve_scenario(vibeserve_context: ScenarioContext):
    """The parsed scenario.toml."""
    return vibeserve_context.scenario


@pytest.fixture(scope="module")
def vibeserve_reference(vibeserve_context: ScenarioContext):
    """The reference model (materialised once) and its cached greedy outputs."""
    return vibeserve_context.reference


@pytest.fixture(scope="module")
def vibeserve_tokenizer(vibeserve_context: ScenarioContext):
    """The reference model's tokenizer (transformers)."""
    return vibeserve_context.memo("tokenizer", vibeserve_context.load_tokenizer)


@pytest.fixture(scope="module")
def vibeserve_workload(vibeserve_context: ScenarioContext):
    """The scenario's workload; every scenario's conftest.py must override this fixture."""
    raise pytest.UsageError(
        f"scenario {vibeserve_context.scenario.name!r} defines no vibeserve_workload fixture: "
        f"add one to {vibeserve_context.scenario.root / 'conftest.py'}"
    )


@pytest.fixture(scope="module")
def vibeserve_engine(vibeserve_context: ScenarioContext):
    """The engine under test (--vibeserve-engine, default the scenario's starter), started once."""
    return vibeserve_context.engine(CANDIDATE)


@pytest.fixture(scope="module")
def vibeserve_baseline(vibeserve_context: ScenarioContext):
    """The scenario's baseline engine, started once."""
    return vibeserve_context.engine(BASELINE)


@pytest.fixture
def vibeserve_run(vibeserve_context: ScenarioContext) -> Callable[..., Any]:
    """``vibeserve_run(workload, role="candidate", cached=True)`` -> RunResult."""

    def run(workload, role: str = CANDIDATE, *, cached: bool = True):
        return vibeserve_context.run(role, workload, cached=cached)

    return run


@pytest.fixture
def vibeserve_checks(request: pytest.FixtureRequest, vibeserve_context: ScenarioContext):
    """Checkers that record their results in the report and fail the test with their message."""
    from pytest_vibeserve.recorders import Checks

    session = request.config.stash[session_key]
    return Checks(session, vibeserve_context, request.node.nodeid)


@pytest.fixture
def vibeserve_perf(request: pytest.FixtureRequest, vibeserve_context: ScenarioContext):
    """Same-run A/B measurement of candidate vs baseline (and peers), and the scenario's gates."""
    from pytest_vibeserve.recorders import Perf

    session = request.config.stash[session_key]
    return Perf(session, vibeserve_context, request.node.nodeid)


@pytest.fixture
def vibeserve_peer_server(vibeserve_context: ScenarioContext) -> Iterator[Callable[[str], Any]]:
    """``start(name)`` -> a running ``PeerServer`` (llama_cpp, llama_cpp_q4, vllm, vllm_eager)
    for the scenario's model on a free port; skips the test, naming the install command, when
    the peer is not installed. Every server started is stopped at teardown."""
    from pytest_vibeserve.peers import PeerServer

    started: list[PeerServer] = []

    def start(name: str) -> PeerServer:
        if reason := vibeserve_context.peer_missing(name):
            pytest.skip(reason)
        server = PeerServer(
            name,
            vibeserve_context.model_dir,
            vibeserve_context.options.cache_dir,
            threads=vibeserve_context.threads,
        )
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.close()
