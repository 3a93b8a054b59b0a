"""The cli backend against a real command: tests/scripted_agent.py, a scripted coding agent that
reads the brief and edits engine.py in a temporary workspace (engine/ and reports/)."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.backends.base import BackendError
from agents.backends.cli_agent import CliBackend, stop_group
from agents.backends.prompt import RESULT_FILE
from agents.planner import Task
from agents.skills import load_library

ROOT = Path(__file__).resolve().parent.parent
STARTER = ROOT / "scenarios" / "predicted_outputs" / "starter" / "engine.py"
AGENT = Path(__file__).resolve().parent / "scripted_agent.py"
SKILL = "prediction-block-verification"
TASK = Task(2, SKILL, {"block_size": 8}, 2, "prediction-unused -> block verification")
FEEDBACK = ["position 17: expected token 42, got 7"]


def agent(mode: str, *extra: str, prompt: str = "{prompt_file}") -> str:
    """A template running the scripted agent; ``extra`` and ``prompt`` go in as written."""
    return f"{shlex.join([sys.executable, str(AGENT), '--mode', mode])} {' '.join(extra)} " + (
        f"--prompt {prompt}"
    )


@pytest.fixture(scope="module")
def library():
    return load_library()


@pytest.fixture
def engine_dir(tmp_path: Path) -> Path:
    engine = tmp_path / "engine"
    engine.mkdir()
    shutil.copy(STARTER, engine / "engine.py")
    (tmp_path / "reports").mkdir()
    return engine


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that nobody reaped yet counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return not stat.parent.parent.is_dir()  # no /proc: kill(0) is all we know


def wait_for_pid(pid_file: Path, timeout_s: float = 5) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pid_file.exists() and (text := pid_file.read_text().strip()):
            return int(text)
        time.sleep(0.02)
    raise AssertionError(f"{pid_file} was not written in {timeout_s} s")


def test_edit_mode_changes_the_engine_and_reports_the_result_file(library, engine_dir: Path):
    before = (engine_dir / "engine.py").read_text()
    backend = CliBackend(library, agent("edit", "--workspace", "{workspace}"))
    done = backend.implement(TASK, engine_dir, FEEDBACK)

    engine = (engine_dir / "engine.py").read_text()
    assert engine != before
    assert "SCRIPTED_BLOCK_SIZE = 8" in engine.splitlines()
    ast.parse(engine)
    assert done.summary == f"scripted {SKILL} with {{'block_size': 8}}"
    assert done.skills_used == [SKILL]
    assert done.expected == "1.5x output tok/s"
    assert not (engine_dir / RESULT_FILE).exists()
    assert done.details["changed_files"] == ["engine.py"]
    assert "result_note" not in done.details
    assert done.details["seconds"] >= 0

    reports = engine_dir.parent / "reports"
    prompt = reports / "implementer-round-2-attempt-1.md"
    assert Path(done.details["prompt_file"]) == prompt
    text = prompt.read_text()
    assert f"`{SKILL}`" in text and FEEDBACK[0] in text and "block_size=8" in text
    log = Path(done.details["log"])
    assert log == reports / "implementer-round-2-attempt-1.log"
    assert f"round 2, {SKILL}" in log.read_text()
    assert shlex.quote(str(prompt)) in done.details["command"]


def test_attempts_in_one_round_are_numbered_and_keep_their_files(library, engine_dir: Path):
    backend = CliBackend(library, agent("edit"))
    backend.implement(TASK, engine_dir, [])
    backend.implement(TASK, engine_dir, FEEDBACK)
    backend.implement(Task(3, SKILL, {"block_size": 16}, 2, "tune"), engine_dir, [])

    names = sorted(p.name for p in (engine_dir.parent / "reports").iterdir())
    assert names == [
        f"implementer-round-{r}-attempt-{n}.{ext}"
        for r, n in ((2, 1), (2, 2), (3, 1))
        for ext in ("log", "md")
    ]
    reports = engine_dir.parent / "reports"
    assert FEEDBACK[0] not in (reports / "implementer-round-2-attempt-1.md").read_text()
    assert FEEDBACK[0] in (reports / "implementer-round-2-attempt-2.md").read_text()
    assert "SCRIPTED_BLOCK_SIZE = 16" in (engine_dir / "engine.py").read_text()


def test_a_timeout_kills_the_whole_process_group(library, engine_dir: Path, tmp_path: Path):
    pid_file = tmp_path / "grandchild.pid"
    backend = CliBackend(
        library, agent("sleep", "--pid-file", shlex.quote(str(pid_file))), timeout_s=1
    )
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"ran over 1 s; its log: .*attempt-1\.log"):
        backend.implement(TASK, engine_dir, [])
    assert time.monotonic() - started < 10

    grandchild = wait_for_pid(pid_file)
    try:
        assert not alive(grandchild), f"the agent's child sleep (pid {grandchild}) outlived it"
    finally:
        if alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_stop_group_kills_what_ignores_sigterm(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    stubborn = f"trap '' TERM; sleep 60 & echo $! > {shlex.quote(str(pid_file))}; wait"
    process = subprocess.Popen(["bash", "-c", stubborn], start_new_session=True)
    try:
        child = wait_for_pid(pid_file)
        started = time.monotonic()
        stop_group(process, grace_s=0.3)
        assert time.monotonic() - started < 3
        assert process.returncode == -signal.SIGKILL
        assert not alive(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def test_a_failing_command_reports_its_exit_code_and_stderr(library, engine_dir: Path):
    backend = CliBackend(library, agent("fail"))
    with pytest.raises(BackendError, match="exit code 3") as error:
        backend.implement(TASK, engine_dir, [])
    assert "scripted agent: failing on purpose" in str(error.value)


def test_a_command_that_changes_nothing_is_an_error(library, engine_dir: Path):
    before = (engine_dir / "engine.py").read_text()
    backend = CliBackend(library, agent("noop"))
    # noop writes the result file only: it is no change, and it is cleaned up anyway
    with pytest.raises(BackendError, match="no change to the engine"):
        backend.implement(TASK, engine_dir, [])
    assert (engine_dir / "engine.py").read_text() == before
    assert not (engine_dir / RESULT_FILE).exists()


def test_a_missing_result_file_gives_a_fallback_summary(library, engine_dir: Path):
    done = CliBackend(library, agent("no-result")).implement(TASK, engine_dir, [])
    assert done.summary == f"{SKILL} via cli: 1 files changed"
    assert done.skills_used == [SKILL]
    assert done.expected == ""
    assert "was not written" in done.details["result_note"]


def test_a_malformed_result_file_gives_a_fallback_summary(library, engine_dir: Path):
    script = f"echo '# edited' >> engine.py; echo '[1, 2' > {RESULT_FILE}; : {{prompt_file}}"
    done = CliBackend(library, script).implement(TASK, engine_dir, [])
    assert done.summary == f"{SKILL} via cli: 1 files changed"
    assert "is not JSON" in done.details["result_note"]
    assert not (engine_dir / RESULT_FILE).exists()


def test_a_result_file_with_a_bad_field_keeps_the_good_ones(library, engine_dir: Path):
    result = json.dumps({"summary": "blocks of 8", "skills_used": "oops", "expected": ""})
    quoted = shlex.quote(result).replace("{", "{{").replace("}", "}}")
    script = f"echo x >> engine.py; echo {quoted} > {RESULT_FILE} # {{prompt_file}}"
    done = CliBackend(library, script).implement(TASK, engine_dir, [])
    assert done.summary == "blocks of 8"
    assert done.skills_used == [SKILL]
    assert "malformed expected, skills_used" in done.details["result_note"]


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ("claude -p --allowedTools Edit", "does not name {prompt_file}"),
        ("agent {prompt_file} --out {foo}", "unknown placeholder {foo}"),
        ("agent {prompt_file} --home ${HOME}", "unknown placeholder {HOME}"),
        ("agent {prompt_file!r}", "unknown placeholder {prompt_file!r}"),
        ("agent {}", "unknown placeholder {}"),
        ("agent 'unbalanced {prompt_file}", "does not split like a shell line"),
        ("agent {prompt_file", "braces do not parse"),
        ("agent --file '{prompt_file}'", "placeholder is inside quotes"),
        ('agent --file "{prompt_file}"', "placeholder is inside quotes"),
    ],
)
def test_a_bad_template_is_refused_with_a_helpful_message(library, template, problem):
    with pytest.raises(ValueError, match="Example: --vibeserve-cli-command") as error:
        CliBackend(library, template)
    assert problem in str(error.value)
    assert "{workspace}" in str(error.value)


def test_good_templates_are_accepted(library):
    for template in (
        "claude -p --allowedTools Edit,Write,Bash < {prompt_file}",
        "aider --yes --message-file {prompt_file} {workspace}/engine.py",
        "agent --brief={prompt_file} | tee -a {{log}}.txt",
    ):
        assert CliBackend(library, template).template == template


def test_paths_with_spaces_and_quotes_reach_the_agent_intact(library, tmp_path: Path):
    root = tmp_path / "it's a work dir"
    engine = root / "engine"
    engine.mkdir(parents=True)
    shutil.copy(STARTER, engine / "engine.py")
    # the brief through a shell redirection, the engine dir as an argument
    template = agent("edit", "--workspace", "{workspace}", prompt="- < {prompt_file}")
    done = CliBackend(library, template).implement(TASK, engine, [])
    assert "SCRIPTED_BLOCK_SIZE = 8" in (engine / "engine.py").read_text()
    assert done.summary.startswith(f"scripted {SKILL}")
    assert (root / "reports" / "implementer-round-2-attempt-1.md").is_file()


def test_env_reaches_the_command(library, engine_dir: Path):
    script = 'echo "$VIBESERVE_TEST_MARK" >> engine.py # {prompt_file}'
    backend = CliBackend(library, script, env={"VIBESERVE_TEST_MARK": "# marked"})
    backend.implement(TASK, engine_dir, [])
    assert (engine_dir / "engine.py").read_text().endswith("# marked\n")
