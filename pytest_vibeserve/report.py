"""The session's results as the JSON report the loop reads, and as a table for people."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

from pytest_vibeserve import __version__
from pytest_vibeserve.checkers.result import to_jsonable
from pytest_vibeserve.metrics import RunMetrics, median
from pytest_vibeserve.session import BASELINE, CANDIDATE, PerformanceRecord, VibeSession

REPORT_VERSION = 1
Row = dict[str, Any]  # one engine's medians in a record: an entry of ``table_rows``
Cell = Callable[[Row], str]


class Column(NamedTuple):
    name: str
    width: int  # characters, in a record's table (a summary gives all one width)
    cell: Cell


def _fixed(key: str, spec: str) -> Cell:
    return lambda row: format(row[key], spec)


def _optional(key: str, spec: str) -> Cell:
    """``-`` where the row lacks the metric (absent, None or NaN)."""

    def cell(row: Row) -> str:
        value = row.get(key)
        return "-" if value is None or math.isnan(value) else format(value, spec)

    return cell


def _stage(name: str) -> Cell:
    """An engine-reported stage's ms an image (``-``: that engine does not report it)."""

    def cell(row: Row) -> str:
        stages = row.get("image_stages_ms") or {}
        return f"{stages[name]:.1f}" if name in stages else "-"

    return cell


