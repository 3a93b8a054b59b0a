"""A scripted coding agent for the cli backend's tests: a real program that reads the brief and
edits engine.py in its working directory, as a coding agent would, with no model behind it.

    python tests/scripted_agent.py --prompt FILE|- [--mode MODE] [--workspace DIR] [--pid-file F]

Modes: ``edit`` inserts ``SCRIPTED_<PARAM> = <value>`` lines after the imports of engine.py (and
a comment naming the skill), checks the file still parses and writes the result file the brief
names; ``no-result`` edits the same way but writes no result file; ``noop`` writes only the result
file; ``fail`` exits 3 with a message on stderr; ``sleep`` starts a child ``sleep 60``, writes its
pid to ``--pid-file`` and sleeps 60 s itself.

It imports nothing from the harness: everything it knows comes from the brief.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import time
from pathlib import Path

TITLE = re.compile(r"^# Round (\d+): apply the technique `([^`]+)`", re.MULTILINE)
PARAMS = re.compile(r"^Parameters to use: (.*)$", re.MULTILINE)
WORKDIR = re.compile(r"^Engine directory \(your working directory\): (.*)$", re.MULTILINE)
RESULT = re.compile(r"Write `([^`]+)` in the engine directory")


def parse_brief(text: str) -> dict:
    title, params, workdir, result = (p.search(text) for p in (TITLE, PARAMS, WORKDIR, RESULT))
    if not (title and params and workdir and result):
        raise SystemExit("scripted agent: the brief lacks a title, parameters, directory or result")
    values = {}
    if params.group(1).strip() != "none":
        for pair in params.group(1).split(", "):
            key, _, raw = pair.partition("=")
            try:
                values[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                values[key] = raw
    return {
        "round": int(title.group(1)),
        "skill": title.group(2),
        "params": values,
        "workdir": Path(workdir.group(1)),
        "result_file": result.group(1),
    }


def constant(key: str) -> str:
    return re.sub(r"\W", "_", key).upper()


def edit_engine(engine: Path, skill: str, params: dict) -> None:
    source = engine.read_text()
    tree = ast.parse(source)
    body = tree.body
    start = 1 if body and isinstance(body[0], ast.Expr) else 0  # after the module docstring
    after = 0
    for node in body[start:]:
        if not isinstance(node, ast.Import | ast.ImportFrom):
            break
        after = node.end_lineno
    block = [f"# scripted agent: applied {skill}"]
    block += [f"SCRIPTED_{constant(key)} = {value!r}" for key, value in params.items()]
    block += [f"SCRIPTED_SKILL = {skill!r}"]
    lines = source.splitlines(keepends=True)
    edited = "".join(lines[:after]) + "\n" + "\n".join(block) + "\n" + "".join(lines[after:])
    ast.parse(edited)  # the engine stays valid Python, or the agent fails loudly
    engine.write_text(edited)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", required=True, help="the brief, or - for stdin")
    parser.add_argument(
        "--mode", choices=("edit", "sleep", "fail", "noop", "no-result"), default="edit"
    )
    parser.add_argument("--workspace", type=Path, default=None)
    parser.add_argument("--pid-file", type=Path, default=None)
    args = parser.parse_args()

    if args.mode == "fail":
        print("scripted agent: failing on purpose", file=sys.stderr)
        return 3
    if args.mode == "sleep":
        child = subprocess.Popen(["sleep", "60"])
        if args.pid_file is not None:
            args.pid_file.write_text(str(child.pid))
        time.sleep(60)
        return 0

    text = sys.stdin.read() if args.prompt == "-" else Path(args.prompt).read_text()
    brief = parse_brief(text)
    cwd = Path.cwd().resolve()
    if brief["workdir"].resolve() != cwd:
        print(f"scripted agent: cwd {cwd} is not {brief['workdir']}", file=sys.stderr)
        return 5
    if args.workspace is not None and args.workspace.resolve() != cwd:
        print(f"scripted agent: --workspace {args.workspace} is not {cwd}", file=sys.stderr)
        return 5
    print(f"scripted agent: round {brief['round']}, {brief['skill']} {brief['params']}")
    if args.mode in ("edit", "no-result"):
        edit_engine(cwd / "engine.py", brief["skill"], brief["params"])
    if args.mode in ("edit", "noop"):
        result = {
            "summary": f"scripted {brief['skill']} with {brief['params']}",
            "skills_used": [brief["skill"]],
            "expected": "1.5x output tok/s",
        }
        (cwd / brief["result_file"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
