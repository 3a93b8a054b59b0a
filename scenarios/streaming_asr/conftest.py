"""Fixtures of scenario streaming_asr (fixtures only: the logic lives in pytest_vibeserve)."""

import pytest

from pytest_vibeserve.workloads.speech import build_workload


@pytest.fixture(scope="module")
def vibeserve_workload(vibeserve_context, vibeserve_reference, pytestconfig):
    seed = pytestconfig.getoption("vibeserve_seed")
    return vibeserve_context.memo(
        f"workload-{seed}",
        lambda: build_workload(vibeserve_context.scale.workload, vibeserve_reference, seed),
    )


@pytest.fixture(scope="module")
def closing_workload(vibeserve_context, vibeserve_reference, pytestconfig):
    """Two short streams, each closed by an extra chunk with no audio (the client stops after its
    last audio): that final transcript must be the transcript of all the audio once more."""
    seed = pytestconfig.getoption("vibeserve_seed")
    chunk = float(vibeserve_context.scale.workload.get("chunk_seconds", 2.0))
    params = {
        **vibeserve_context.scale.workload,
        "streams": 2,
        "seconds": 2 * chunk,
        "pace": 0.0,
        "empty_final": True,
    }
    return vibeserve_context.memo(
        f"closing-{seed}",
        lambda: build_workload(params, vibeserve_reference, seed + 500, name=f"closing-{seed}"),
    )
