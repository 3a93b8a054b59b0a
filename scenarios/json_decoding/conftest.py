"""Fixtures of scenario json_decoding (fixtures only: the logic lives in pytest_vibeserve)."""

import pytest

from pytest_vibeserve.workloads.json_schemas import build_json_workload


@pytest.fixture(scope="module")
def vibeserve_workload(vibeserve_context, vibeserve_tokenizer, vibeserve_reference, pytestconfig):
    """Schema requests in a closed loop, one in flight: the hand-written corpus at seed 0, schemas
    drawn from the seeded generator at any other seed (the Judge's held-out ones)."""
    seed = pytestconfig.getoption("vibeserve_seed")
    params = vibeserve_context.scale.workload
    return vibeserve_context.memo(
        f"json-{seed}",
        lambda: build_json_workload(params, vibeserve_tokenizer, vibeserve_reference, seed),
    )
