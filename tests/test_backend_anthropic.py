"""The anthropic backend, through the real SDK, against a scripted Messages API.

An ``httpx.MockTransport`` replays Messages API responses in the API's JSON shape and records
every request body, so the tests see exactly what the SDK would put on the wire.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agents.backends.anthropic_api import (
    AnthropicBackend,
    AttemptError,
    Usage,
    price_for,
    with_cache_breakpoints,
)
from agents.backends.base import BackendError
from agents.backends.prompt import RESULT_FILE, build_task_prompt
from agents.backends.tools import WorkspaceTools, scrubbed_environment
from agents.planner import Task
from agents.skills import Skill

try:  # anthropic>=2 talks through httpx2, its fork of httpx
    import httpx2 as httpx
except ImportError:
    import httpx

# The SDK warns on every call with a model it knows to be deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")

STARTER = Path(__file__).resolve().parent.parent / "scenarios/predicted_outputs/starter/engine.py"
KEY = "sk-ant-api03-test-0123456789abcdef"
MODEL = "claude-sonnet-4-5"
TASK = Task(round=3, skill="speculative-decoding", params={"k": 4}, size=2, why="hint: accept")
SKILL = Skill(
    name="speculative-decoding",
    description="Verify the prediction in one forward.",
    path=Path("skills/speculative-decoding/SKILL.md"),
    triggers=("accept",),
    scenarios=("predicted_outputs",),
    recipe=None,
    body="Feed the predicted tokens and keep the longest prefix that matches the argmax.",
)


# -- Messages API shapes --------------------------------------------------------------------------


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def tool_use(id_: str, name: str, **arguments) -> dict:
    return {"type": "tool_use", "id": id_, "name": name, "input": arguments}


def message(
    *content: dict,
    stop_reason: str | None = None,
    usage: tuple[int, int, int, int] = (100, 50, 0, 0),
) -> dict:
    """A Messages API response; ``usage`` is (input, output, cache write, cache read) tokens."""
    input_tokens, output_tokens, cache_write, cache_read = usage
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn"
    return {
        "id": "msg_01" + hashlib.sha256(json.dumps(content).encode()).hexdigest()[:22],
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_write,
            "cache_read_input_tokens": cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": cache_write,
                "ephemeral_1h_input_tokens": 0,
            },
            "service_tier": "standard",
        },
    }


def api_error(status: int, kind: str, detail: str, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={"type": "error", "error": {"type": kind, "message": detail}},
        headers={"request-id": "req_011test", **headers},
    )


Reply = dict | httpx.Response | Exception


class ScriptedAPI:
    """Answers each POST /v1/messages with the next scripted reply and records the request."""

    def __init__(self, *replies: Reply, repeat_last: bool = False) -> None:
        self.replies = list(replies)
        self.repeat_last = repeat_last
        self.requests: list[httpx.Request] = []

    @property
    def bodies(self) -> list[dict]:
        return [json.loads(request.content) for request in self.requests]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/messages"
        self.requests.append(request)
        if not self.replies:
            raise AssertionError("the backend sent more requests than the script has replies")
        reply = (
            self.replies[0] if self.repeat_last and len(self.replies) == 1 else self.replies.pop(0)
        )
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, httpx.Response):
            return reply
        return httpx.Response(200, json=reply, headers={"request-id": "req_011ok"})


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A loop workspace: engine/engine.py (the real starter), memory.md, a .git/ to protect."""
    root = tmp_path / "ws"
    (root / "engine").mkdir(parents=True)
    shutil.copy(STARTER, root / "engine" / "engine.py")
    (root / "memory.md").write_text("# Roadmap\n- speculative-decoding: todo\n")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]\n\tbare = false\n")
    return root


def make_backend(api: ScriptedAPI, **options) -> AnthropicBackend:
    options.setdefault("api_key", KEY)
    options.setdefault("model", MODEL)
    options.setdefault("max_retries", 2)
    options.setdefault("timeout_s", 5)
    client = httpx.Client(transport=httpx.MockTransport(api))
    return AnthropicBackend({SKILL.name: SKILL}, http_client=client, **options)


def tool_results(body: dict) -> dict[str, dict]:
    """The tool_result blocks of the newest user message of a request body, by tool_use_id."""
    content = body["messages"][-1]["content"]
    return {block["tool_use_id"]: block for block in content if block["type"] == "tool_result"}


def breakpoints(body: dict) -> int:
    blocks = [*body["system"], *body["tools"]]
    blocks += [block for m in body["messages"] for block in m["content"]]
    return sum("cache_control" in block for block in blocks)


