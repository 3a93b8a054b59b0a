"""The ``anthropic`` backend: a Claude model edits the workspace engine through WorkspaceTools.

One attempt is a tool-use conversation over the Messages API (official SDK, which retries 408,
409, 429, 5xx, timeouts and connection errors and honours ``retry-after``): send, run every
``tool_use`` block, answer with ``tool_result`` blocks, until the model ends its turn. Prompt
caching marks the system prompt, the tool definitions and the two newest user messages (four
breakpoints, the API's limit), so each turn re-reads the conversation so far from the cache.

Every request and response is appended to ``reports/implementer-round-{n}.jsonl`` (never the
key), so a human can audit what the model saw and did.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic

from agents.backends.base import BackendError, Implementation
from agents.backends.prompt import RESULT_FILE, build_task_prompt
from agents.backends.tools import WorkspaceTools
from agents.planner import Task
from agents.skills import Skill
from agents.workspace import REPORTS

if TYPE_CHECKING:
    import httpx2  # the SDK's HTTP client (a fork of httpx since anthropic 2)

DEFAULT_MODEL = "claude-sonnet-5-5"
MODEL_ENV = "VIBESERVE_ANTHROPIC_MODEL"
KEY_ENV = "ANTHROPIC_API_KEY"
EPHEMERAL = {"type": "ephemeral"}
CACHE_WRITE_FACTOR = 1.25  # 5-minute cache writes cost 1.25x the input price

SYSTEM_PROMPT = f"""\
You are a performance engineer working on one LLM serving engine. You change it with the tools \
you have: read_file, edit_file, write_file, list_files and run_command, which all work in the \
engine directory. Make one focused change that applies the requested technique, keep every \
output token exactly the reference model's greedy choice, and check your work with run_command \
(at least that the engine still imports). Do not ask questions: nobody will answer until you \
finish. When you are done, write `{RESULT_FILE}` as the task describes, then end your turn with \
a one-line summary."""


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens; cache writes cost ``CACHE_WRITE_FACTOR`` x input."""

    input: float
    output: float
    cache_read_factor: float = 0.1


# Longest matching prefix wins. Source: platform.claude.com/docs/en/about-claude/pricing, read
# 2026-10; Haiku 5.5 is priced at its >100k-prompt tier, so spend is never under-reported.
PRICES: dict[str, Price] = {
    "claude-fable-5-1": Price(10, 50, 0.025),
    "claude-mythos-5-1": Price(10, 50, 0.025),
    "claude-fable": Price(10, 50),
    "claude-mythos": Price(10, 50),
    "claude-opus-5-5": Price(4, 20, 0.05),
    "claude-opus-5": Price(5, 25),
    "claude-opus-4-5": Price(5, 25),
    "claude-opus-4-6": Price(5, 25),
    "claude-opus-4-7": Price(5, 25),
    "claude-opus-4-8": Price(5, 25),
    "claude-opus-4": Price(15, 75),
    "claude-3-opus": Price(15, 75),
    "claude-sonnet-5-5": Price(2, 10, 0.05),
    "claude-sonnet-5": Price(2, 10),
    "claude-sonnet-4": Price(3, 15),
    "claude-3-7-sonnet": Price(3, 15),
    "claude-3-5-sonnet": Price(3, 15),
    "claude-haiku-5-5": Price(0.5, 2.5),
    "claude-haiku-4": Price(1, 5),
    "claude-3-5-haiku": Price(0.8, 4),
    "claude-3-haiku": Price(0.25, 1.25),
}
UNKNOWN_MODEL_PRICE = Price(15, 75)  # the dearest Opus, so a budget is never overrun unseen


def price_for(model: str) -> tuple[Price, str]:
    """The price of ``model`` and a note when it had to be guessed."""
    matches = [prefix for prefix in PRICES if model.startswith(prefix)]
    if matches:
        return PRICES[max(matches, key=len)], ""
    return UNKNOWN_MODEL_PRICE, f"no price known for {model!r}; priced as Opus 4 ($15/$75 per MTok)"


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0

    def add(self, usage: Any) -> None:
        self.input_tokens += usage.input_tokens or 0
        self.output_tokens += usage.output_tokens or 0
        self.cache_creation_input_tokens += getattr(usage, "cache_creation_input_tokens", 0) or 0
        self.cache_read_input_tokens += getattr(usage, "cache_read_input_tokens", 0) or 0

    @property
    def total(self) -> int:
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_creation_input_tokens
            + self.cache_read_input_tokens
        )

    def cost_usd(self, price: Price) -> float:
        per_token = price.input / 1e6
        return (
            self.input_tokens * per_token
            + self.cache_creation_input_tokens * per_token * CACHE_WRITE_FACTOR
            + self.cache_read_input_tokens * per_token * price.cache_read_factor
            + self.output_tokens * price.output / 1e6
        )


class AttemptError(BackendError):
    """A failed attempt that still spent money: ``cost_usd`` and ``tokens`` say how much."""

    def __init__(self, message: str, *, cost_usd: float, tokens: int) -> None:
        super().__init__(message)
        self.cost_usd = cost_usd
        self.tokens = tokens


@dataclass(slots=True)
class Progress:
    """What one attempt has done so far; kept when it fails, for the spend."""

    usage: Usage = field(default_factory=Usage)
    turns: int = 0
    tool_calls: int = 0
    final_text: str = ""  # the model's newest text, the summary when it writes no result file


class Transcript:
    """Append-only JSON lines of one round's conversations, for humans to audit."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, event: str, **fields: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(json.dumps({"event": event, **fields}, default=str) + "\n")


