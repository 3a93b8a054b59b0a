"""The Performance Evaluator: a performance pytest run (same-run A/B against the baseline), read
into the headline metric in the scenario's fixed unit and direction, then a profile of the candidate
(``agents.profiler``), and ranked bottleneck hints with numbers from both. The hints' keywords are
what skills list as their triggers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.profiler import profile_candidate
from agents.pytest_runs import ScenarioRun, run_scenario_tests, workload_args
from pytest_vibeserve.profiling import is_matmul
from reference_impls.models import default_cache_dir

# Below this matmul share of a forward, the rest (Python, small ops) is worth removing: the
# starter spends 63% in matmuls at the cpu scale, 48% at tiny; above it only bytes/batching help.
MATMUL_BOUND_SHARE = 0.7
OVERHEAD_MIN_OPS_PER_FORWARD = 300
LM_HEAD_MIN_SHARE = 0.2
ATTENTION_MIN_SHARE = 0.3
# Up to this many tokens per forward an engine decodes one token at a time (the prefill's first
# token aside); above it, it drafts.
ONE_TOKEN_PER_FORWARD = 1.05
# A prefix cache is worth building when at least this share of the prompt tokens repeats a prefix
# another request sent; it is working when the engine reports hits on half of those tokens.
SHARED_PREFIX_MIN = 0.5
# Measured on the cpu hybrid model: one decode forward over 16 rows costs ~4.5x one over 1 row,
# so batching a decode-bound engine can gain up to ~3.6x on its decode time; 4 rounds it.
BATCH_DECODE_SPEEDUP = 4.0
# A decode step slower than this many times its roofline (weights read once at the measured
# bandwidth, or the rows' matmul FLOPs at the measured peak) spends its time outside the math.
DECODE_OVERHEAD_MIN = 2.0
# Constrained decoding: a forced share worth fast-forwarding, and a share of a decode step spent
# on grammar work (masks, forced-token lists) worth overlapping with the forward.
GRAMMAR_FORCED_MIN = 0.2
GRAMMAR_MASK_MIN_SHARE = 0.05
# Below this share of the tokens per forward that prompt lookup under the grammar reaches on the
# workload (simulated over the reference's outputs), drafting is worth adding or lengthening.
LOOKUP_USED_SHARE = 0.75
# Peak memory this much above the engine measured beside the candidate (and by this many MiB)
# is worth bounding.
# audio streams: a run this far behind real time queues chunks; engine counters above this many
# computations per 20 ms frame of audio mean work redone per chunk; shares of a transcript's cost
AUDIO_BEHIND_RTF = 1.1
AUDIO_RECOMPUTE_MIN = 1.5
AUDIO_TAIL_RATIO = 3.0
ENCODER_SHARE = 0.15
CROSS_KV_SHARE = 0.05
DECODE_STEP_GAIN = 1.2  # a lean decoder step against transformers' module, cpu scale
PEAK_MEMORY_RATIO = 1.25
PEAK_MEMORY_MIN_MIB = 256


@dataclass(frozen=True, slots=True)
class Hint:
    keyword: str  # matched against skills' metadata.triggers
    estimated_gain: float  # rough factor on the headline metric if fixed; ranks the hints
    evidence: str  # the numbers behind it
    # the fix changes outputs within a tolerance (bf16, a CFG stride): the gates decide, and the
    # planner tries every exact fix first, so the rounds show the exact gain apart
    approximate: bool = False

    def describe(self) -> str:
        kind = ", approximate" if self.approximate else ""
        return f"{self.keyword} (~{self.estimated_gain:.1f}x possible{kind}): {self.evidence}"


@dataclass(frozen=True, slots=True)
class Evaluation:
    ok: bool
    metric: str
    unit: str
    higher_is_better: bool
    value: float  # the candidate's headline value
    baseline: float
    ratio: float  # > 1: better than the baseline
    noise: float
    hints: list[Hint] = field(default_factory=list)
    report: dict[str, Any] | None = None
    problem: str = ""
    profile: dict[str, Any] | None = None  # agents.profiler.Profile.to_dict()
    profile_problem: str = ""  # why there is no profile; the evaluation stands without one
    against: str = ""  # the engine measured beside the candidate ("" = the scenario's baseline)
    relative: float | None = None  # the measured ratio against that engine


def _row(report: dict[str, Any], engine: str) -> dict[str, Any]:
    return next(row for row in report["performance"]["table"] if row["engine"] == engine)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _top_ops(profile: dict[str, Any], keep: Callable[[str], bool], n: int = 3) -> str:
    ops = [op for op in profile.get("top_ops", []) if keep(op["name"])][:n]
    return ", ".join(f"{op['name']} {_number(op.get('share')):.0%}" for op in ops)


def profile_hints(profile: dict[str, Any]) -> list[Hint]:
    """Bottlenecks in where a forward's time goes (``agents.profiler.Profile.to_dict``)."""
    ms = _number(profile.get("ms_per_forward"))
    ops = _number(profile.get("aten_ops_per_forward"))
    matmul = _number(profile.get("matmul_share"))
    python = _number(profile.get("python_share"))
    lm_head = _number(profile.get("lm_head_share"))
    attention = _number(profile.get("attention_share"))
    per_forward = f"{ms:.1f} ms/forward"
    hints = []
    if matmul <= MATMUL_BOUND_SHARE and ops > OVERHEAD_MIN_OPS_PER_FORWARD:
        top = _top_ops(profile, lambda name: not is_matmul(name))
        hints.append(
            Hint(
                "framework-overhead",
                min(1 / (matmul + 0.05), 4.0),
                f"{ops:.0f} aten ops per forward; matmuls {matmul:.0%} of {per_forward}, "
                f"Python outside ops {python:.0%}; top non-matmul: {top}",
            )
        )
    if lm_head > LM_HEAD_MIN_SHARE:
        hints.append(
            Hint(
                "lm-head",
                1 / (1 - lm_head / 2),
                f"the LM head (vocab {profile.get('vocab_size')}) is {lm_head:.0%} of "
                f"{per_forward}",
            )
        )
    if attention > ATTENTION_MIN_SHARE:
        top = _top_ops(profile, lambda name: "attention" in name or "softmax" in name)
        hints.append(
            Hint(
                "attention",
                1 / (1 - attention / 2),
                f"attention is {attention:.0%} of {per_forward}; top: {top}",
            )
        )
    if matmul > MATMUL_BOUND_SHARE:
        hints.append(
            Hint(
                "matmul-bound",
                1.2,
                f"matmuls are {matmul:.0%} of {per_forward}: only fewer weight bytes, lower "
                "precision or more tokens per forward help",
            )
        )
    return hints


