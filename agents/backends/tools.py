"""The tools an LLM Implementer gets: read, write and edit files, list them, run a shell command.

File tools are confined to the workspace: reading anywhere under the root except ``.git``,
writing only under the engine directory. Relative paths start at the engine directory, the same
working directory that ``run_command`` uses and that the task prompt names. Every failure comes
back as a ``ToolResult`` with ``is_error`` set, for the model to read and recover from.

``run_command`` runs ``bash -c`` with a scrubbed environment (no API keys, tokens or passwords)
but no filesystem sandbox: run the loop in a container when the model is not trusted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.credentials import is_secret_name

REDACTED = "[redacted]"
MAX_LISTED_FILES = 500
KILL_GRACE_S = 5
SKIPPED_DIRS = frozenset({".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"})


@dataclass(frozen=True, slots=True)
class ToolResult:
    text: str
    is_error: bool = False


class ToolError(Exception):
    """A tool call the model got wrong; the message tells it what to do instead."""


def scrubbed_environment(environ: Mapping[str, str], secrets: Iterable[str] = ()) -> dict[str, str]:
    """``environ`` without credentials: secret-looking names, and any value holding a secret."""
    secrets = [secret for secret in secrets if secret]
    env = {
        name: value
        for name, value in environ.items()
        if not is_secret_name(name) and not any(secret in value for secret in secrets)
    }
    # `python` in a command must be the interpreter that runs the loop (it has torch and the
    # harness), even when the loop was started as .venv/bin/python without activating the venv.
    bin_dir = str(Path(sys.executable).parent)
    path = env.get("PATH", os.defpath)
    if bin_dir not in path.split(os.pathsep):
        env["PATH"] = bin_dir + os.pathsep + path
    if sys.prefix != sys.base_prefix:
        env.setdefault("VIRTUAL_ENV", sys.prefix)
    return env


def truncated(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its head and tail."""
    if len(text) <= limit:
        return text
    half = limit // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[... {cut} characters cut; the output had {len(text)} ...]\n" + (
        text[-half:] if half else ""
    )


