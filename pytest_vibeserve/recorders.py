"""The objects behind the ``vibeserve_checks`` and ``vibeserve_perf`` fixtures.

Both record what they find into the session (for the JSON report) and fail the test with the
checker's or gate's own message, so a terminal and a report tell the same story.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from pytest_vibeserve.checkers.result import CheckResult, Failure, build_result
from pytest_vibeserve.compare import (
    Comparison,
    RatioGate,
    compare_alternating,
    gates_from_spec,
    measure_alone,
)
from pytest_vibeserve.contract import FORWARD_COUNTER
from pytest_vibeserve.metrics import RunMetrics, compute_metrics
from pytest_vibeserve.runner import EngineFailure, RunResult
from pytest_vibeserve.session import (
    BASELINE,
    CANDIDATE,
    PerformanceRecord,
    ScenarioContext,
    VibeSession,
)
from pytest_vibeserve.workload import Workload


class BenchWriter:
    """Writes each measured run as ``vllm bench serve`` JSON under --vibeserve-bench-dir."""

    def __init__(self, directory, context: ScenarioContext, workload: Workload) -> None:
        self.directory = directory
        self.context = context
        self.workload = workload
        self.count: dict[str, int] = {}

    def write(self, role: str, run: RunResult) -> RunResult:
        if self.directory is None:
            return run
        from pytest_vibeserve.bench_json import bench_result, write_bench_result

        index = self.count[role] = self.count.get(role, 0) + 1
        result = bench_result(
            run,
            self.workload,
            backend=self.context.engine_source(role),
            model_id=str(self.context.model_dir),
            slo=self.context.slo,
        )
        name = f"{self.context.scenario.name}-{self.workload.name}-{role}-{index}.json"
        write_bench_result(result, self.directory / name)
        return run


class Checks:
    def __init__(self, session: VibeSession, context: ScenarioContext, nodeid: str) -> None:
        self._session = session
        self._context = context
        self._nodeid = nodeid

    def record(self, result: CheckResult) -> CheckResult:
        self._session.checks.append((self._nodeid, result))
        if not result.passed:
            details = "\n".join(f"  - {f.message}" for f in result.failures[:20])
            more = len(result.failures) - 20
            if more > 0:
                details += f"\n  ... and {more} more"
            pytest.fail(f"{result.summary}\n{details}", pytrace=False)
        return result

    def tokens(self, workload: Workload, run: RunResult, *, tie_tolerance: float | None = None):
        from pytest_vibeserve.checkers.tokens import check_token_equality

        tolerance = tie_tolerance
        if tolerance is None:
            tolerance = float(self._context.scenario.correctness.get("tie_tolerance", 1e-3))
        expected = {rid: out.expected for rid, out in workload.expected.items()}
        return self.record(check_token_equality(expected, run.outputs, tie_tolerance=tolerance))

    def logprobs(self, workload: Workload, run: RunResult, *, atol: float | None = None):
        from pytest_vibeserve.checkers.logprobs import check_logprob_closeness

        tolerance = atol
        if tolerance is None:
            tolerance = float(self._context.scenario.correctness.get("logprob_atol", 1e-3))
        missing = [rid for rid, rec in run.records.items() if rec.logprobs is None]
        if missing:
            return self.record(
                build_result(
                    "logprobs",
                    f"{len(missing)} request(s) returned no logprobs",
                    [
                        Failure(rid, None, f"request {rid} asked for top_logprobs and got none", {})
                        for rid in missing
                    ],
                    {},
                )
            )
        expected = {rid: out.top_logprobs for rid, out in workload.expected.items()}
        actual = {rid: rec.logprobs for rid, rec in run.records.items()}
        return self.record(check_logprob_closeness(expected, actual, atol=tolerance))

    def json_documents(
        self,
        workload: Workload,
        run: RunResult | None = None,
        *,
        min_valid_fraction: float | None = None,
        min_sentinel_fraction: float | None = None,
    ) -> CheckResult:
        """Every output of a JSON-schema workload (``facts``: ``schema``, ``sentinel``) parses and
        validates; the sentinel echo rate is reported, and gated at ``min_sentinel_fraction``
        (default ``[correctness] sentinel_min_fraction``, else 0). A failing output also says
        where it left the grammar: the first of its tokens the pinned grammar engine rejects.
        ``run`` None checks the reference's own outputs (the workload's quality)."""
        result = self.json_result(
            workload,
            run,
            min_valid_fraction=min_valid_fraction,
            min_sentinel_fraction=min_sentinel_fraction,
        )
        return self.record(result)

    def image_work(self, workload: Workload) -> Callable[[RunResult], str | None]:
        """For ``vibeserve_perf.compare(audit=...)``: a measured image run whose engine counted
        fewer model forwards than its images claim calls did not do the work it is timed on."""

        def audit(run: RunResult) -> str | None:
            from pytest_vibeserve.checkers.denoising import claimed_calls, forwards_problem

            if self._context.is_endpoint(run.engine):
                return None
            payloads = [record.payloads[-1] for record in run.records.values() if record.payloads]
            return forwards_problem(claimed_calls(payloads), run.forward_calls)

        return audit

    def json_validity(self, workload: Workload) -> Callable[[RunResult], str]:
        """For ``vibeserve_perf.compare(validate=...)``: a run's document validity in a few
        words, recorded nowhere else and failing nothing."""

        def validity(run: RunResult) -> str:
            stats = self.json_result(workload, run, min_valid_fraction=0.0).stats
            words = f"{stats['valid']}/{stats['outputs']} valid"
            if "sentinel_total" in stats:
                words += f", sentinel {stats['sentinel_echoed']}/{stats['sentinel_total']}"
            return words

        return validity

    def json_result(
        self,
        workload: Workload,
        run: RunResult | None,
        *,
        min_valid_fraction: float | None = None,
        min_sentinel_fraction: float | None = None,
    ) -> CheckResult:
        from pytest_vibeserve.checkers.json_schema import check_json_schema

        settings = self._context.scenario.correctness
        if min_valid_fraction is None:
            min_valid_fraction = (
                1.0
                if run is not None
                else float(settings.get("reference_min_valid_fraction", 0.95))
            )
        if min_sentinel_fraction is None:  # a scale may gate it (a real model reads its prompt)
            min_sentinel_fraction = float(
                self._context.scale.workload.get(
                    "sentinel_min_fraction", settings.get("sentinel_min_fraction", 0.0)
                )
            )
        tokens = (
            {rid: out.tokens for rid, out in workload.expected.items()}
            if run is None
            else run.outputs
        )
        texts = {rid: self.document_text(workload, rid, ids) for rid, ids in tokens.items()}
        schemas = {rid: facts["schema"] for rid, facts in workload.facts.items()}
        sentinels = {rid: f["sentinel"] for rid, f in workload.facts.items() if f.get("sentinel")}
        result = check_json_schema(
            texts,
            schemas,
            min_valid_fraction=min_valid_fraction,
            sentinels=sentinels or None,
            min_sentinel_fraction=min_sentinel_fraction,
        )
        result = self._with_departures(workload, tokens, result)
        if run is None:
            result = dataclasses.replace(result, summary=f"reference: {result.summary}")
        return result

    def document_text(self, workload: Workload, request_id: str, ids: list[int]) -> str:
        """An output's text without its trailing stop token (EOS)."""
        request = next(r for r in workload.requests if r.request_id == request_id)
        if ids and ids[-1] in request.stop_token_ids:
            ids = ids[:-1]
        tokenizer = self._context.memo("tokenizer", self._context.load_tokenizer)
        return tokenizer.decode(ids)

    def _with_departures(
        self, workload: Workload, tokens: Mapping[str, list[int]], result: CheckResult
    ) -> CheckResult:
        from reference_impls.constrained import departure

        requests = {r.request_id: r for r in workload.requests}
        failures = []
        for failure in result.failures:
            request = requests.get(failure.request_id or "")
            if request is None or request.response_format is None:
                failures.append(failure)
                continue
            where = departure(
                str(self._context.model_dir), request.response_format, tokens[request.request_id]
            )
            failures.append(
                dataclasses.replace(
                    failure,
                    message=f"{failure.message}; {where['message']}",
                    data={**failure.data, "grammar": where},
                )
            )
        return dataclasses.replace(result, failures=failures)

    def json_schema(self, outputs: Mapping[str, str], schemas: Mapping[str, dict], **kwargs: Any):
        from pytest_vibeserve.checkers.json_schema import check_json_schema

        return self.record(check_json_schema(outputs, schemas, **kwargs))

    def images(self, expected: Mapping[str, Any], actual: Mapping[str, Any], **kwargs: Any):
        from pytest_vibeserve.checkers.images import check_images

        return self.record(check_images(expected, actual, **kwargs))

    def generated_images(self, workload: Workload, run: RunResult) -> CheckResult:
        """Text to image: every image within the scenario's PSNR (dB) and SSIM of the fp32
        reference's (``[correctness] min_psnr``, ``min_ssim``; 35 and 0.98 by default)."""
        from pytest_vibeserve.checkers.images import check_images
        from pytest_vibeserve.contract import decode_image

        correctness = self._context.scenario.correctness
        expected = {r.request_id: workload.expected[r.request_id].pixels for r in workload.images}
        actual = {
            rid: decode_image(record.payloads[-1])
            for rid, record in run.records.items()
            if record.payloads
        }
        return self.record(
            check_images(
                expected,
                actual,
                min_psnr=float(correctness.get("min_psnr", 35.0)),
                min_ssim=float(correctness.get("min_ssim", 0.98)),
            )
        )

    def denoising(self, workload: Workload, run: RunResult) -> CheckResult:
        """Text to image: the full schedule ran with guidance (model calls, trajectory, probe
        latent within ``[correctness] max_probe_error``/``max_trajectory_error``) and the
        engine's forward counter covers the model calls its images claim."""
        from pytest_vibeserve.checkers.denoising import check_denoising

        correctness = self._context.scenario.correctness
        payloads = {
            rid: record.payloads[-1] for rid, record in run.records.items() if record.payloads
        }
        forwards = None if self._context.is_endpoint(run.engine) else run.forward_calls
        return self.record(
            check_denoising(
                workload.images,
                workload.expected,
                payloads,
                forward_calls=forwards,
                max_probe_error=float(correctness.get("max_probe_error", 0.05)),
                max_trajectory_error=float(correctness.get("max_trajectory_error", 0.05)),
            )
        )

    def words(self, expected: Mapping[str, str], actual: Mapping[str, str], **kwargs: Any):
        from pytest_vibeserve.checkers.words import check_word_overlap

        return self.record(check_word_overlap(expected, actual, **kwargs))

    def transcripts(
        self, workload: Workload, run: RunResult, *, tie_tolerance: float | None = None
    ):
        """Audio streams: every chunk's transcript equals the reference's (tie-aware tokens).

        At a scale listed in the scenario's ``[correctness] word_overlap_scales`` (a trained
        checkpoint, where approximation is legitimate) the gate is instead the paper's: the
        Jaccard overlap of normalised word sets >= ``min_word_overlap`` (0.7) for every chunk.
        """
        from pytest_vibeserve.checkers.transcripts import check_transcripts
        from pytest_vibeserve.workload import partial_key

        if not workload.streams:
            raise ValueError(f"workload {workload.name!r} has no audio streams to check")
        correctness = self._context.scenario.correctness
        expected = {
            s.stream_id: [
                workload.expected[partial_key(s.stream_id, k)] for k in range(s.num_chunks)
            ]
            for s in workload.streams
        }
        actual = {
            sid: [list(p.token_ids) for p in record.partials] for sid, record in run.records.items()
        }
        if self._context.scale.name in correctness.get("word_overlap_scales", ()):
            from pytest_vibeserve.checkers.words import check_word_overlap

            tokenizer = self._context.memo("tokenizer", self._context.load_tokenizer)

            def text(tokens: list[int]) -> str:
                return tokenizer.decode(tokens, skip_special_tokens=True)

            want = {
                partial_key(sid, k): text(out.tokens)
                for sid, outs in expected.items()
                for k, out in enumerate(outs)
            }
            got = {
                partial_key(sid, k): text(t) for sid, ts in actual.items() for k, t in enumerate(ts)
            }
            minimum = float(correctness.get("min_word_overlap", 0.7))
            return self.record(
                check_word_overlap(want, got, min_overlap=minimum, measure="jaccard")
            )
        tolerance = tie_tolerance
        if tolerance is None:
            tolerance = float(correctness.get("tie_tolerance", 1e-3))
        expected_tokens = {sid: [out.expected for out in outs] for sid, outs in expected.items()}
        return self.record(check_transcripts(expected_tokens, actual, tie_tolerance=tolerance))

    def forward_counters(self, run: RunResult) -> CheckResult:
        """Integrity: the engine ran its model (a non-zero forward count it reports)."""
        if self._context is not None and self._context.is_endpoint(run.engine):
            pytest.skip(
                f"{run.engine} is an OpenAI-compatible server: it reports no model-forward "
                "counter, so this integrity check applies to engine directories only"
            )
        count = run.counters.get(FORWARD_COUNTER)
        failures = []
        if count is None:
            failures.append(
                Failure(
                    None,
                    None,
                    f"engine.counters() lacks {FORWARD_COUNTER!r}; count every "
                    "forward of the real model there",
                    {"counters": run.counters},
                )
            )
        elif count <= 0:
            failures.append(
                Failure(
                    None,
                    None,
                    f"{FORWARD_COUNTER} = {count} after a run of "
                    f"{len(run.records)} requests: outputs made without a model forward",
                    {"counters": run.counters},
                )
            )
        head = f"{FORWARD_COUNTER} = {count}"
        return self.record(build_result("integrity", head, failures, {"counters": run.counters}))