def derive_hints(report: dict[str, Any], profile: dict[str, Any] | None = None) -> list[Hint]:
    """Bottlenecks ranked by what fixing them could gain, from the run's own numbers and, when
    there is one, the candidate's profile."""
    performance = report["performance"]
    candidate = _row(report, "candidate")
    stats = performance.get("workload_stats", {})
    if not math.isnan(_number(candidate.get("chunk_latency_ms_p50"))):
        return sorted(audio_hints(candidate, stats), key=lambda h: h.estimated_gain, reverse=True)
    if not math.isnan(_number(candidate.get("image_latency_s_p50"))):
        from agents.image_hints import image_hints

        hints = image_hints(report, candidate)
        return sorted(hints, key=lambda h: h.estimated_gain, reverse=True)
    hints = []
    per_forward = _number(candidate.get("tokens_per_forward"))
    acceptable = _number(stats.get("accepted_per_16_median"))
    if per_forward <= ONE_TOKEN_PER_FORWARD and acceptable > 2:
        hints.append(
            Hint(
                "prediction-unused",
                (acceptable + 1) / 2,
                f"{per_forward:.2f} tokens per forward while the workload's predictions would "
                f"let ~{acceptable:.1f} of 16 drafted tokens be accepted",
            )
        )
    elif (
        per_forward > ONE_TOKEN_PER_FORWARD
        and acceptable > 2
        and per_forward < 0.6 * (acceptable + 1)
    ):
        # More tokens per forward do not come free: every drafted token is computed, and the
        # simulated ceiling assumes perfect re-alignment. Measured on the cpu workload: 1.34 ->
        # 3.1 tokens per forward (2.3x) bought 2.0x throughput at block 16, less at block 32.
        # Hence the square root: a ranking estimate, not a promise.
        hints.append(
            Hint(
                "low-acceptance",
                math.sqrt((acceptable + 1) / per_forward),
                f"{per_forward:.2f} tokens per forward against ~{acceptable + 1:.1f} possible in "
                "the workload's simulated verification",
            )
        )
    efficiency = _number(candidate.get("roofline_pct"))
    # The roofline is per token at batch 1; an engine emitting several tokens per forward beats
    # it while each forward still reads the weights slowly. Per forward: the share of the
    # memory bandwidth its weight reads reach (= roofline % / tokens per forward).
    per_read = efficiency / per_forward if per_forward > ONE_TOKEN_PER_FORWARD else efficiency
    if per_read < 60:
        evidence = (
            f"{efficiency:.0f}% of the batch-1 roofline "
            f"({_number(report['roofline']['roofline_tok_per_s']):.0f} tok/s)"
        )
        if per_forward > ONE_TOKEN_PER_FORWARD:
            evidence = (
                f"forwards read the weights at {per_read:.0f}% of the memory bandwidth "
                f"({evidence} at {per_forward:.2f} tokens per forward)"
            )
        hints.append(Hint("memory-bandwidth", min(60 / max(per_read, 1.0), 3.0), evidence))
    in_flight = _number(stats.get("concurrent_requests"))
    concurrent = int(in_flight) if in_flight > 1 else 1
    ttft, e2e = _number(candidate.get("ttft_p50_ms")), _number(candidate.get("e2e_p50_ms"))
    if concurrent <= 1 and e2e > 0 and ttft / e2e > 0.25:
        # one request at a time: TTFT is the prefill (with requests queued behind each other,
        # it is mostly waiting, and the shares below say more)
        hints.append(
            Hint("prefill-bound", 1 / (1 - ttft / e2e), f"TTFT is {ttft / e2e:.0%} of latency")
        )
    hints += concurrency_hints(report, candidate, stats, concurrent)
    if per_forward <= ONE_TOKEN_PER_FORWARD:
        hints.append(
            Hint("decode-bound", 1.2, f"TPOT p50 {_number(candidate.get('tpot_p50_ms')):.1f} ms")
        )
    hints += memory_hints(report, candidate)
    hints += grammar_hints(candidate, stats)
    if profile is not None:
        hints += profile_hints(profile)
    return sorted(hints, key=lambda hint: hint.estimated_gain, reverse=True)


