"""Which environment variables hold credentials: one rule for every process the loop starts.

The Implementer's commands (``backends/tools.py``) and the Judge's and Evaluator's pytest runs
(``pytest_runs.py``) drop these names; engine workers go further and inherit only an allowlist
(``pytest_vibeserve/runner.py``).
"""

from __future__ import annotations

SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "AUTH")
SECRET_NAME_PREFIXES = ("ANTHROPIC_", "OPENAI_", "AWS_")


def is_secret_name(name: str) -> bool:
    """True for names that look like they hold a credential (``ANTHROPIC_API_KEY``,
    ``GITHUB_TOKEN``, ``DB_PASSWD``, ``AWS_REGION``)."""
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS) or upper.startswith(
        SECRET_NAME_PREFIXES
    )