ENGINE_COLUMN = Column("engine", 18, lambda row: row["engine"])
PEAK_COLUMN = Column("peak MiB", 9, _fixed("peak_rss_mib", ".0f"))
ROOFLINE_COLUMN = Column("roofline %", 11, _optional("roofline_pct", ".0f"))
GOODPUT_COLUMN = Column("goodput r/s", 12, _optional("goodput_req_per_s", ".2f"))
TEXT_COLUMNS = (
    Column("tok/s", 8, _fixed("output_tok_per_s", ".1f")),
    Column("TTFT p50 ms", 12, _fixed("ttft_p50_ms", ".1f")),
    Column("TTFT p99 ms", 12, _fixed("ttft_p99_ms", ".1f")),
    Column("TPOT p50 ms", 12, _fixed("tpot_p50_ms", ".2f")),
    Column("e2e p50 ms", 11, _fixed("e2e_p50_ms", ".0f")),
    Column("e2e p99 ms", 11, _fixed("e2e_p99_ms", ".0f")),
    PEAK_COLUMN,
    ROOFLINE_COLUMN,
    Column("tok/fwd", 8, _fixed("tokens_per_forward", ".2f")),
    Column("prefix hit", 11, _optional("prefix_hit_fraction", ".0%")),
    GOODPUT_COLUMN,
)
# images, which put out no tokens: request sent -> image arrived (s), in place of tok/s and TTFT
IMAGE_P50_COLUMN = Column("image p50 s", 12, _optional("image_latency_s_p50", ".3f"))
IMAGE_LATENCY_COLUMNS = (
    IMAGE_P50_COLUMN,
    Column("image p90 s", 12, _optional("image_latency_s_p90", ".3f")),
    Column("image mean s", 13, _optional("image_latency_s_mean", ".3f")),
)
SUMMARY_LATENCIES = (
    ("TTFT p50", "ttft_p50_ms"),
    ("TTFT p99", "ttft_p99_ms"),
    ("TPOT p50", "tpot_p50_ms"),
    ("TPOT p99", "tpot_p99_ms"),
)


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def git_commit(path: Path) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    if done.returncode != 0:
        return "unknown"
    dirty = subprocess.run(
        ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
    return done.stdout.strip() + ("+dirty" if dirty else "")


def median_metrics(runs: list[RunMetrics]) -> dict[str, Any]:
    """Each metric's median over the runs (a dict-valued one, e.g. stage timings, per key)."""
    dicts = [run.to_dict() for run in runs]
    summary: dict[str, Any] = {}
    for key, first in dicts[0].items():
        if isinstance(first, dict):
            # in the order reported (a set's order changes with each process's string hashes)
            names = dict.fromkeys(name for d in dicts for name in d[key])
            summary[key] = {n: median([d[key][n] for d in dicts if n in d[key]]) for n in names}
        else:
            summary[key] = median([d[key] for d in dicts])
    return summary


def table_rows(record: PerformanceRecord) -> list[dict[str, Any]]:
    comparison = record.comparison
    runs = {CANDIDATE: comparison.candidate_runs, BASELINE: comparison.baseline_runs}
    runs.update(comparison.peers)
    runs = {role: role_runs for role, role_runs in runs.items() if role_runs}
    rows = []
    for role, role_runs in runs.items():
        summary = median_metrics(role_runs)
        efficiency = None
        if record.roofline is not None:
            efficiency = record.roofline.efficiency_pct(summary)
        rows.append(
            {
                "engine": role,
                "path": record.engines.get(role, ""),
                "runs": len(role_runs),
                **summary,
                "roofline_pct": efficiency,
            }
        )
    return rows


def is_image(rows: list[Row]) -> bool:
    """Rows of a text-to-image run: some engine's image latency was measured."""
    return any(math.isfinite(row.get("image_latency_s_p50", math.nan)) for row in rows)


def stage_columns(rows: list[Row]) -> list[Column]:
    """One column of ms an image per stage any engine reports, in the order first reported."""
    names = dict.fromkeys(name for row in rows for name in row.get("image_stages_ms") or {})
    return [Column(f"{name} ms", max(10, len(name) + 5), _stage(name)) for name in names]


def goodput_columns(rows: list[Row]) -> list[Column]:
    """An image run's goodput column, where an SLO was given (a text run's is always shown)."""
    measured = any(math.isfinite(row.get("goodput_req_per_s", math.nan)) for row in rows)
    return [GOODPUT_COLUMN] if measured else []


def table_columns(rows: list[Row]) -> list[Column]:
    """A record's table: the token columns, or for an image run (no tokens out: tok/s, TTFT and
    TPOT mean nothing there) its latencies and engine-reported stages instead."""
    if not is_image(rows):
        return [ENGINE_COLUMN, *TEXT_COLUMNS]
    image = [*IMAGE_LATENCY_COLUMNS, *stage_columns(rows)]
    return [ENGINE_COLUMN, *image, PEAK_COLUMN, ROOFLINE_COLUMN, *goodput_columns(rows)]


def _aligned(cells: list[str], widths: list[int]) -> str:
    """The first cell left-aligned, the others right-aligned, each padded to its width."""
    return "".join(
        cell.rjust(width) if i else cell.ljust(width)
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
    )


def correctness_section(session: VibeSession) -> dict[str, Any]:
    tests = [
        {"nodeid": o.nodeid, "outcome": o.outcome, "message": o.message}
        for o in session.outcomes.values()
        if o.kind == "correctness"
    ]
    checks = [{"nodeid": nodeid, **result.to_dict()} for nodeid, result in session.checks]
    return summarize_correctness(tests, checks)


def summarize_correctness(tests: list[dict], checks: list[dict]) -> dict[str, Any]:
    ran = [t for t in tests if t["outcome"] != "skipped"]
    return {
        "passed": bool(ran) and all(t["outcome"] == "passed" for t in ran),
        "reason": "" if ran else "no correctness test ran",
        "tests": tests,
        "checks": checks,
    }


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from the reports of several pytest-xdist workers of one session."""
    if not reports:
        raise ValueError("no reports to merge")
    merged = dict(reports[0])
    merged["reference_seconds"] = sum(r.get("reference_seconds") or 0.0 for r in reports)
    merged["correctness"] = summarize_correctness(
        [t for r in reports for t in r["correctness"]["tests"]],
        [c for r in reports for c in r["correctness"]["checks"]],
    )
    for key in ("performance", "roofline"):
        merged[key] = next((r[key] for r in reports if r[key] is not None), None)
    return merged


def headline_record(session: VibeSession) -> PerformanceRecord | None:
    """The first record measured as a headline (the report's ratio), else the first one."""
    records = session.performance
    return next((r for r in records if r.headline), records[0] if records else None)


def performance_section(session: VibeSession) -> dict[str, Any] | None:
    if not session.performance:
        return None
    headline = headline_record(session)
    comparison = headline.comparison
    tests = [o for o in session.outcomes.values() if o.kind == "performance"]
    return {
        "metric": comparison.metric,
        "unit": comparison.unit,
        "higher_is_better": comparison.higher_is_better,
        "baseline": comparison.baseline,
        "candidate": comparison.candidate,
        "ratio": comparison.ratio,
        "ratio_definition": "candidate/baseline if higher_is_better else baseline/candidate; "
        "> 1 means the candidate is better",
        "noise": comparison.noise,
        "repeats": comparison.repeats,
        "gates_passed": all(not r.gate_failures for r in session.performance)
        and all(o.outcome == "passed" for o in tests),
        "gate_failures": [msg for r in session.performance for msg in r.gate_failures],
        "gates_skipped": [msg for r in session.performance for msg in r.gates_skipped],
        "table": table_rows(headline),
        "workload": headline.workload,
        "workload_stats": headline.workload_stats,
        "comparisons": [
            {
                "nodeid": r.nodeid,
                "workload": r.workload,
                "label": r.label,
                "headline": r.headline,
                "table": table_rows(r),
                "peers_skipped": r.peers_skipped,
                "validity": r.validity,
                "slo": None if r.slo is None else r.slo.to_dict(),
                **r.comparison.to_dict(),
            }
            for r in session.performance
        ],
        "peers_skipped": headline.peers_skipped,
        "tests": [{"nodeid": o.nodeid, "outcome": o.outcome, "message": o.message} for o in tests],
    }


def _image_ceiling_lines(record: PerformanceRecord) -> list[str]:
    """Images: the FLOP ceiling and each engine's distance from it, then its stage timings."""
    roof = record.roofline
    image = roof.image
    minimal, reference = sum(image.minimal_flops.values()), sum(image.reference_flops.values())
    lines = [
        f"ceiling: {minimal / 1e9:.1f} GFLOP an image (exact minimal algorithm; the reference "
        f"data flow runs {reference / 1e9:.1f}) / peak matmul {roof.limits.matmul_gflops:.0f} "
        f"GFLOP/s fp32 = {image.fp32_s:.3f} s"
        + (
            ""
            if math.isnan(image.bf16_s)
            else f" (bf16: {roof.limits.matmul_bf16_gflops:.0f} GFLOP/s = {image.bf16_s:.3f} s)"
        )
        + f"; {roof.limits.threads} thread(s)"
    ]
    for row in table_rows(record):
        p50 = row.get("image_latency_s_p50", math.nan)
        if math.isnan(p50):
            continue
        stages = row.get("image_stages_ms") or {}
        staged = ", ".join(f"{k} {v:.0f}" for k, v in stages.items())
        precision, ceiling_s = image.ceiling(row.get("weight_bits", math.nan))
        lines.append(
            f"image latency {row['engine']}: p50 {p50:.3f} s, p90 "
            f"{row['image_latency_s_p90']:.3f} s = {ceiling_s / p50:.1%} of the {precision} "
            "ceiling" + (f"; engine-reported stages (ms): {staged}" if staged else "")
        )
    return lines


def build_report(session: VibeSession, rootdir: Path) -> dict[str, Any]:
    options = session.options
    contexts = list(session.contexts.values())
    context = contexts[0] if contexts else None
    roofline = None
    headline = headline_record(session)
    if headline is not None and headline.roofline is not None:
        roofline = headline.roofline.to_dict()
        summary = median_metrics(headline.comparison.candidate_runs)
        roofline["candidate_efficiency_pct"] = headline.roofline.efficiency_pct(summary)
    report = {
        "report_version": REPORT_VERSION,
        "vibeserve_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "scenario": context.scenario.name if context else None,
        "engine": context.engine_source(CANDIDATE) if context else None,
        "scale": options.scale,
        "device": context.device if context else options.device,
        "threads": context.threads if context else options.threads,
        "seed": options.seed,
        "model": str(context._model_dir) if context and context._model_dir else None,
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "commit": git_commit(rootdir),
        "engine_commit": git_commit(context.engine_dir(CANDIDATE))
        if context and not context.is_endpoint(CANDIDATE)
        else None,
        "correctness": correctness_section(session),
        "performance": performance_section(session),
        "roofline": roofline,
        # seconds this session spent computing reference outputs its cache lacked: a one-time
        # cost (the synthesis loop's budget excludes it from what later runs will take)
        "reference_seconds": sum(
            c._reference.computed_seconds for c in contexts if c._reference is not None
        ),
    }
    return to_jsonable(report)


def write_report(report: dict[str, Any], path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    partial.replace(path)


def format_table(record: PerformanceRecord) -> list[str]:
    comparison = record.comparison
    head = (
        f"workload {record.workload}: headline {comparison.metric} ({comparison.unit}, "
        f"{'higher' if comparison.higher_is_better else 'lower'} is better): candidate "
        f"{comparison.candidate:.4g}"
    )
    if comparison.baseline is None or comparison.ratio is None:
        head += (
            f" ± {comparison.noise:.1%} over {comparison.repeats} repeat(s), measured alone "
            "(no baseline)"
        )
    else:
        head += (
            f" vs baseline {comparison.baseline:.4g} = {comparison.ratio:.3f}x ± "
            f"{comparison.noise:.1%} over {comparison.repeats} alternating repeats"
        )
    rows = table_rows(record)
    columns = table_columns(rows)
    widths = [c.width for c in columns]
    lines = [head, _aligned([c.name for c in columns], widths)]
    lines += [_aligned([c.cell(row) for c in columns], widths) for row in rows]
    if record.roofline is not None and record.roofline.image is not None:
        lines.extend(_image_ceiling_lines(record))
    elif record.roofline is not None:
        roof = record.roofline
        lines.append(
            f"roofline: {roof.model_bytes / 2**20:.0f} MiB of weights / "
            f"{roof.limits.read_bandwidth_gbs:.1f} GB/s = {roof.decode_floor_ms:.2f} ms/token "
            f"({roof.roofline_tok_per_s:.0f} tok/s at batch 1); peak matmul "
            f"{roof.limits.matmul_gflops:.0f} GFLOP/s; {roof.limits.threads} thread(s)"
        )
    grammar = [
        f"{row['engine']} {row['forced_fraction']:.0%} forced"
        + ("" if math.isnan(mask) else f", {mask:.3f} ms mask/token")
        for row in rows
        if not math.isnan(row.get("forced_fraction", math.nan))
        for mask in [row.get("mask_ms_per_token", math.nan)]
    ]
    audio = [
        f"{row['engine']} p50 {row['chunk_latency_ms_p50']:.0f} / p90 "
        f"{row['chunk_latency_ms_p90']:.0f} / p99 {row['chunk_latency_ms_p99']:.0f} ms, "
        f"real-time factor {row['real_time_factor']:.2f}, {row['realtime_streams']:.2f} "
        "real-time streams"
        for row in rows
        if not math.isnan(row.get("chunk_latency_ms_p50", math.nan))
    ]
    if audio:  # audio streams: chunk sent -> its transcript arrived
        lines.append("chunk latency: " + "; ".join(audio))
    if grammar:  # constrained decoding: what the engines report of their grammar work
        lines.append("grammar (engine-reported, per output token): " + "; ".join(grammar))
    if record.slo is not None:
        lines.append(f"goodput SLOs (ms): {record.slo}")
    if record.validity:
        lines.append("outputs: " + "; ".join(f"{r} {v}" for r, v in record.validity.items()))
    for peer, why in record.peers_skipped.items():
        lines.append(f"peer {peer} skipped: {why}")
    if record.workload_stats:
        stats = ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in record.workload_stats.items()
        )
        lines.append(f"workload stats: {stats}")
    return lines


def format_summary(records: list[PerformanceRecord]) -> list[str]:
    """One table of every engine across a scenario's measurements: each record's output tok/s
    (by label; an image record's p50 image latency), then the headline record's latencies (ms)
    and goodput (an image headline: its image latencies and stages), and the roofline % of the
    first non-headline record (batch-1 speed against the memory-bandwidth limit). Empty for fewer
    than two records: the per-record table says it all."""
    if len(records) < 2:
        return []
    headline = next((r for r in records if r.headline), records[0])
    context = next((r for r in records if not r.headline), None)
    by_record = [{row["engine"]: row for row in table_rows(r)} for r in records]
    engines: list[str] = []
    for rows in by_record:
        engines += [name for name in rows if name not in engines]
    head_rows = by_record[records.index(headline)]
    context_rows = by_record[records.index(context)] if context is not None else {}
    per_record = [
        Column(f"{r.label} p50 s", 0, IMAGE_P50_COLUMN.cell)
        if is_image(list(rows.values()))
        else Column(f"{r.label} tok/s", 0, _fixed("output_tok_per_s", ".1f"))
        for r, rows in zip(records, by_record, strict=True)
    ]
    latencies = summary_latencies(list(head_rows.values()))
    columns = [c.name for c in (*per_record, *latencies)] + ["roofline %"]
    width = max(12, *(len(c) + 2 for c in columns))
    what = "image latencies" if is_image(list(head_rows.values())) else "latencies and goodput"
    lines = [
        f"summary (medians; {what} under {headline.label})",
        "engine".ljust(18) + "".join(c.rjust(width) for c in columns),
    ]
    for engine in engines:
        cells = [
            column.cell(rows[engine]) if engine in rows else "-"
            for column, rows in zip(per_record, by_record, strict=True)
        ]
        row = head_rows.get(engine)
        cells += ["-" if row is None else column.cell(row) for column in latencies]
        roof = context_rows.get(engine, {}).get("roofline_pct")
        cells.append("-" if roof is None else f"{roof:.0f}")
        lines.append(engine.ljust(18) + "".join(c.rjust(width) for c in cells))
    skipped = {p: why for r in records for p, why in r.peers_skipped.items()}
    lines += [f"peer {peer} skipped: {why}" for peer, why in skipped.items()]
    return lines


def summary_latencies(rows: list[Row]) -> list[Column]:
    """The headline's columns in a summary: TTFT/TPOT (ms) and goodput, or an image run's p90
    and mean latency (s; each record has its p50 column), stages (ms) and goodput if measured."""
    if not is_image(rows):
        ms = [Column(name + " ms", 0, _fixed(key, ".1f")) for name, key in SUMMARY_LATENCIES]
        return [*ms, GOODPUT_COLUMN]
    latencies = [c._replace(name=c.name.removeprefix("image ")) for c in IMAGE_LATENCY_COLUMNS]
    return [*latencies[1:], *stage_columns(rows), *goodput_columns(rows)]