# -- the tool-use loop ----------------------------------------------------------------------------

CHECK_SYNTAX = "python -c \"import ast,sys; ast.parse(open('engine.py').read())\""
RESULT = {
    "summary": "track the draft length for speculative verification",
    "skills_used": ["speculative-decoding"],
    "expected": "no change yet: sets up k=4 drafts (+0%)",
}
USAGES = [(2500, 80, 2100, 0), (40, 120, 1900, 2100), (30, 60, 200, 4000), (20, 150, 0, 4200)]
USAGES += [(10, 30, 0, 4400)]


def test_a_multi_turn_exchange_edits_the_engine_and_reports_its_result_and_cost(workspace):
    api = ScriptedAPI(
        message(
            text("Reading the engine first."),
            tool_use("toolu_01read", "read_file", path="engine.py"),
            usage=USAGES[0],
        ),
        message(
            tool_use(
                "toolu_02edit",
                "edit_file",
                path="engine.py",
                old="self.forwards = 0",
                new="self.forwards = 0\n        self.draft_len = 4",
            ),
            usage=USAGES[1],
        ),
        message(tool_use("toolu_03run", "run_command", command=CHECK_SYNTAX), usage=USAGES[2]),
        message(
            tool_use("toolu_04done", "write_file", path=RESULT_FILE, content=json.dumps(RESULT)),
            usage=USAGES[3],
        ),
        message(text("Done: the engine tracks k=4 drafts."), usage=USAGES[4]),
    )
    engine_dir = workspace / "engine"

    implementation = make_backend(api).implement(TASK, engine_dir, ["too many forwards"])

    assert "self.forwards = 0\n        self.draft_len = 4" in (engine_dir / "engine.py").read_text()
    assert not (engine_dir / RESULT_FILE).exists()
    assert implementation.summary == RESULT["summary"]
    assert implementation.skills_used == RESULT["skills_used"]
    assert implementation.expected == RESULT["expected"]
    # claude-sonnet-4-5: $3 in, $15 out, cache writes 1.25 x 3, cache reads 0.1 x 3 per MTok
    by_hand = sum(i * 3 + o * 15 + w * 3.75 + r * 0.30 for i, o, w, r in USAGES) / 1e6
    assert implementation.cost_usd == pytest.approx(by_hand)
    assert implementation.tokens == sum(map(sum, USAGES))
    assert implementation.details["turns"] == 5
    assert implementation.details["tool_calls"] == 4
    assert implementation.details["model"] == MODEL
    assert implementation.details["usage"]["cache_read_input_tokens"] == sum(u[3] for u in USAGES)

    bodies = api.bodies
    assert len(bodies) == 5
    first_message = bodies[0]["messages"][0]["content"][0]["text"]
    assert first_message == build_task_prompt(TASK, engine_dir, ["too many forwards"], SKILL)
    for body in bodies:
        assert body["model"] == MODEL
        names = [tool["name"] for tool in body["tools"]]
        assert names == ["read_file", "write_file", "edit_file", "list_files", "run_command"]
        assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
        assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
        assert 3 <= breakpoints(body) <= 4
    read = tool_results(bodies[1])["toolu_01read"]
    assert read["is_error"] is False and "class GreedyEngine" in read["content"]
    assert tool_results(bodies[2])["toolu_02edit"]["content"] == "replaced 1 match in engine.py"
    ran = tool_results(bodies[3])["toolu_03run"]
    assert ran["is_error"] is False and ran["content"].startswith("exit code 0")
    # The assistant turns go back verbatim, tool_use ids included.
    assert bodies[1]["messages"][1]["content"][1]["id"] == "toolu_01read"

    transcript = workspace / "reports" / "implementer-round-3.jsonl"
    events = [json.loads(line) for line in transcript.read_text().splitlines()]
    assert [e["event"] for e in events].count("response") == 5
    assert events[-1]["event"] == "result"
    assert KEY not in transcript.read_text()