def audio_hints(candidate: dict[str, Any], stats: dict[str, Any]) -> list[Hint]:
    """Audio streams, from what the engine reports (encoder frames, cross-attention frames,
    decode rows per forward) and the run's real-time factor. The shares of a transcript's cost
    below are the cpu scale's (asr-cpu, 20 s streams): decoding ~80%, re-encoding ~15%, the
    cross-attention projections ~5%."""
    hints = []
    streams = int(_number(stats.get("streams")) or 1)
    behind = _number(candidate.get("real_time_factor"))
    rows = _number(candidate.get("decode_rows_per_step"))
    if streams > 1 and rows < 1.2:
        queued = behind > AUDIO_BEHIND_RTF
        gain = math.sqrt(min(streams, BATCH_DECODE_SPEEDUP)) if queued else 1.05
        state = (
            f"behind real time (real-time factor {behind:.2f}): chunks of several streams wait "
            "together"
            if queued
            else f"keeping pace (real-time factor {behind:.2f}): chunks rarely wait together"
        )
        hints.append(
            Hint(
                "serial-decode",
                gain,
                f"{streams} streams, {rows:.2f} token rows per decoder forward; {state}",
            )
        )
    # every transcript decodes from the start token: decoding is most of the work whatever else
    # is done; the lean decoder's gain is the evidence for the estimate
    hints.append(
        Hint(
            "decode-bound",
            DECODE_STEP_GAIN,
            f"every chunk's transcript is decoded from its first token ({rows:.2f} rows per "
            "decoder forward); decoding is ~80% of a transcript's cost at the cpu scale",
        )
    )
    encoder = _number(candidate.get("encoder_frames_per_audio_frame"))
    if encoder > AUDIO_RECOMPUTE_MIN:
        hints.append(
            Hint(
                "encoder-recompute",
                1 / (1 - ENCODER_SHARE * (1 - 1 / encoder)),
                f"the encoder ran {encoder:.1f} frames per 20 ms frame of audio: every chunk "
                "re-encodes the stream from its start",
            )
        )
    cross = _number(candidate.get("cross_kv_frames_per_audio_frame"))
    if cross > AUDIO_RECOMPUTE_MIN:
        hints.append(
            Hint(
                "cross-kv-recompute",
                1 / (1 - CROSS_KV_SHARE * (1 - 1 / cross)),
                f"cross-attention keys/values projected for {cross:.1f} frames per frame of "
                "audio: every transcript projects all its frames again",
            )
        )
    p50, p99 = (
        _number(candidate.get("chunk_latency_ms_p50")),
        _number(candidate.get("chunk_latency_ms_p99")),
    )
    if p50 > 0 and p99 > AUDIO_TAIL_RATIO * p50 and behind <= AUDIO_BEHIND_RTF:
        hints.append(
            Hint(
                "thread-contention",
                1.05,
                f"chunk latency p99 {p99:.0f} ms is {p99 / p50:.1f}x its p50 while keeping pace",
            )
        )
    return hints


