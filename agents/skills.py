"""The skills library: ``skills/<kebab-name>/SKILL.md`` (Agent Skills format) read into objects.

Frontmatter: ``name`` (= folder), ``description`` (what and when), and ``metadata`` with
``triggers`` (Evaluator hint keywords), ``scenarios``, optional ``recipe`` (a script the offline
backend runs), ``params`` (the sweep space of the recipe, each a list of values) and ``covers``
(skills whose technique the recipe turns on when it is missing: the planner prefers the covering
skill when both answer the same hint equally).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SKILLS_DIR = Path(__file__).resolve().parent.parent / "skills"
NAME_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
MAX_DESCRIPTION = 1024
MAX_BODY_LINES = 500


class SkillError(ValueError):
    """A SKILL.md breaks the format; the message names the file and the rule."""


@dataclass(frozen=True, slots=True)
class Skill:
    name: str
    description: str
    path: Path
    triggers: tuple[str, ...]
    scenarios: tuple[str, ...]
    recipe: Path | None
    params: dict[str, list[Any]] = field(default_factory=dict)
    body: str = ""
    # skills whose technique this one's recipe turns on when it is missing (metadata.covers)
    covers: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """How much a recipe changes at once: the task-size unit of the planner's rules."""
        return 1 + len(self.params)

    def param_grid(self) -> list[dict[str, Any]]:
        """Every combination of the sweep space, in the order the SKILL.md lists values."""
        if not self.params:
            return [{}]
        keys = list(self.params)
        return [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*(self.params[k] for k in keys))
        ]


def parse_skill(skill_md: Path) -> Skill:
    text = skill_md.read_text()
    where = str(skill_md)
    if not text.startswith("---\n"):
        raise SkillError(f"{where}: must start with YAML frontmatter between '---' lines")
    try:
        _, front, body = text.split("---\n", 2)
        meta = yaml.safe_load(front) or {}
    except (ValueError, yaml.YAMLError) as error:
        raise SkillError(f"{where}: unreadable frontmatter: {error}") from None
    name = meta.get("name")
    folder = skill_md.parent.name
    if name != folder or not NAME_PATTERN.match(str(name)):
        raise SkillError(f"{where}: name {name!r} must be the kebab-case folder name {folder!r}")
    description = meta.get("description")
    if not isinstance(description, str) or not description.strip():
        raise SkillError(f"{where}: description (what it does and when to use it) is required")
    if len(description) > MAX_DESCRIPTION:
        raise SkillError(f"{where}: description is over {MAX_DESCRIPTION} characters")
    if body.count("\n") > MAX_BODY_LINES:
        raise SkillError(
            f"{where}: body is over {MAX_BODY_LINES} lines; move detail to references/"
        )
    extra = meta.get("metadata") or {}
    triggers = extra.get("triggers") or []
    if not isinstance(triggers, list) or not triggers:
        raise SkillError(f"{where}: metadata.triggers must be a non-empty list of hint keywords")
    recipe = extra.get("recipe")
    recipe_path = None
    if recipe is not None:
        recipe_path = (skill_md.parent / recipe).resolve()
        if not recipe_path.is_file():
            raise SkillError(f"{where}: metadata.recipe {recipe!r} does not exist")
    params = extra.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(v, list) and v for v in params.values()):
        raise SkillError(f"{where}: metadata.params maps each parameter to a non-empty list")
    covers = extra.get("covers") or []
    if not isinstance(covers, list) or not all(
        isinstance(c, str) and NAME_PATTERN.match(c) for c in covers
    ):
        raise SkillError(f"{where}: metadata.covers must be a list of skill names")
    if name in covers:
        raise SkillError(f"{where}: metadata.covers names the skill itself")
    return Skill(
        name=name,
        description=description.strip(),
        path=skill_md.parent,
        triggers=tuple(triggers),
        scenarios=tuple(extra.get("scenarios") or ()),
        recipe=recipe_path,
        params=params,
        body=body,
        covers=tuple(covers),
    )


def load_library(root: Path = SKILLS_DIR, *, scenario: str | None = None) -> dict[str, Skill]:
    skills = {}
    for skill_md in sorted(root.glob("*/SKILL.md")):
        skill = parse_skill(skill_md)
        if scenario is None or not skill.scenarios or scenario in skill.scenarios:
            skills[skill.name] = skill
    return skills