def test_the_api_key_and_other_secrets_never_reach_a_command(workspace, monkeypatch):
    secrets = {
        "ANTHROPIC_API_KEY": KEY,
        "HF_TOKEN": "hf_secret_token_value",
        "MY_SERVICE_KEY": "service-key-value",
        "DB_PASSWORD": "hunter2-password-value",
        "AWS_REGION": "aws-region-value",
        "OPENAI_ORG": "openai-org-value",
        "INNOCENT_LOOKING": f"prefix-{KEY}",  # a copy of the key under a harmless name
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("HARMLESS_SETTING", "visible-value")
    api = ScriptedAPI(
        message(tool_use("toolu_env", "run_command", command="env; echo key=$ANTHROPIC_API_KEY")),
        message(text("Nothing to change.")),
    )

    make_backend(api, api_key=None).implement(TASK, workspace / "engine", [])

    # The key came from the environment and went only into the auth header (the SDK sends it as
    # x-api-key, or as a bearer token since anthropic 2).
    headers = api.requests[0].headers
    assert KEY in headers.get("x-api-key", "") + headers.get("authorization", "")
    output = tool_results(api.bodies[1])["toolu_env"]["content"]
    assert "HARMLESS_SETTING=visible-value" in output and "PATH=" in output
    assert "key=\n" in output
    for name, value in secrets.items():
        assert value not in output and f"{name}=" not in output
    assert KEY not in (workspace / "reports" / "implementer-round-3.jsonl").read_text()


def test_tools_reject_every_path_outside_their_confinement(workspace, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.py").write_text("untouched\n")
    engine_dir = workspace / "engine"
    (engine_dir / "escape").symlink_to(outside, target_is_directory=True)
    (engine_dir / "victim.py").symlink_to(outside / "victim.py")
    attempts = {
        "toolu_root_escape": ("edit_file", {"path": "../../x", "old": "a", "new": "b"}),
        "toolu_not_engine": ("write_file", {"path": "../x", "content": "pwned"}),
        "toolu_absolute": ("write_file", {"path": "/etc/passwd", "content": "pwned"}),
        "toolu_git_write": ("write_file", {"path": "../.git/config", "content": "pwned"}),
        "toolu_git_read": ("read_file", {"path": "../.git/config"}),
        "toolu_git_here": ("write_file", {"path": ".git/config", "content": "pwned"}),
        "toolu_link_dir": ("write_file", {"path": "escape/new.py", "content": "pwned"}),
        "toolu_link_file": ("edit_file", {"path": "victim.py", "old": "untouched", "new": "x"}),
        "toolu_abs_escape": ("write_file", {"path": str(tmp_path / "y"), "content": "pwned"}),
    }
    api = ScriptedAPI(
        message(*(tool_use(id_, name, **args) for id_, (name, args) in attempts.items())),
        message(text("Gave up.")),
    )

    make_backend(api).implement(TASK, engine_dir, [])

    results = tool_results(api.bodies[1])
    assert set(results) == set(attempts)
    assert all(result["is_error"] is True for result in results.values())
    assert "outside the workspace" in results["toolu_root_escape"]["content"]
    assert "outside the engine directory" in results["toolu_not_engine"]["content"]
    assert "outside the workspace" in results["toolu_absolute"]["content"]
    assert ".git" in results["toolu_git_write"]["content"]
    assert ".git" in results["toolu_git_read"]["content"]
    assert ".git" in results["toolu_git_here"]["content"]
    assert not (engine_dir / ".git").exists()
    assert "outside the workspace" in results["toolu_link_dir"]["content"]
    assert "outside the workspace" in results["toolu_link_file"]["content"]
    assert not (tmp_path / "x").exists() and not (workspace / "x").exists()
    assert not (tmp_path / "y").exists()
    assert list(outside.iterdir()) == [outside / "victim.py"]
    assert (outside / "victim.py").read_text() == "untouched\n"
    assert (workspace / ".git" / "config").read_text() == "[core]\n\tbare = false\n"


# -- retries and API failures ---------------------------------------------------------------------


def test_a_429_is_retried_after_retry_after_then_succeeds(workspace):
    api = ScriptedAPI(
        api_error(
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your limit.",
            **{"retry-after": "0", "retry-after-ms": "1"},
        ),
        message(text("No change needed.")),
    )

    implementation = make_backend(api).implement(TASK, workspace / "engine", [])

    assert len(api.requests) == 2
    assert implementation.summary == "No change needed."
    assert implementation.details["result_file"] == f"{RESULT_FILE} missing"


def test_a_500_that_never_clears_fails_after_max_retries_naming_the_status(workspace):
    failure = api_error(500, "api_error", "Internal server error", **{"retry-after-ms": "1"})
    api = ScriptedAPI(failure, repeat_last=True)

    with pytest.raises(BackendError, match=r"500.*Internal server error"):
        make_backend(api, max_retries=2).implement(TASK, workspace / "engine", [])
    assert len(api.requests) == 3


def test_an_api_failure_mid_attempt_still_reports_what_was_spent(workspace):
    api = ScriptedAPI(
        message(tool_use("toolu_l", "list_files"), usage=(1_000, 100, 0, 0)),
        api_error(529, "overloaded_error", "Overloaded", **{"retry-after-ms": "1"}),
        repeat_last=True,
    )

    with pytest.raises(AttemptError, match=r"529.*Overloaded") as raised:
        make_backend(api, max_retries=1).implement(TASK, workspace / "engine", [])
    assert len(api.requests) == 3
    assert raised.value.cost_usd == pytest.approx((1_000 * 3 + 100 * 15) / 1e6)
    assert raised.value.tokens == 1_100


def test_a_400_is_not_retried_and_its_message_is_reported(workspace):
    api = ScriptedAPI(api_error(400, "invalid_request_error", "max_tokens: too large"))

    with pytest.raises(BackendError, match=r"400.*max_tokens: too large"):
        make_backend(api).implement(TASK, workspace / "engine", [])
    assert len(api.requests) == 1


def test_a_read_timeout_is_retried_then_succeeds(workspace):
    api = ScriptedAPI(httpx.ReadTimeout("read timed out"), message(text("Fine.")))

    implementation = make_backend(api, max_retries=1).implement(TASK, workspace / "engine", [])

    assert len(api.requests) == 2
    assert implementation.summary == "Fine."


# -- refusals to start or to go on ----------------------------------------------------------------


def test_a_missing_api_key_names_the_variable_and_the_fix(monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)

    with pytest.raises(BackendError, match="ANTHROPIC_API_KEY") as raised:
        AnthropicBackend({})
    assert "export ANTHROPIC_API_KEY=" in str(raised.value)
    assert "--vibeserve-backend offline" in str(raised.value)


def test_running_out_of_turns_fails_and_keeps_the_edits(workspace):
    edit = tool_use("toolu_e", "write_file", path="notes.txt", content="half done")
    api = ScriptedAPI(message(edit), message(tool_use("toolu_l", "list_files")), message(edit))

    with pytest.raises(AttemptError, match=r"ran out of turns \(2\)") as raised:
        make_backend(api, max_turns=2).implement(TASK, workspace / "engine", [])
    assert len(api.requests) == 2
    assert (workspace / "engine" / "notes.txt").read_text() == "half done"
    assert raised.value.tokens == 2 * 150 and raised.value.cost_usd > 0


def test_an_attempt_over_its_dollar_budget_stops_before_running_more_tools(workspace):
    # 10k input + 2k output tokens of Sonnet = $0.03 + $0.03 = $0.06 > $0.04
    api = ScriptedAPI(
        message(
            tool_use("toolu_w", "write_file", path="late.txt", content="x"),
            usage=(10_000, 2_000, 0, 0),
        )
    )

    with pytest.raises(AttemptError, match=r"\$0\.04 \(dollars_per_attempt\)") as raised:
        make_backend(api, dollars_per_attempt=0.04).implement(TASK, workspace / "engine", [])
    assert "cost $0.06" in str(raised.value)
    assert raised.value.cost_usd == pytest.approx(0.06)
    assert len(api.requests) == 1
    assert not (workspace / "engine" / "late.txt").exists()


def test_a_refusal_is_a_backend_error(workspace):
    api = ScriptedAPI(message(text("I can't help with that."), stop_reason="refusal"))

    with pytest.raises(BackendError, match="refusal"):
        make_backend(api).implement(TASK, workspace / "engine", [])


def test_the_model_comes_from_the_environment_and_unknown_models_are_priced_as_opus(
    workspace, monkeypatch
):
    monkeypatch.setenv("VIBESERVE_ANTHROPIC_MODEL", "claude-future-9")
    api = ScriptedAPI(message(text("ok"), usage=(100_000, 0, 0, 0)))

    implementation = make_backend(api, model=None).implement(TASK, workspace / "engine", [])

    assert api.bodies[0]["model"] == "claude-future-9"
    assert implementation.cost_usd == pytest.approx(1.5)  # 100k input tokens at $15 per MTok
    assert "priced as Opus" in implementation.details["price_note"]


def test_a_malformed_result_file_falls_back_to_the_final_text(workspace):
    (workspace / "engine" / RESULT_FILE).write_text("stale from an earlier attempt")
    api = ScriptedAPI(
        message(tool_use("toolu_r", "write_file", path=RESULT_FILE, content="{not json")),
        message(text("Batched the verify forward.\nMore detail here.")),
    )

    implementation = make_backend(api).implement(TASK, workspace / "engine", [])

    assert implementation.summary == "Batched the verify forward."
    assert implementation.skills_used == [TASK.skill]
    assert implementation.details["result_file"].startswith(f"{RESULT_FILE} malformed")
    assert not (workspace / "engine" / RESULT_FILE).exists()


# -- pricing and caching, by hand -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "per_mtok_in", "per_mtok_out"),
    [
        ("claude-sonnet-4-5", 3, 15),
        ("claude-sonnet-4-5-20250929", 3, 15),
        ("claude-opus-4-1", 15, 75),
        ("claude-opus-4-6", 5, 25),
        ("claude-haiku-4-5", 1, 5),
        ("claude-sonnet-5", 2, 10),
    ],
)
def test_prices_follow_the_model_family(model, per_mtok_in, per_mtok_out):
    price, note = price_for(model)
    assert (price.input, price.output, note) == (per_mtok_in, per_mtok_out, "")
    usage = Usage(1_000_000, 1_000_000, 1_000_000, 1_000_000)
    expected = per_mtok_in * (1 + 1.25 + price.cache_read_factor) + per_mtok_out
    assert usage.cost_usd(price) == pytest.approx(expected)


def test_cache_breakpoints_mark_only_the_two_newest_user_messages():
    messages = [
        {"role": "user", "content": [text("task")]},
        {"role": "assistant", "content": [tool_use("a", "list_files")]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": "x"}]},
        {"role": "assistant", "content": [tool_use("b", "list_files")]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "b", "content": "y"}]},
    ]

    marked = with_cache_breakpoints(messages)

    assert ["cache_control" in m["content"][-1] for m in marked] == [0, 0, 1, 0, 1]
    assert not any("cache_control" in m["content"][-1] for m in messages)  # input untouched


