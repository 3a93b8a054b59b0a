"""Fixtures of scenario unified_multimodal (fixtures only: the logic lives in pytest_vibeserve)."""

import pytest

from pytest_vibeserve.workloads.images import build_workload, repeated_requests


@pytest.fixture(scope="module")
def vibeserve_workload(vibeserve_context, vibeserve_reference, pytestconfig):
    seed = pytestconfig.getoption("vibeserve_seed")
    return vibeserve_context.memo(
        f"workload-{seed}",
        lambda: build_workload(vibeserve_context.scale.workload, vibeserve_reference, seed),
    )


@pytest.fixture(scope="module")
def repeated_workload(vibeserve_context, vibeserve_reference, pytestconfig):
    """One prompt three times (again with the same noise but another probe step, then with other
    noise): what an engine caching images by prompt answers wrongly."""
    seed = pytestconfig.getoption("vibeserve_seed")
    params = vibeserve_context.scale.workload
    return vibeserve_context.memo(
        f"repeated-{seed}",
        lambda: build_workload(
            params,
            vibeserve_reference,
            seed,
            name=f"repeated-seed{seed}",
            requests=repeated_requests(params, seed),
        ),
    )
