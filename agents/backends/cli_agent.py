"""The cli backend: any coding-agent command line (``claude -p``, ``aider``, a script) implements
the task, with a time limit.

The template comes from ``--vibeserve-cli-command`` and is a bash command line, run as
``bash -c COMMAND`` so that redirections and pipes work (``claude -p ... < {prompt_file}``). Its
placeholders are filled with ``shlex.quote``'d paths, so write them bare, never inside quotes:

- ``{prompt_file}`` (required): the task brief, written to
  ``reports/implementer-round-{n}-attempt-{k}.md`` of the workspace;
- ``{workspace}``: the engine directory, which is also the command's working directory (the agent
  works there and nowhere else; the workspace's git history and logs sit one level up).

Literal braces are written ``{{`` and ``}}`` (``str.format`` rules): ``$HOME`` or ``${{HOME}}``,
never ``${HOME}``. A bad template is a ValueError at construction.

The command runs in its own process group with stdin closed and stdout and stderr going to
``reports/implementer-round-{n}-attempt-{k}.log``. At the time limit the whole group, and after a
normal exit whatever it left running, gets SIGTERM and, 5 s later, SIGKILL. An attempt counts
only if some file under the engine directory changed (caches and the result file aside); the
agent's ``RESULT_FILE`` is read for the summary, then deleted.

It inherits the parent's environment (plus ``env``): this is the coding agent, whose credentials
are its own business. The engine it writes never sees that environment; the harness runs engines
later in its own scrubbed worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import string
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from agents.backends.base import BackendError, Implementation
from agents.backends.prompt import RESULT_FILE, build_task_prompt
from agents.planner import Task
from agents.skills import Skill

PLACEHOLDERS = ("prompt_file", "workspace")
EXAMPLE = "--vibeserve-cli-command 'claude -p --allowedTools Edit,Write,Bash < {prompt_file}'"
DEFAULT_TIMEOUT_S = 1800.0
KILL_GRACE_S = 5.0
KILL_SETTLE_S = 2.0  # how long a SIGKILLed group may take to vanish
LOG_TAIL_CHARS = 1500
REPORTS = "reports"  # next to engine/ in the workspace (agents.workspace)
# Scratch that a run of tools leaves behind and the workspace's .gitignore keeps out of history.
IGNORED_NAMES = frozenset(
    {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", ".hypothesis", RESULT_FILE}
)
# A probe value for the quoting check: a space and a quote survive only a bare placeholder.
_PROBE = "/vibeserve probe/it's"


def _template_error(template: str, problem: str) -> ValueError:
    return ValueError(
        f"cli command template {template!r}: {problem}. A template is a bash command line that "
        f"names {{prompt_file}} (the task brief) and may name {{workspace}} (the engine "
        f"directory, also the working directory), both bare, not in quotes; write literal "
        f"braces as {{{{ and }}}}. Example: {EXAMPLE}"
    )


def check_template(template: str) -> str:
    """Return ``template`` if it is a usable command line; raise ValueError saying why not."""
    try:
        shlex.split(template)
    except ValueError as error:
        raise _template_error(template, f"it does not split like a shell line ({error})") from None
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as error:
        raise _template_error(template, f"its braces do not parse ({error})") from None
    names = set()
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            suffix = (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raw = "{" + name + suffix + "}"
            raise _template_error(template, f"unknown placeholder {raw}")
        names.add(name)
    if "prompt_file" not in names:
        raise _template_error(template, "it does not name {prompt_file}")
    probed = template.format(**dict.fromkeys(PLACEHOLDERS, shlex.quote(_PROBE)))
    try:
        words = shlex.split(probed)
    except ValueError:
        words = []
    if sum(word.count(_PROBE) for word in words) != probed.count(shlex.quote(_PROBE)):
        raise _template_error(
            template, "a placeholder is inside quotes; the paths are quoted for you"
        )
    return template


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (symlinks by target), by posix relative path."""
    digests: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):  # symlinked folders are listed, not entered
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_NAMES)
        links = [d for d in dirs if Path(folder, d).is_symlink()]
        for name in sorted([*files, *links]):
            if name in IGNORED_NAMES or name.endswith((".pyc", ".pyo")):
                continue
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                digests[relative] = "link:" + os.readlink(path)
            else:
                digests[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs; zombies waiting for init do not count."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # gone meanwhile
        if int(group) == pgid and state != "Z":
            return True
    return False


def stop_group(process: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group of ``process``, SIGKILL what is left after ``grace_s``; reap,
    and return once the group is gone."""
    pgid = process.pid  # start_new_session=True made it the group leader
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        process.wait()
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or the group never looks empty
        if not _group_alive(pgid):
            break
        time.sleep(0.05)
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()
    # SIGKILL is delivered, not yet acted on, when killpg returns: on a busy machine the group's
    # other members may still run for a moment. Return once they are gone (bounded).
    deadline = time.monotonic() + KILL_SETTLE_S
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _next_attempt(reports: Path, round: int) -> int:
    pattern = re.compile(rf"^implementer-round-{round}-attempt-(\d+)\.(?:md|log)$")
    taken = [int(m.group(1)) for p in reports.iterdir() if (m := pattern.match(p.name))]
    return max(taken, default=0) + 1


def _tail(log: Path) -> str:
    try:
        with log.open("rb") as file:
            file.seek(max(0, log.stat().st_size - 4 * LOG_TAIL_CHARS))  # utf-8: <= 4 bytes a char
            text = file.read().decode(errors="replace")
    except OSError:
        text = ""
    return text[-LOG_TAIL_CHARS:].strip() or "(the log is empty)"


class CliBackend:
    name = "cli"
    # A coding agent may get it right on the next attempt, with the Judge's reasons in its brief.
    rejection_is_final = False

    def __init__(
        self,
        library: dict[str, Skill],
        template: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
        self.library = library
        self.template = check_template(template)
        self.timeout_s = timeout_s
        self.env = dict(env or {})

    def command_for(self, prompt_file: Path, engine_dir: Path) -> str:
        """The bash command line for one attempt, with the paths quoted in."""
        return self.template.format(
            prompt_file=shlex.quote(str(prompt_file)), workspace=shlex.quote(str(engine_dir))
        )

    def implement(self, task: Task, engine_dir: Path, feedback: list[str]) -> Implementation:
        engine_dir = engine_dir.resolve()
        if not engine_dir.is_dir():
            raise BackendError(f"engine directory {engine_dir} does not exist")
        reports = engine_dir.parent / REPORTS
        reports.mkdir(parents=True, exist_ok=True)
        attempt = _next_attempt(reports, task.round)
        stem = f"implementer-round-{task.round}-attempt-{attempt}"
        prompt_file, log = reports / f"{stem}.md", reports / f"{stem}.log"
        skill = self.library.get(task.skill)
        prompt_file.write_text(build_task_prompt(task, engine_dir, feedback, skill))
        result_file = engine_dir / RESULT_FILE
        result_file.unlink(missing_ok=True)  # a stale one from a crashed attempt is no answer
        command = self.command_for(prompt_file, engine_dir)
        before = tree_digest(engine_dir)
        started = time.monotonic()
        try:
            returncode = self._run(command, engine_dir, log)
            seconds = time.monotonic() - started
            if returncode != 0:
                how = f"was killed by signal {-returncode}" if returncode < 0 else "failed"
                raise BackendError(
                    f"the cli command {how} (exit code {returncode}); its log {log} ends:\n"
                    f"{_tail(log)}"
                )
            changed = _changed(before, tree_digest(engine_dir))
            if not changed:
                raise BackendError(
                    f"the command made no change to the engine; it must edit the files in "
                    f"{engine_dir} (its working directory). Its log {log} ends:\n{_tail(log)}"
                )
            result, note = _read_result(result_file)
        finally:
            result_file.unlink(missing_ok=True)  # never part of the engine's history
        fallback = f"{task.skill} via cli: {len(changed)} files changed"
        details = {
            "command": command,
            "log": str(log),
            "prompt_file": str(prompt_file),
            "seconds": round(seconds, 3),
            "changed_files": changed,
        }
        if note:
            details["result_note"] = note
        return Implementation(
            summary=result.get("summary", fallback),
            skills_used=result.get("skills_used", [task.skill]),
            expected=result.get("expected", ""),
            details=details,
        )

    def _run(self, command: str, engine_dir: Path, log: Path) -> int:
        with log.open("w") as out:
            out.write(f"$ cd {shlex.quote(str(engine_dir))} && {command}\n")
            out.flush()
            try:
                process = subprocess.Popen(
                    ["bash", "-c", command],
                    cwd=engine_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **self.env},
                    start_new_session=True,
                )
            except OSError as error:
                raise BackendError(f"cannot start the cli command ({error})") from None
            try:
                return process.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                raise BackendError(
                    f"the cli command ran over {self.timeout_s:g} s; its log: {log} (it was "
                    "stopped, with every process it started)"
                ) from None
            finally:
                stop_group(process)  # on a timeout, Ctrl-C, or what it left in the background


def _read_result(path: Path) -> tuple[dict, str]:
    """The fields of the agent's result file that are usable, and a note on what was not."""
    if not path.exists():
        return {}, f"{RESULT_FILE} was not written; the summary is a fallback"
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return {}, f"{RESULT_FILE} is not JSON ({error}); the summary is a fallback"
    if not isinstance(data, dict):
        return {}, f"{RESULT_FILE} is not a JSON object; the summary is a fallback"
    result: dict = {}
    bad: list[str] = []
    for key in ("summary", "expected"):
        if isinstance(data.get(key), str) and data[key].strip():
            result[key] = data[key].strip()
        elif key in data:
            bad.append(key)
    skills = data.get("skills_used")
    if isinstance(skills, list) and skills and all(isinstance(s, str) for s in skills):
        result["skills_used"] = list(skills)
    elif "skills_used" in data:
        bad.append("skills_used")
    missing = [k for k in ("summary", "skills_used", "expected") if k not in data]
    notes = []
    if bad:
        notes.append(f"malformed {', '.join(bad)}")
    if missing:
        notes.append(f"missing {', '.join(missing)}")
    return result, (f"{RESULT_FILE}: {'; '.join(notes)}; fallbacks used" if notes else "")