# -- the tools on their own -----------------------------------------------------------------------


@pytest.fixture
def tools(workspace: Path) -> Callable[..., WorkspaceTools]:
    def make(**options) -> WorkspaceTools:
        return WorkspaceTools(workspace, workspace / "engine", **options)

    return make


def test_edit_file_needs_exactly_one_match(tools, workspace):
    engine = workspace / "engine" / "engine.py"
    before = engine.read_text()

    missing = tools().dispatch("edit_file", {"path": "engine.py", "old": "no such text", "new": ""})
    twice = tools().dispatch(
        "edit_file", {"path": "engine.py", "old": "self.emitted = 0", "new": "self.emitted = 1"}
    )

    assert missing.is_error and "0 matches" in missing.text
    assert twice.is_error and "matches 2 places" in twice.text
    assert engine.read_text() == before


def test_reading_is_allowed_across_the_workspace_but_writing_only_in_the_engine(tools, workspace):
    assert (
        "speculative-decoding: todo" in tools().dispatch("read_file", {"path": "../memory.md"}).text
    )
    denied = tools().dispatch("write_file", {"path": "../memory.md", "content": ""})
    assert denied.is_error and "outside the engine directory" in denied.text
    listing = tools().dispatch("list_files", {"path": ".."}).text.splitlines()
    assert "engine.py" in listing and "../memory.md" in listing
    assert not any(".git" in line for line in listing)