def grammar_hints(candidate: dict[str, Any], stats: dict[str, Any] | None = None) -> list[Hint]:
    """Constrained decoding, from what the engine reports (``grammar_forced_tokens`` and
    ``grammar_mask_ms`` per output token): forced tokens each still costing a forward, and mask
    work that is a visible share of a decode step; and from the workload's stats
    (``lookup_tokens_per_forward``): outputs that echo their prompt while the engine drafts
    nothing, or far less than lookup could."""
    hints = []
    lookup = _number((stats or {}).get("lookup_tokens_per_forward"))
    per_forward_now = _number(candidate.get("tokens_per_forward"))
    if lookup > ONE_TOKEN_PER_FORWARD and 0 < per_forward_now < LOOKUP_USED_SHARE * lookup:
        # every drafted token is computed, so the gain is less than the ratio (see low-acceptance)
        hints.append(
            Hint(
                "prompt-echo",
                math.sqrt(lookup / per_forward_now),
                f"{per_forward_now:.2f} tokens per forward where prompt lookup under the grammar "
                f"reaches ~{lookup:.1f} on this workload (simulated over the reference's outputs: "
                "sentinels, enum values and names echo the prompt)",
            )
        )
    forced = _number(candidate.get("forced_fraction"))
    per_forward = _number(candidate.get("tokens_per_forward"))
    if forced >= GRAMMAR_FORCED_MIN and per_forward <= ONE_TOKEN_PER_FORWARD:
        hints.append(
            Hint(
                "grammar-forced",
                1 / (1 - min(forced, 0.9)),
                f"{forced:.0%} of output tokens are forced by the grammar, yet every one costs "
                f"a forward ({per_forward:.2f} tokens per forward)",
            )
        )
    mask_ms, tpot = (
        _number(candidate.get("mask_ms_per_token")),
        _number(candidate.get("tpot_p50_ms")),
    )
    if mask_ms > 0 and tpot > 0 and mask_ms / tpot >= GRAMMAR_MASK_MIN_SHARE:
        share = min(mask_ms / tpot, 0.9)
        hints.append(
            Hint(
                "grammar-overhead",
                1 / (1 - share),
                f"grammar work is {mask_ms:.2f} ms per output token against a TPOT of "
                f"{tpot:.1f} ms ({share:.0%})",
            )
        )
    return hints


def memory_hints(report: dict[str, Any], candidate: dict[str, Any]) -> list[Hint]:
    """Peak memory well above the engine measured beside the candidate (the baseline row)."""
    baseline = next(
        (row for row in report["performance"]["table"] if row["engine"] == "baseline"), None
    )
    if baseline is None:
        return []
    mine, theirs = _number(candidate.get("peak_rss_mib")), _number(baseline.get("peak_rss_mib"))
    if not (mine > PEAK_MEMORY_RATIO * theirs and mine - theirs > PEAK_MEMORY_MIN_MIB):
        return []
    return [
        Hint(
            "peak-memory",
            # not a speed gain: ranks after every speed hint, so it is fixed when they run out
            1.01,
            f"peak RSS {mine:.0f} MiB against {theirs:.0f} MiB for the engine measured beside it",
        )
    ]