class WorkspaceTools:
    def __init__(
        self,
        root: Path,
        writable: Path,
        *,
        command_timeout_s: float = 120,
        max_output: int = 20000,
        max_read: int = 200_000,
        environ: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        self.root = Path(root).resolve()
        self.writable = Path(writable).resolve()
        if not self.writable.is_relative_to(self.root):
            raise ValueError(f"writable dir {self.writable} is not inside the root {self.root}")
        self.command_timeout_s = command_timeout_s
        self.max_output = max_output
        self.max_read = max_read
        self.environ = environ  # None: os.environ at the time of each command
        self.secrets = tuple(secret for secret in secrets if secret)
        self._tools: dict[str, Callable[..., str]] = {
            "read_file": self.read_file,
            "write_file": self.write_file,
            "edit_file": self.edit_file,
            "list_files": self.list_files,
            "run_command": self.run_command,
        }

    # -- dispatch -------------------------------------------------------------------------------

    def dispatch(self, name: str, arguments: Mapping[str, Any]) -> ToolResult:
        """Run tool ``name``; never raises, every failure is an error result for the model."""
        tool = self._tools.get(name)
        if tool is None:
            return ToolResult(
                f"unknown tool {name!r}; the tools are {', '.join(self._tools)}", True
            )
        if not isinstance(arguments, Mapping):
            return ToolResult(f"{name}: the input must be a JSON object, got {arguments!r}", True)
        try:
            return ToolResult(self._redact(tool(**arguments)))
        except ToolError as error:
            return ToolResult(self._redact(f"{name}: {error}"), True)
        except TypeError as error:
            return ToolResult(f"{name}: bad arguments ({error}); see the tool's input schema", True)
        except (OSError, ValueError) as error:
            return ToolResult(self._redact(f"{name}: {type(error).__name__}: {error}"), True)

    def _redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    # -- paths ----------------------------------------------------------------------------------

    def _resolve(self, path: str, *, write: bool) -> Path:
        if not isinstance(path, str) or not path.strip():
            raise ToolError("path must be a non-empty string")
        given = Path(path)
        # resolve() follows every symlink on the way, so a link that points outside is caught.
        resolved = (given if given.is_absolute() else self.writable / given).resolve()
        if not resolved.is_relative_to(self.root):
            raise ToolError(
                f"{path!r} resolves to {resolved}, outside the workspace {self.root}; "
                "use a path inside the engine directory"
            )
        if ".git" in resolved.relative_to(self.root).parts:
            raise ToolError(f"{path!r} is inside .git, which the Implementer may not touch")
        if write and not resolved.is_relative_to(self.writable):
            raise ToolError(
                f"{path!r} resolves to {resolved}, outside the engine directory {self.writable}; "
                "only files under the engine directory may be written"
            )
        return resolved

    def _shown(self, path: Path) -> str:
        return os.path.relpath(path, self.writable)

    # -- tools ----------------------------------------------------------------------------------

    def read_file(
        self, path: str, start_line: int | None = None, end_line: int | None = None
    ) -> str:
        target = self._resolve(path, write=False)
        if not target.is_file():
            raise ToolError(f"{path!r} is not a file (use list_files to see what exists)")
        text = target.read_text(errors="replace")
        if start_line is not None or end_line is not None:
            lines = text.splitlines(keepends=True)
            first = max(int(start_line or 1), 1)
            last = int(end_line) if end_line is not None else len(lines)
            text = "".join(lines[first - 1 : last])
        if not text:
            return "(empty)"
        if len(text) > self.max_read:
            return (
                text[: self.max_read]
                + f"\n[... cut at {self.max_read} of {len(text)} characters; read the rest with "
                "start_line and end_line ...]"
            )
        return text

    def write_file(self, path: str, content: str) -> str:
        target = self._resolve(path, write=True)
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        if target.is_dir():
            raise ToolError(f"{path!r} is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        return f"wrote {len(content)} characters to {self._shown(target)}"

    def edit_file(self, path: str, old: str, new: str) -> str:
        target = self._resolve(path, write=True)
        if not target.is_file():
            raise ToolError(f"{path!r} is not a file; use write_file to create it")
        if not isinstance(old, str) or not isinstance(new, str) or not old:
            raise ToolError("old must be a non-empty string and new a string")
        if old == new:
            raise ToolError("old and new are identical; nothing would change")
        text = target.read_text()
        matches = text.count(old)
        if matches == 0:
            raise ToolError(
                f"old text not found in {path!r} (0 matches); read the file again and copy the "
                "text exactly, whitespace included"
            )
        if matches > 1:
            raise ToolError(
                f"old text matches {matches} places in {path!r}; include more surrounding lines "
                "so that it matches exactly once"
            )
        target.write_text(text.replace(old, new, 1))
        return f"replaced 1 match in {self._shown(target)}"

    def list_files(self, path: str = ".") -> str:
        top = self._resolve(path, write=False)
        if not top.is_dir():
            raise ToolError(f"{path!r} is not a directory")
        entries: list[str] = []
        for current, dirs, files in os.walk(top):
            dirs[:] = sorted(name for name in dirs if name not in SKIPPED_DIRS)
            here = Path(current)
            entries += [self._shown(here / name) + "/" for name in dirs]
            entries += [self._shown(here / name) for name in sorted(files)]
            if len(entries) > MAX_LISTED_FILES:
                break
        if not entries:
            return "(empty directory)"
        listing = sorted(entries[:MAX_LISTED_FILES])
        if len(entries) > MAX_LISTED_FILES:
            listing.append(f"[... more than {MAX_LISTED_FILES} entries; list a subdirectory ...]")
        return "\n".join(listing)

    def run_command(self, command: str) -> str:
        if not isinstance(command, str) or not command.strip():
            raise ToolError("command must be a non-empty string")
        environ = os.environ if self.environ is None else self.environ
        process = subprocess.Popen(
            ["bash", "-c", command],
            cwd=self.writable,
            env=scrubbed_environment(environ, self.secrets),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout kills its children too
        )
        try:
            output, _ = process.communicate(timeout=self.command_timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            try:
                output, _ = process.communicate(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                # A process that left the group (setsid, a daemon) still holds the pipe.
                process.stdout.close()
                output = b"[output lost: a background process that left the group holds it]"
            text = truncated(output.decode(errors="replace"), self.max_output)
            raise ToolError(
                f"timed out after {self.command_timeout_s} s and was killed; output so far:\n{text}"
            ) from None
        text = truncated(output.decode(errors="replace"), self.max_output)
        if process.returncode != 0:
            raise ToolError(f"exit code {process.returncode}\n{text}")
        return f"exit code 0\n{text}"

    def tool_schemas(self) -> list[dict[str, Any]]:
        """The Anthropic Messages API definitions of these tools."""
        path = {
            "type": "string",
            "description": "Relative to the engine directory (the working directory), or absolute.",
        }
        return [
            {
                "name": "read_file",
                "description": (
                    "Read a text file. Optional 1-based, inclusive start_line and end_line "
                    "read part of a long file."
                ),
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "path": path,
                        "start_line": {"type": "integer", "minimum": 1},
                        "end_line": {"type": "integer", "minimum": 1},
                    },
                    "required": ["path"],
                },
            },
            {
                "name": "write_file",
                "description": (
                    "Create or overwrite a file under the engine directory (parent directories "
                    "are created). Prefer edit_file to change an existing file."
                ),
                "input_schema": {
                    "type": "object",
                    "properties": {"path": path, "content": {"type": "string"}},
                    "required": ["path", "content"],
                },
            },
            {
                "name": "edit_file",
                "description": (
                    "Replace one exact occurrence of `old` with `new` in a file under the "
                    "engine directory. `old` must match exactly once, whitespace included; "
                    "add surrounding lines to make it unique."
                ),
                "input_schema": {
                    "type": "object",
                    "properties": {
                        "path": path,
                        "old": {"type": "string", "description": "The exact text to replace."},
                        "new": {"type": "string", "description": "The text to put in its place."},
                    },
                    "required": ["path", "old", "new"],
                },
            },
            {
                "name": "list_files",
                "description": "List the files under a directory, recursively (caches left out).",
                "input_schema": {
                    "type": "object",
                    "properties": {"path": {**path, "default": "."}},
                },
            },
            {
                "name": "run_command",
                "description": (
                    "Run a bash command in the engine directory; returns its exit code and "
                    "combined stdout/stderr (long output is cut in the middle). `python` is the "
                    "interpreter with torch and the harness. The environment holds no "
                    f"credentials; a command is killed after {self.command_timeout_s:g} s."
                ),
                "input_schema": {
                    "type": "object",
                    "properties": {"command": {"type": "string"}},
                    "required": ["command"],
                },
            },
        ]
