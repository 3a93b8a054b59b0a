"""Fixtures of the harness's own tests."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def vibeserve_cache(tmp_path_factory) -> Path:
    """Models and reference outputs shared by this test session (VIBESERVE_TEST_CACHE to reuse)."""
    if env := os.environ.get("VIBESERVE_TEST_CACHE"):
        return Path(env)
    return tmp_path_factory.mktemp("vibeserve-cache")
