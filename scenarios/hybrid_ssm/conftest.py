"""Fixtures of scenario hybrid_ssm (fixtures only: the logic lives in pytest_vibeserve)."""

import pytest

from pytest_vibeserve.workloads.shared_prefix import (
    build_workload,
    mixed_params,
    near_miss_workload,
)


@pytest.fixture(scope="module")
def vibeserve_workload(vibeserve_context, vibeserve_tokenizer, vibeserve_reference, pytestconfig):
    seed = pytestconfig.getoption("vibeserve_seed")
    return vibeserve_context.memo(
        f"workload-{seed}",
        lambda: build_workload(
            vibeserve_context.scale.workload, vibeserve_tokenizer, vibeserve_reference, seed
        ),
    )


@pytest.fixture(scope="module")
def mixed_workload(vibeserve_context, vibeserve_tokenizer, vibeserve_reference, pytestconfig):
    """Requests over time, three prefixes interleaved: a cache must key, keep and evict right."""
    seed = pytestconfig.getoption("vibeserve_seed")
    return vibeserve_context.memo(
        f"mixed-{seed}",
        lambda: build_workload(
            mixed_params(vibeserve_context.scale.workload),
            vibeserve_tokenizer,
            vibeserve_reference,
            seed,
            name=f"shared-prefix-mixed-seed{seed}",
        ),
    )


@pytest.fixture(scope="module")
def near_miss(vibeserve_workload, vibeserve_tokenizer, vibeserve_reference, pytestconfig):
    """After a prefix is served: its twin but for the last token, and new tails on it."""
    seed = pytestconfig.getoption("vibeserve_seed")
    return near_miss_workload(vibeserve_workload, vibeserve_tokenizer, vibeserve_reference, seed)