def decode_share(candidate: dict[str, Any], stats: dict[str, Any]) -> float:
    """The share of the run's wall time spent in decode steps, estimated from the run's own
    numbers: steps = (output tokens - one per request, from its prefill) / tokens per forward,
    each as long as a TPOT; the rest of the wall time is prefill (and idle arrival gaps). NaN
    when the numbers are missing."""
    tok_s = _number(candidate.get("output_tok_per_s"))
    tokens = _number(stats.get("output_tokens_total"))
    requests = _number(stats.get("requests"))
    per_forward = _number(candidate.get("tokens_per_forward"))
    tpot = _number(candidate.get("tpot_p50_ms")) / 1000
    if not (tok_s > 0 and tokens > 0 and requests > 0 and per_forward > 0 and tpot > 0):
        return math.nan
    steps = max(tokens - requests, 0.0) / max(per_forward, 1.0)
    return min(steps * tpot / (tokens / tok_s), 1.0)


def concurrency_hints(
    report: dict[str, Any], candidate: dict[str, Any], stats: dict[str, Any], concurrent: int
) -> list[Hint]:
    """Many requests in flight at once, sharing prompt prefixes: recomputed prefixes, one-row
    decode steps, decode steps far above their roofline."""
    hints = []
    decode = decode_share(candidate, stats)
    if math.isnan(decode):
        return hints
    prefill = 1 - decode
    shared = _number(stats.get("shared_prompt_fraction"))
    requests = int(_number(stats.get("requests")) or 0)
    hit = _number(candidate.get("prefix_hit_fraction"))
    if shared >= SHARED_PREFIX_MIN and requests > 1 and not hit >= shared / 2:
        # every request but the first could skip its shared prefix
        reuse = shared * (requests - 1) / requests
        reported = "not reported" if math.isnan(hit) else f"{hit:.0%}"
        hints.append(
            Hint(
                "prefix-recompute",
                1 / (1 - reuse * prefill),
                f"{shared:.0%} of each prompt is a prefix other requests share, the engine's "
                f"prefix-cache hits are {reported}, and prefill is ~{prefill:.0%} of the run",
            )
        )
    per_forward = _number(candidate.get("tokens_per_forward"))
    if concurrent > 1 and per_forward <= ONE_TOKEN_PER_FORWARD:
        speedup = min(concurrent, BATCH_DECODE_SPEEDUP)
        hints.append(
            Hint(
                "serial-decode",
                1 / (prefill + decode / speedup),
                f"{concurrent} requests may be in flight at once but every decode forward "
                f"emits {per_forward:.2f} tokens (one row); decode is ~{decode:.0%} of the run",
            )
        )
    roofline = report.get("roofline") or {}
    bandwidth = _number(roofline.get("read_bandwidth_gbs")) * 1e9
    flops = _number(roofline.get("matmul_gflops")) * 1e9
    weights = _number(roofline.get("model_bytes"))
    tpot = _number(candidate.get("tpot_p50_ms")) / 1000
    rows = max(per_forward, 1.0)
    if bandwidth > 0 and flops > 0 and weights > 0 and tpot > 0:
        # fp32 weights: model_bytes / 4 parameters, 2 FLOPs each per row
        ideal = max(weights / bandwidth, 2 * (weights / 4) * rows / flops)
        if tpot > DECODE_OVERHEAD_MIN * ideal and decode > 0.2:
            hints.append(
                Hint(
                    "decode-overhead",
                    1 / (prefill + decode * ideal / tpot),
                    f"a decode step over ~{rows:.1f} rows takes {tpot * 1000:.0f} ms against a "
                    f"roofline of {ideal * 1000:.0f} ms; decode is ~{decode:.0%} of the run",
                )
            )
    return hints