class Perf:
    def __init__(self, session: VibeSession, context: ScenarioContext, nodeid: str) -> None:
        self._session = session
        self._context = context
        self._nodeid = nodeid

    def compare(
        self,
        workload: Workload,
        *,
        metric: str | None = None,
        label: str = "",
        headline: bool = True,
        validate: Callable[[RunResult], str] | None = None,
        audit: Callable[[RunResult], str | None] | None = None,
    ) -> PerformanceRecord:
        """Candidate vs baseline, alternating, plus the peers; recorded for the report.

        ``headline=False`` marks a measurement that gives context (a scenario's batch-1 speed
        beside its headline under load): the report's headline and the loop's ratio come from
        the first headline record. ``label`` names the workload in summary tables.
        ``validate(run)`` is called on every measured run and its word on each role's last one
        is reported beside the table (peers whose tokens are not the reference's, e.g. their own
        grammar engines, are judged by it); it decides nothing. ``audit(run)`` is called on every
        measured run too, and a problem it names fails the test at once: numbers measured on a
        run that did not do the work (e.g. answered from a cache) mean nothing."""
        from pytest_vibeserve.metrics import METRICS

        context = self._context
        spec = context.scenario.performance
        metric = metric or spec.metric
        unit, higher_is_better = METRICS[metric]
        repeats = self._session.options.repeats or spec.repeats
        skipped = {peer: why for peer in context.peers if (why := context.peer_missing(peer))}
        peer_roles = [peer for peer in context.peers if peer not in skipped]
        roles = [CANDIDATE, *([BASELINE] if context.has_baseline else []), *peer_roles]
        servers = [peer for peer in peer_roles if context.is_endpoint(peer)]
        for role in roles:
            if spec.fresh_engine:
                context.fresh(role)
            if role not in servers:  # a peer server starts only for its own runs (below)
                context.warm_up(role, workload)
        bench = BenchWriter(self._session.options.bench_dir, context, workload)
        validity: dict[str, str] = {}

        def measured_run(role: str) -> RunResult:
            run = bench.write(role, context.run(role, workload, cached=False))
            if validate is not None:
                validity[role] = validate(run)
            if audit is not None and (problem := audit(run)) is not None:
                pytest.fail(f"{role}: a measured run is invalid: {problem}", pytrace=False)
            return run

        def runner(role: str):
            if not spec.fresh_engine:
                return lambda: measured_run(role)

            def fresh_run():
                # a process that has served nothing but warm-ups, started and warmed before the
                # clock starts: only the run is timed
                context.fresh(role)
                context.warm_up(role, workload)
                return measured_run(role)

            return fresh_run

        measured = dict(
            metric=metric, unit=unit, higher_is_better=higher_is_better, slo=context.slo
        )
        peers = {peer: runner(peer) for peer in peer_roles if peer not in servers}
        comparison: Comparison
        if context.has_baseline:
            comparison = compare_alternating(
                runner(CANDIDATE), runner(BASELINE), repeats=repeats, peers=peers, **measured
            )
        else:
            comparison = measure_alone(runner(CANDIDATE), repeats=repeats, peers=peers, **measured)
        served = self._measure_servers(servers, workload, repeats, measured_run, skipped)
        comparison = dataclasses.replace(comparison, peers={**comparison.peers, **served})
        roles = [role for role in roles if role not in skipped]
        record = PerformanceRecord(
            nodeid=self._nodeid,
            workload=workload.name,
            comparison=comparison,
            roofline=self._session.roofline(context, workload),
            engines={role: context.engine_source(role) for role in roles},
            workload_stats=dict(workload.stats),
            peers_skipped=skipped,
            slo=context.slo,
            label=label or workload.name,
            headline=headline,
            validity=validity,
        )
        self._session.performance.append(record)
        return record

    def _measure_servers(
        self,
        servers: list[str],
        workload: Workload,
        repeats: int,
        measured_run: Callable[[str], RunResult],
        skipped: dict[str, str],
    ) -> dict[str, list[RunMetrics]]:
        """Peer servers one at a time, each started for its own runs and stopped after them:
        an idle server still polls (vLLM's engine core spins), so none may run beside another
        engine's measurement. A peer that cannot start is reported in ``skipped``, not fatal."""
        context = self._context
        measured: dict[str, list[RunMetrics]] = {}
        for peer in servers:
            try:
                context.warm_up(peer, workload)
                measured[peer] = [
                    compute_metrics(measured_run(peer), context.slo)
                    for _ in range(max(1, repeats // 2))
                ]
            except (EngineFailure, RuntimeError, OSError) as error:
                skipped[peer] = f"could not start or run: {str(error)[:600]}"
            finally:
                context.restart(peer)
        return measured

    def gate(self, record: PerformanceRecord) -> None:
        gates = gates_from_spec(self._context.scenario.performance.gates)
        if record.comparison.ratio is None:  # measured alone: nothing to hold a ratio against
            record.gates_skipped = [
                f"min_ratio={g.min_ratio:g}: no baseline in this run (--vibeserve-baseline none)"
                for g in gates
                if isinstance(g, RatioGate)
            ]
            gates = [g for g in gates if not isinstance(g, RatioGate)]
        record.gate_failures = [msg for gate in gates if (msg := gate.fails(record.comparison))]
        if record.gate_failures:
            pytest.fail("\n".join(record.gate_failures), pytrace=False)
