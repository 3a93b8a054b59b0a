"""The worker runner: timing in the parent, and every way an engine can fail becomes a verdict."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from pytest_vibeserve.contract import EngineSpec, Request
from pytest_vibeserve.metrics import compute_metrics
from pytest_vibeserve.runner import EngineFailure, EngineProcess, Limits, compile_cache_dir

COUNTING_ENGINE = """
from pytest_vibeserve.contract import Event

class Engine:
    def __init__(self, spec):
        self.queue, self.forwards = [], 0
    def add_request(self, request):
        self.queue.append([request, 0])
    def step(self):
        self.forwards += 1
        events = []
        for item in list(self.queue):
            request, done = item
            item[1] += 1
            finished = item[1] >= request.max_new_tokens
            events.append(Event(request.request_id, [request.prompt_token_ids[0] + done], finished))
            if finished:
                self.queue.remove(item)
        {extra}
        return events
    def has_unfinished_requests(self):
        return bool(self.queue)
    def counters(self):
        return {{"model_forward_calls": self.forwards}}

def create_engine(spec):
    {factory_extra}
    return Engine(spec)
"""


def make_engine(tmp_path: Path, extra: str = "", factory_extra: str = "pass") -> Path:
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir(exist_ok=True)
    source = COUNTING_ENGINE.format(extra=extra, factory_extra=factory_extra)
    (engine_dir / "engine.py").write_text(textwrap.dedent(source))
    return engine_dir


def requests(n: int = 3, tokens: int = 4) -> list[Request]:
    return [Request(f"r{i}", (10 * i + 1,), tokens) for i in range(n)]


FAST = Limits(load_timeout_s=60, step_timeout_s=3, memory_bytes=4 << 30)


def test_runs_requests_and_stamps_every_token(tmp_path):
    with EngineProcess(make_engine(tmp_path), EngineSpec("unused"), limits=FAST) as engine:
        result = engine.run(requests(), concurrency=2)
    assert result.outputs == {f"r{i}": [10 * i + 1 + k for k in range(4)] for i in range(3)}
    assert result.counters["model_forward_calls"] > 0
    for record in result.records.values():
        assert len(record.token_times) == 4
        assert record.sent_at <= record.token_times[0] <= record.finished_at
    metrics = compute_metrics(result)
    assert metrics.output_tokens == 12
    assert metrics.requests == 3
    assert result.peak_rss_bytes > 0


def test_arrival_offsets_delay_sending(tmp_path):
    with EngineProcess(make_engine(tmp_path), EngineSpec("unused"), limits=FAST) as engine:
        result = engine.run(requests(2), arrival_offsets_s=[0.0, 0.3])
    gap = result.records["r1"].sent_at - result.records["r0"].sent_at
    assert gap >= 0.29


def test_engine_sees_no_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    leak = (
        "import os\n    "
        "assert not any('SECRET' in k or 'API_KEY' in k for k in os.environ), sorted(os.environ)\n"
        "    assert os.environ['OMP_NUM_THREADS'] == '3'"
    )
    engine_dir = make_engine(tmp_path, factory_extra=leak)
    with EngineProcess(engine_dir, EngineSpec("unused", threads=3), limits=FAST) as engine:
        assert engine.run(requests(1)).outputs["r0"] == [1, 2, 3, 4]


def test_engine_compile_cache_is_keyed_by_its_code_and_kept_across_restarts(tmp_path):
    """torch.compile's caches (inductor, triton) point at a folder of the engine's own code:
    a restart of the same engine finds what its first start compiled; another engine (one byte
    of code apart) gets another folder; the folder is not under the engine's per-process home
    (deleted at close) nor under the vibeserve cache (reference outputs)."""
    report = (
        "import os, pathlib\n    "
        "pathlib.Path('seen.txt').write_text(os.environ['TORCHINDUCTOR_CACHE_DIR'] + '\\n' + "
        "os.environ['TRITON_CACHE_DIR'] + '\\n' + os.environ['HOME'])"
    )
    engine_dir = make_engine(tmp_path, factory_extra=report)
    first = compile_cache_dir(engine_dir)
    with EngineProcess(engine_dir, EngineSpec("x"), limits=FAST) as engine:
        engine.run(requests(1))
    inductor, triton, home = (engine_dir / "seen.txt").read_text().splitlines()
    assert (Path(inductor), Path(triton)) == (first / "inductor", first / "triton")
    assert not Path(inductor).is_relative_to(home)
    (engine_dir / "seen.txt").unlink()  # the engine's folder as it was: the same key again
    assert compile_cache_dir(engine_dir) == first
    (engine_dir / "engine.py").write_text((engine_dir / "engine.py").read_text() + "\n# v2\n")
    assert compile_cache_dir(engine_dir) != first
    assert compile_cache_dir(engine_dir).parent == first.parent


def test_engine_sees_which_gpus_it_may_use(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    check = "import os\n    assert os.environ.get('CUDA_VISIBLE_DEVICES') == '1', os.environ"
    with EngineProcess(make_engine(tmp_path, factory_extra=check), EngineSpec("x")) as engine:
        assert engine.run(requests(1)).outputs["r0"] == [1, 2, 3, 4]


def test_engine_runs_in_its_own_directory(tmp_path):
    check = f"import os\n    assert os.getcwd() == {str(tmp_path / 'engine')!r}, os.getcwd()"
    with EngineProcess(make_engine(tmp_path, factory_extra=check), EngineSpec("x")) as engine:
        assert engine.run(requests(1)).outputs["r0"] == [1, 2, 3, 4]


def test_exception_in_step_is_a_crash_with_the_traceback(tmp_path):
    engine_dir = make_engine(tmp_path, extra="raise RuntimeError('kernel exploded')")
    with EngineProcess(engine_dir, EngineSpec("x"), limits=FAST) as engine:
        with pytest.raises(EngineFailure) as failure:
            engine.run(requests())
    assert failure.value.kind == "crash"
    assert "kernel exploded" in str(failure.value)


def test_segfault_is_a_crash_naming_the_signal(tmp_path):
    engine_dir = make_engine(tmp_path, extra="import ctypes; ctypes.string_at(0)")
    with EngineProcess(engine_dir, EngineSpec("x"), limits=FAST) as engine:
        with pytest.raises(EngineFailure) as failure:
            engine.run(requests())
    assert failure.value.kind == "crash"
    assert "SIGSEGV" in str(failure.value)


def test_hang_is_detected_and_the_worker_killed(tmp_path):
    engine_dir = make_engine(tmp_path, extra="import time; time.sleep(3600)")
    limits = Limits(load_timeout_s=60, step_timeout_s=1.0)
    engine = EngineProcess(engine_dir, EngineSpec("x"), limits=limits)
    engine.start()
    pid = engine._process.pid
    try:
        with pytest.raises(EngineFailure) as failure:
            engine.run(requests())
    finally:
        engine.close()
    assert failure.value.kind == "hang"
    assert "no event for" in str(failure.value)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_memory_cap_fails_the_engine(tmp_path):
    grow = (
        "self.hog = getattr(self, 'hog', []) + [bytearray(64 << 20)]; import time; time.sleep(0.05)"
    )
    engine_dir = make_engine(tmp_path, extra=grow)
    limits = Limits(load_timeout_s=60, step_timeout_s=10, memory_bytes=300 << 20)
    with EngineProcess(engine_dir, EngineSpec("x"), limits=limits) as engine:
        with pytest.raises(EngineFailure) as failure:
            engine.run(requests(1, tokens=50))
    assert failure.value.kind == "oom"
    assert "over the cap" in str(failure.value)


def test_load_failure_names_the_missing_factory(tmp_path):
    engine_dir = tmp_path / "engine"
    engine_dir.mkdir()
    (engine_dir / "engine.py").write_text("x = 1\n")
    with pytest.raises(EngineFailure) as failure:
        EngineProcess(engine_dir, EngineSpec("x"), limits=FAST).start()
    assert failure.value.kind == "load"
    assert "create_engine" in str(failure.value)


def test_missing_engine_file_is_a_load_failure(tmp_path):
    with pytest.raises(EngineFailure, match=r"has no engine\.py"):
        EngineProcess(tmp_path, EngineSpec("x")).start()


def test_too_many_tokens_is_a_protocol_error(tmp_path):
    extra = "events = [type(e)(e.request_id, e.token_ids * 3, e.finished) for e in events]"
    with EngineProcess(make_engine(tmp_path, extra=extra), EngineSpec("x"), limits=FAST) as engine:
        with pytest.raises(EngineFailure) as failure:
            engine.run(requests(1, tokens=2))
    assert failure.value.kind == "protocol"
    assert "over its max_new_tokens=2" in str(failure.value)


def test_event_for_unknown_request_is_a_protocol_error(tmp_path):
    extra = "events.append(type(events[0])('ghost', [1], True)) if events else None"
    with EngineProcess(make_engine(tmp_path, extra=extra), EngineSpec("x"), limits=FAST) as engine:
        with pytest.raises(EngineFailure) as failure:
            engine.run(requests(1))
    assert failure.value.kind == "protocol"
    assert "'ghost'" in str(failure.value)


def test_engine_printing_to_stdout_does_not_break_the_protocol(tmp_path):
    engine_dir = make_engine(tmp_path, extra="print('debug output', flush=True)")
    with EngineProcess(engine_dir, EngineSpec("x"), limits=FAST) as engine:
        assert engine.run(requests(1)).outputs["r0"] == [1, 2, 3, 4]
        assert "debug output" in engine.log_tail()


def test_a_failed_engine_keeps_failing_with_the_same_reason(tmp_path):
    engine_dir = make_engine(tmp_path, extra="raise RuntimeError('boom')")
    with EngineProcess(engine_dir, EngineSpec("x"), limits=FAST) as engine:
        with pytest.raises(EngineFailure, match="boom"):
            engine.run(requests())
        with pytest.raises(EngineFailure, match="boom"):
            engine.run(requests())