class Evaluator:
    def __init__(
        self,
        run: ScenarioRun,
        *,
        seed: int = 0,
        profile: bool = True,
        workload: dict | None = None,
    ) -> None:
        self.run = run
        self.seed = seed  # the public workload seed: the same every round, so rounds compare
        self.profiling = profile
        # Overrides of the rounds' workload (scenario.toml [loop] eval_workload): a round only
        # decides whether a candidate beats the best so far, on a subset of the benchmark's
        # requests; the final confirmation (full_workload=True) runs the scenario's own.
        self.workload = dict(workload or {})

    def profile(self, engine_dir: Path, *, work_dir: Path) -> tuple[dict[str, Any] | None, str]:
        """The candidate's profile (also in work_dir/profile.json) or, when it failed, why.

        A profile only sharpens the hints: its failure never fails the evaluation.
        """
        path = work_dir / "profile.json"
        work_dir.mkdir(parents=True, exist_ok=True)
        try:
            profile = profile_candidate(
                engine_dir,
                self.run.scenario_dir,
                self.run.scale,
                cache_dir=self.run.cache_dir or default_cache_dir(),
                threads=self.run.threads,
                seed=self.seed,
                model_path=_option(self.run.extra_args, "--vibeserve-model"),
            ).to_dict()
        except Exception as error:  # noqa: BLE001 - whatever went wrong becomes a note
            problem = f"no profile (the hints use the performance report only): {error}"
            path.write_text(json.dumps({"problem": problem}, indent=2))
            return None, problem
        path.write_text(json.dumps(profile, indent=2))
        return profile, ""

    def evaluate(
        self,
        engine_dir: Path,
        *,
        work_dir: Path,
        against: Path | None = None,
        against_ratio: float = 1.0,
        alone: bool = False,
        with_profile: bool = True,
        full_workload: bool = False,
    ) -> Evaluation:
        """Measure ``engine_dir``; ``ratio`` is always against the scenario's baseline.

        With ``against`` (an engine directory, e.g. the best engine so far) the same-run A/B runs
        against it instead, and the ratio is chained: ``measured * against_ratio``, where
        ``against_ratio`` is that engine's own ratio to the baseline. ``relative`` keeps the
        measured ratio, which is what acceptance compares.

        ``alone``: one run of the candidate without any baseline (``--vibeserve-baseline none``),
        for the engine that *is* the baseline (the loop's starter): its figures and hints, its
        ratio ``against_ratio`` by definition, at a quarter of an A/B's cost.

        ``with_profile=False`` skips the profile (and so the profile's hints) even when profiling is
        on: for a measurement no plan follows, such as the loop's final confirmation.
        ``full_workload=True`` drops the rounds' workload overrides.
        """
        if alone and against is not None:
            raise ValueError("alone=True measures no other engine: drop against")
        extra: tuple[str, ...] = ()
        if against is not None:
            extra = ("--vibeserve-baseline", str(against))
        elif alone:
            extra = ("--vibeserve-baseline", "none", "--vibeserve-repeats", "1")
        if not full_workload:
            extra += tuple(workload_args(self.workload))
        outcome = run_scenario_tests(
            self.run,
            engine_dir,
            select="performance",
            seed=self.seed,
            report_path=work_dir / "evaluator-report.json",
            log_path=work_dir / "evaluator.log",
            extra_args=extra,
        )
        report = outcome.report
        if report is None or report.get("performance") is None:
            return Evaluation(
                False,
                "",
                "",
                True,
                math.nan,
                math.nan,
                math.nan,
                math.nan,
                [],
                report,
                f"the performance run produced no measurement (pytest exit "
                f"{outcome.returncode}):\n{outcome.log_tail[-1500:]}",
            )
        performance = report["performance"]
        profile, profile_problem = None, "profiling is off"
        if self.profiling and with_profile:
            profile, profile_problem = self.profile(engine_dir, work_dir=work_dir)
        elif self.profiling:
            profile_problem = "not profiled: no plan follows this measurement"
        return Evaluation(
            ok=True,
            metric=performance["metric"],
            unit=performance["unit"],
            higher_is_better=performance["higher_is_better"],
            value=performance["candidate"],
            baseline=performance["candidate"] if alone else performance["baseline"],
            ratio=(1.0 if alone else performance["ratio"]) * against_ratio,
            noise=performance["noise"],
            hints=derive_hints(report, profile),
            report=report,
            profile=profile,
            profile_problem=profile_problem,
            against=str(against or ""),
            relative=1.0 if alone else performance["ratio"],
        )


def _option(args: tuple[str, ...], name: str) -> Path | None:
    """The value of ``name VALUE`` or ``name=VALUE`` among pytest arguments."""
    for at, arg in enumerate(args):
        if arg == name and at + 1 < len(args):
            return Path(args[at + 1])
        if arg.startswith(f"{name}="):
            return Path(arg.split("=", 1)[1])
    return None