def with_cache_breakpoints(messages: list[dict]) -> list[dict]:
    """``messages`` with ``cache_control`` on the last block of the two newest user messages."""
    marked = list(messages)
    newest_users = [i for i, message in enumerate(messages) if message["role"] == "user"][-2:]
    for i in newest_users:
        content = list(messages[i]["content"])
        content[-1] = {**content[-1], "cache_control": EPHEMERAL}
        marked[i] = {**messages[i], "content": content}
    return marked


def api_error_message(error: anthropic.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", body["error"]))
    return str(body or error.message)


class AnthropicBackend:
    name = "anthropic"
    rejection_is_final = False

    def __init__(
        self,
        library: dict[str, Skill],
        *,
        model: str | None = None,
        api_key: str | None = None,
        http_client: httpx2.Client | None = None,
        max_turns: int = 40,
        max_tokens: int = 8192,
        max_retries: int = 4,
        timeout_s: float = 120,
        dollars_per_attempt: float = 5.0,
    ) -> None:
        self.library = library
        self.model = model or os.environ.get(MODEL_ENV) or DEFAULT_MODEL
        self._api_key = api_key or os.environ.get(KEY_ENV, "")
        if not self._api_key:
            raise BackendError(
                f"the anthropic backend needs an API key and {KEY_ENV} is not set; "
                f"`export {KEY_ENV}=...` or use --vibeserve-backend offline"
            )
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        self.dollars_per_attempt = dollars_per_attempt
        self.price, self.price_note = price_for(self.model)
        self._client = anthropic.Anthropic(
            api_key=self._api_key,
            http_client=http_client,
            max_retries=max_retries,
            timeout=timeout_s,
        )

    def implement(self, task: Task, engine_dir: Path, feedback: list[str]) -> Implementation:
        tools = WorkspaceTools(engine_dir.parent, engine_dir, secrets=[self._api_key])
        result_file = engine_dir / RESULT_FILE
        result_file.unlink(missing_ok=True)  # a stale one from an earlier attempt is not ours
        transcript = Transcript(
            engine_dir.parent / REPORTS / f"implementer-round-{task.round}.jsonl"
        )
        prompt = build_task_prompt(task, engine_dir, feedback, self.library.get(task.skill))
        progress = Progress()
        try:
            self._converse(tools, prompt, transcript, task, progress)
            summary, skills_used, expected, result_note = self._read_result(
                result_file, task, progress.final_text
            )
        except BackendError as error:
            result_file.unlink(missing_ok=True)
            transcript.write("error", message=str(error), usage=asdict(progress.usage))
            if isinstance(error, AttemptError):
                raise
            raise AttemptError(
                str(error),
                cost_usd=progress.usage.cost_usd(self.price),
                tokens=progress.usage.total,
            ) from error
        details = {
            "turns": progress.turns,
            "usage": asdict(progress.usage),
            "model": self.model,
            "tool_calls": progress.tool_calls,
            "result_file": result_note,
            "transcript": str(transcript.path),
        }
        if self.price_note:
            details["price_note"] = self.price_note
        implementation = Implementation(
            summary=summary,
            skills_used=skills_used,
            expected=expected,
            cost_usd=progress.usage.cost_usd(self.price),
            tokens=progress.usage.total,
            details=details,
        )
        transcript.write("result", implementation=asdict(implementation))
        return implementation

    def _converse(
        self,
        tools: WorkspaceTools,
        prompt: str,
        transcript: Transcript,
        task: Task,
        progress: Progress,
    ) -> None:
        """Run the tool-use loop until the model ends its turn; ``progress`` keeps the tally."""
        system = [{"type": "text", "text": SYSTEM_PROMPT, "cache_control": EPHEMERAL}]
        definitions = tools.tool_schemas()
        definitions[-1] = {**definitions[-1], "cache_control": EPHEMERAL}
        messages: list[dict] = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
        transcript.write(
            "start", model=self.model, task=asdict(task), system=system, tools=definitions
        )
        sent = 0  # messages already in the transcript
        while progress.turns < self.max_turns:
            progress.turns += 1
            transcript.write("request", turn=progress.turns, new_messages=messages[sent:])
            sent = len(messages)
            response = self._create(system, definitions, with_cache_breakpoints(messages))
            progress.usage.add(response.usage)
            cost = progress.usage.cost_usd(self.price)
            transcript.write(
                "response", turn=progress.turns, response=response.to_dict(), cost_usd=cost
            )
            content = [block.to_dict() for block in response.content]
            messages.append({"role": "assistant", "content": content})
            if cost > self.dollars_per_attempt:
                raise BackendError(
                    f"the attempt cost ${cost:.2f}, over its budget of "
                    f"${self.dollars_per_attempt:.2f} (dollars_per_attempt); stopped at turn "
                    f"{progress.turns}"
                )
            text = "\n".join(b.text for b in response.content if b.type == "text").strip()
            progress.final_text = text or progress.final_text
            tool_uses = [block for block in response.content if block.type == "tool_use"]
            if tool_uses:
                progress.tool_calls += len(tool_uses)
                messages.append({"role": "user", "content": self._run_tools(tools, tool_uses)})
            elif response.stop_reason in ("end_turn", "stop_sequence"):
                return
            elif response.stop_reason == "max_tokens":
                cut = f"Your reply was cut at max_tokens={self.max_tokens}; go on in smaller steps."
                messages.append({"role": "user", "content": [{"type": "text", "text": cut}]})
            elif response.stop_reason != "pause_turn":  # pause_turn: send it back as it is
                raise BackendError(
                    f"the model stopped with {response.stop_reason!r} at turn {progress.turns}: "
                    f"{text[:300]!r}"
                )
        raise BackendError(
            f"the model ran out of turns ({self.max_turns}) before it finished; its edits are "
            "left in the engine directory"
        )

    def _create(self, system: list[dict], tools: list[dict], messages: list[dict]) -> Any:
        try:
            return self._client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=system,
                tools=tools,
                messages=messages,
            )
        except anthropic.APIStatusError as error:
            raise BackendError(
                f"the Anthropic API answered {error.status_code} "
                f"(after up to {self.max_retries} retries): {api_error_message(error)}"
            ) from error
        except anthropic.APIConnectionError as error:  # includes APITimeoutError
            raise BackendError(
                f"could not reach the Anthropic API after {self.max_retries} retries: "
                f"{type(error).__name__}: {error}"
            ) from error
        except anthropic.APIError as error:
            raise BackendError(f"the Anthropic API call failed: {error}") from error

    def _run_tools(self, tools: WorkspaceTools, tool_uses: list[Any]) -> list[dict]:
        results = []
        for block in tool_uses:
            outcome = tools.dispatch(block.name, block.input)
            results.append(
                {
                    "type": "tool_result",
                    "tool_use_id": block.id,
                    "content": outcome.text,
                    "is_error": outcome.is_error,
                }
            )
        return results

    def _read_result(
        self, result_file: Path, task: Task, final_text: str
    ) -> tuple[str, list[str], str, str]:
        """(summary, skills_used, expected, note) from the result file, else the final text."""
        lines = final_text.strip().splitlines()
        fallback = lines[0][:200] if lines else f"{task.skill} {task.params} (no summary given)"
        if not result_file.is_file():
            return fallback, [task.skill], "", f"{RESULT_FILE} missing"
        raw = result_file.read_text(errors="replace")
        result_file.unlink()  # not part of the engine, so never committed
        try:
            result = json.loads(raw)
        except json.JSONDecodeError as error:
            return fallback, [task.skill], "", f"{RESULT_FILE} malformed: {error}"
        if not isinstance(result, dict):
            return fallback, [task.skill], "", f"{RESULT_FILE} malformed: not a JSON object"
        summary = result.get("summary")
        if isinstance(summary, str) and summary.strip():
            fallback = summary.strip().splitlines()[0]  # one line: it becomes a commit message
        skills = result.get("skills_used")
        if (
            not skills
            or not isinstance(skills, list)
            or not all(isinstance(s, str) for s in skills)
        ):
            skills = [task.skill]
        expected = result.get("expected", "")
        return (
            fallback,
            skills,
            expected if isinstance(expected, str) else json.dumps(expected),
            "read",
        )
