"""Workload of scenario ``json_decoding``: chat requests that carry a JSON schema.

Each request asks the model, through the chat template, for one JSON document: the system message
embeds the schema (as JSONSchemaBench's prompts do), the user message gives a task and a *sentinel*,
a fresh ``sx-`` code the document should echo in one string field (the paper's check that a model
under constraint still reads its prompt). The request carries the schema as an OpenAI
``response_format`` (``json_schema``, every request named ``"response"``, as many clients send
them: a grammar cache keyed on that name serves the wrong grammar), stops at EOS, and runs in a
closed loop, one request in flight.

Schemas: at seed 0 the hand-written corpus ``HAND`` (what JSONSchemaBench covers: flat and nested
objects, bounded arrays, enums and consts, numeric ranges, string formats and patterns, optional
properties, ``$defs``/``$ref``, ``anyOf``/``oneOf``) then generated ones; any other seed (the
Judge's) draws every schema from the seeded generator, so no engine has seen them. ``bounded``
schemas (the tiny scale: random weights never close a free string) hold only strings with a small
``maxLength``, enums, integers in a range, booleans and short arrays of those.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_vibeserve.contract import Request
from pytest_vibeserve.reference import Reference
from pytest_vibeserve.workload import Workload

SENTINEL_PREFIX = "sx-"
RESPONSE_NAME = "response"
LOOKUP_DRAFT = 16  # tokens drafted per forward in the simulated prompt lookup (workload stats)
LOOKUP_NGRAM = 4
DETERMINED_MARGIN = 1e9  # reference_impls.constrained.FORCED_MARGIN: the grammar decided it
SYSTEM = (
    "You are a helpful assistant that answers only with JSON. Your reply must be a single JSON "
    "document that follows this JSON schema:\n{schema}"
)


@dataclass(frozen=True, slots=True)
class SchemaCase:
    name: str  # for ids and reports
    task: str  # the user's request, before the sentinel sentence
    schema: dict[str, Any]
    sentinel_field: str | None = None  # a top-level string property to carry the sentinel

    def response_format(self) -> dict[str, Any]:
        spec = {"name": RESPONSE_NAME, "schema": self.schema, "strict": True}
        return {"type": "json_schema", "json_schema": spec}


def _obj(properties: dict[str, Any], required: list[str] | None = None, **extra) -> dict:
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    schema["required"] = list(properties) if required is None else required
    return schema | extra


def _text(max_length: int, **extra) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length} | extra


HAND: tuple[SchemaCase, ...] = (
    SchemaCase(
        "person",
        "Describe a fictional person who works at a bakery.",
        _obj(
            {
                "id": _text(16),
                "name": _text(40),
                "age": {"type": "integer", "minimum": 16, "maximum": 99},
                "email": {"type": "string", "format": "email", "maxLength": 48},
            }
        ),
        "id",
    ),
    SchemaCase(
        "order",
        "Write an order of two items from a hardware store.",
        _obj(
            {
                "order_id": _text(16),
                "customer": _obj({"name": _text(40), "city": _text(32)}),
                "items": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 3,
                    "items": _obj(
                        {
                            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                            "quantity": {"type": "integer", "minimum": 1, "maximum": 10},
                        }
                    ),
                },
                "total": {"type": "number", "minimum": 0, "maximum": 10000},
            }
        ),
        "order_id",
    ),
    SchemaCase(
        "ticket",
        "File a support ticket about a printer that does not turn on.",
        _obj(
            {
                "kind": {"const": "ticket"},
                "reference": _text(16),
                "priority": {"enum": ["low", "medium", "high", "urgent"]},
                "title": _text(60),
            }
        ),
        "reference",
    ),
    SchemaCase(
        "event",
        "Plan a community event in the park.",
        _obj(
            {
                "title": _text(48),
                "code": _text(16),
                "date": {"type": "string", "format": "date"},
                "tags": {"type": "array", "items": _text(16), "maxItems": 3},
            }
        ),
        "code",
    ),
    SchemaCase(
        "product",
        "Describe a new kind of water bottle for a shop's catalogue.",
        _obj(
            {
                "name": _text(40),
                "serial": _text(16),
                "price": {"type": "number", "minimum": 0, "maximum": 500},
                "description": _text(80),
                "in_stock": {"type": "boolean"},
            },
            required=["name", "serial", "price"],
        ),
        "serial",
    ),
    SchemaCase(
        "addresses",
        "Give the home and work addresses of a fictional office worker.",
        {
            "$defs": {
                "address": _obj(
                    {
                        "street": _text(40),
                        "city": _text(32),
                        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    }
                )
            },
            **_obj(
                {
                    "employee": _text(16),
                    "home": {"$ref": "#/$defs/address"},
                    "work": {"$ref": "#/$defs/address"},
                }
            ),
        },
        "employee",
    ),
    SchemaCase(
        "contact",
        "Record how to reach a fictional plumber.",
        _obj(
            {
                "handle": _text(16),
                "contact": {
                    "anyOf": [
                        _obj({"email": {"type": "string", "format": "email", "maxLength": 48}}),
                        _obj({"phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"}}),
                    ]
                },
            }
        ),
        "handle",
    ),
    SchemaCase(
        "shape",
        "Describe one geometric shape for a drawing program.",
        _obj(
            {
                "label": _text(16),
                "shape": {
                    "oneOf": [
                        _obj(
                            {
                                "type": {"const": "circle"},
                                "radius": {"type": "integer", "minimum": 1, "maximum": 100},
                            }
                        ),
                        _obj(
                            {
                                "type": {"const": "square"},
                                "side": {"type": "integer", "minimum": 1, "maximum": 100},
                            }
                        ),
                    ]
                },
            }
        ),
        "label",
    ),
    SchemaCase(
        "scores",
        "Report a student's test scores for the term.",
        _obj(
            {
                "student": _text(16),
                "scores": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 100},
                    "minItems": 2,
                    "maxItems": 5,
                },
                "passed": {"type": "boolean"},
            }
        ),
        "student",
    ),
    SchemaCase(
        "flight",
        "Describe a flight from Paris to Rome.",
        _obj(
            {
                "booking": _text(16),
                "flight": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3,4}$"},
                "seat_class": {"enum": ["economy", "business", "first"]},
                "manager": {"type": ["string", "null"], "maxLength": 32},
            }
        ),
        "booking",
    ),
)

FIELD_NAMES = (
    "name", "title", "label", "city", "color", "owner", "status", "category", "note", "brand",
    "author", "team", "level", "country", "mood", "style", "topic", "size", "shape", "plan",
)  # fmt: skip
ENUM_WORDS = (
    "red", "green", "blue", "small", "large", "open", "closed", "alpha", "beta", "gamma",
    "north", "south", "east", "west", "yes", "no", "new", "used", "gold", "silver",
)  # fmt: skip
TASKS = (
    "Describe a fictional {s}.",
    "Fill in the details of a {s} for a database.",
    "Invent a {s} for a children's story.",
    "Write a record about a {s} seen last week.",
)
SUBJECTS = (
    "garden", "robot", "library book", "sailing boat", "mountain hut", "jazz band", "bicycle",
    "museum exhibit", "coffee shop", "rocket", "chess club", "vineyard", "train station",
)  # fmt: skip


SHORT_WORD = {"type": "string", "pattern": "^[a-z]{1,5}$"}
SHORT_CODE = {"type": "string", "pattern": "^[a-z0-9-]{1,9}$"}  # holds a sentinel, sx-1a2b3c


def generate_schema(rng: random.Random, *, bounded: bool) -> SchemaCase:
    """One seeded object schema of 3-6 properties; ``bounded`` keeps every value short: 2-3
    properties, strings of a few ASCII letters (a byte-level model's random bytes would otherwise
    spell multi-byte characters, four tokens each), enums, integers, booleans, short arrays."""
    names = rng.sample(FIELD_NAMES, rng.randint(2, 3) if bounded else rng.randint(3, 6))
    properties: dict[str, Any] = {"ref": SHORT_CODE if bounded else _text(16)}
    kinds = ["text", "enum", "integer", "boolean", "array"]
    if not bounded:
        kinds += ["number", "date", "pattern", "nested", "ref", "anyof"]
    defs: dict[str, Any] = {}
    for name in names:
        kind = rng.choice(kinds)
        if kind == "text":
            properties[name] = SHORT_WORD if bounded else _text(rng.choice((24, 40)))
        elif kind == "enum":
            properties[name] = {"enum": rng.sample(ENUM_WORDS, rng.randint(2, 4))}
        elif kind == "integer":
            low = rng.randint(0, 50)
            properties[name] = {
                "type": "integer",
                "minimum": low,
                "maximum": low + rng.randint(1, 200),
            }
        elif kind == "boolean":
            properties[name] = {"type": "boolean"}
        elif kind == "array":
            item = {"enum": rng.sample(ENUM_WORDS, 3)} if bounded else _text(16)
            most = rng.randint(1, 2) if bounded else rng.randint(1, 3)
            properties[name] = {"type": "array", "items": item, "maxItems": most}
        elif kind == "number":
            properties[name] = {
                "type": "number",
                "minimum": 0,
                "maximum": rng.choice((1, 100, 1000)),
            }
        elif kind == "date":
            properties[name] = {"type": "string", "format": "date"}
        elif kind == "pattern":
            properties[name] = {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2,4}$"}
        elif kind == "nested":
            inner = rng.sample(FIELD_NAMES, 2)
            properties[name] = _obj(
                {inner[0]: _text(24), inner[1]: {"type": "integer", "minimum": 0, "maximum": 9}}
            )
        elif kind == "ref":
            defs["item"] = _obj(
                {"label": _text(24), "count": {"type": "integer", "minimum": 0, "maximum": 99}}
            )
            properties[name] = {"$ref": "#/$defs/item"}
        else:  # anyof
            properties[name] = {
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": 99},
                    {"enum": ["none", "many"]},
                ]
            }
    optional = [n for n in names if rng.random() < 0.25]
    required = [n for n in properties if n not in optional]
    schema = _obj(properties, required=required)
    if defs:
        schema = {"$defs": defs, **schema}
    task = rng.choice(TASKS).format(s=rng.choice(SUBJECTS))
    return SchemaCase(f"generated-{rng.randrange(16**6):06x}", task, schema, "ref")


def schema_cases(seed: int, count: int, *, bounded: bool) -> list[SchemaCase]:
    """``count`` cases: at seed 0 the hand-written corpus first (unbounded scales), then
    generated ones; at any other seed all generated, from a stream no other seed shares."""
    rng = random.Random(f"json-schemas:{seed}:{'bounded' if bounded else 'full'}")
    fixed = list(HAND) if seed == 0 and not bounded else []
    cases = fixed[:count]
    while len(cases) < count:
        cases.append(generate_schema(rng, bounded=bounded))
    return cases


def sentinel(rng: random.Random) -> str:
    return f"{SENTINEL_PREFIX}{rng.randrange(16**6):06x}"


def prompt_text(case: SchemaCase, code: str | None) -> tuple[str, str]:
    """(system, user) messages of one case."""
    schema = json.dumps(case.schema, separators=(",", ":"))
    user = case.task
    if code is not None and case.sentinel_field is not None:
        user += f' Set "{case.sentinel_field}" to "{code}".'
    return SYSTEM.format(schema=schema), user


def chat_ids(tokenizer: Any, system: str, user: str) -> list[int]:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return [int(t) for t in ids]


def lookup_forwards(
    prompt: Sequence[int],
    tokens: Sequence[int],
    determined: Sequence[bool],
    *,
    draft: int = LOOKUP_DRAFT,
    ngram: int = LOOKUP_NGRAM,
) -> int:
    """Forwards a decoder needs to produce ``tokens`` (the reference's output of one request) when
    tokens the grammar ``determined`` cost no forward of their own and, before each forward, up to
    ``draft`` tokens are guessed and verified at once: a determined token as it is, an open one
    the token after the latest earlier occurrence of the context's last 1..``ngram`` tokens
    (prompt and output so far). A forward decides each open token whose every draft before it was
    right; the first forward is the prefill (a document's determined opening comes before it).

    A property of the workload, not of an engine: it gives the Evaluator the tokens per forward
    that prompt lookup under the grammar could reach here, beside the candidate's."""
    if len(determined) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(determined)} determined flags")
    context: list[int] = []
    index: dict[tuple[int, ...], int] = {}

    def remember(token: int) -> None:
        at = len(context)
        context.append(token)
        for n in range(1, min(ngram, at) + 1):
            index[tuple(context[at - n : at])] = at

    def predict(tail: list[int]) -> int | None:
        for n in range(min(ngram, len(tail)), 0, -1):
            at = index.get(tuple(tail[-n:]))
            if at is not None:
                return context[at]
        return None

    for token in prompt:
        remember(token)
    i = 0
    while i < len(tokens) and determined[i]:
        remember(tokens[i])
        i += 1
    forwards = 0
    while i < len(tokens):
        drafts: list[int] = []
        tail = context[-ngram:]
        while len(drafts) < draft:
            q = i + len(drafts)
            guess = tokens[q] if q < len(tokens) and determined[q] else predict(tail)
            if guess is None:
                break
            drafts.append(guess)
            tail = [*tail[1 - ngram :], guess] if ngram > 1 else [guess]
        forwards += 1
        right = picked = 0
        while i < len(tokens):
            if not determined[i] and (right < picked or picked > len(drafts)):
                break
            if right == picked < len(drafts) and drafts[picked] == tokens[i]:
                right += 1
            remember(tokens[i])
            i += 1
            picked += 1
    return forwards


def build_json_workload(
    params: dict[str, Any], tokenizer: Any, reference: Reference, seed: int
) -> Workload:
    """``requests`` schema requests (``max_tokens`` each, default 256), one in flight at a time;
    ``facts[request_id]`` holds its ``sentinel``, ``schema`` and ``case`` name for the checks."""
    count = int(params.get("requests", 10))
    max_tokens = int(params.get("max_tokens", 256))
    bounded = bool(params.get("bounded_schemas", False))
    eos = tokenizer.eos_token_id
    stop = () if eos is None else (int(eos),)
    rng = random.Random(f"json-sentinels:{seed}")
    requests, sentinels, schemas, names = [], {}, {}, {}
    for i, case in enumerate(schema_cases(seed, count, bounded=bounded)):
        code = sentinel(rng)
        system, user = prompt_text(case, code)
        rid = f"json-{i}"
        requests.append(
            Request(
                rid,
                tuple(chat_ids(tokenizer, system, user)),
                max_tokens,
                stop,
                response_format=case.response_format(),
            )
        )
        sentinels[rid] = code
        schemas[rid] = case.schema
        names[rid] = case.name
    expected = reference.generate(requests)
    warm_case = SchemaCase("warmup", "Say hello.", _obj({"greeting": {"enum": ["hello", "hi"]}}))
    warm_ids = chat_ids(tokenizer, *prompt_text(warm_case, None))
    warmup = (
        Request("warmup-0", tuple(warm_ids), 8, stop, response_format=warm_case.response_format()),
    )
    return Workload(
        name=f"json-seed{seed}",
        requests=tuple(requests),
        expected={r.request_id: expected[r.request_id] for r in requests},
        concurrency=1,
        warmup=warmup,
        stats={
            "requests": len(requests),
            "hand_written": sum(1 for n in names.values() if not n.startswith("generated")),
            "max_tokens": max_tokens,
            "output_tokens_total": sum(len(expected[r.request_id].tokens) for r in requests),
            "lookup_tokens_per_forward": _lookup_tokens_per_forward(requests, expected),
        },
        facts={
            rid: {"sentinel": sentinels[rid], "schema": schemas[rid], "case": names[rid]}
            for rid in sentinels
        },
    )


def _lookup_tokens_per_forward(requests: Sequence[Request], expected: dict) -> float:
    """Output tokens per forward over the workload under simulated prompt lookup with the
    grammar's determined tokens free (``lookup_forwards``), from the reference's outputs."""
    tokens = forwards = 0
    for request in requests:
        out = expected[request.request_id]
        determined = [margin >= DETERMINED_MARGIN for margin in out.margins]
        tokens += len(out.tokens)
        forwards += lookup_forwards(request.prompt_token_ids, out.tokens, determined)
    return round(tokens / forwards, 2) if forwards else 0.0