def test_bad_tool_calls_come_back_as_errors_not_exceptions(tools):
    assert tools().dispatch("delete_everything", {}).is_error
    assert "bad arguments" in tools().dispatch("read_file", {"file": "engine.py"}).text
    assert tools().dispatch("read_file", {"path": "nope.py"}).is_error


def test_command_output_is_truncated_with_a_note_and_failures_are_errors(tools):
    long = tools(max_output=1000).dispatch("run_command", {"command": "seq 1 100000"})
    failed = tools().dispatch("run_command", {"command": "echo oops >&2; exit 3"})

    assert not long.is_error and len(long.text) < 1200
    assert "characters cut" in long.text and long.text.rstrip().endswith("100000")
    assert (
        failed.is_error
        and failed.text.startswith("run_command: exit code 3")
        and "oops" in failed.text
    )


def test_a_command_over_its_timeout_is_killed_with_its_children(tools, workspace):
    result = tools(command_timeout_s=0.3).dispatch(
        "run_command", {"command": "echo started; sleep 30 & echo $! > child.pid; sleep 30"}
    )

    assert result.is_error and "timed out after 0.3 s" in result.text and "started" in result.text
    child = int((workspace / "engine" / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while running(child):
        assert time.monotonic() < deadline, "the background child outlived the timeout"
        time.sleep(0.01)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")  # a zombie is dead, only not yet reaped


def test_scrubbed_environment_keeps_what_python_needs():
    env = scrubbed_environment(
        {"PATH": "/usr/bin", "HOME": "/home/u", "LANG": "C.UTF-8", "GITHUB_TOKEN": "t"}
    )
    assert env["HOME"] == "/home/u" and env["LANG"] == "C.UTF-8"
    assert "/usr/bin" in env["PATH"] and "GITHUB_TOKEN" not in env
