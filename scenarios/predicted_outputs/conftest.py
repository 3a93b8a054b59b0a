"""Fixtures of scenario predicted_outputs (fixtures only: the logic lives in pytest_vibeserve)."""

import pytest

from pytest_vibeserve.workloads.predicted import build_workload, trap_prediction, with_predictions


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
def trap_workload(vibeserve_workload, pytestconfig):
    """Predictions that agree with the output but for one token, and run past its end."""
    seed = pytestconfig.getoption("vibeserve_seed")
    return with_predictions(vibeserve_workload, "traps", trap_prediction(seed))


@pytest.fixture(scope="module")
def no_prediction_workload(vibeserve_workload):
    """The same requests without a prediction: an engine must still decode them exactly."""
    return with_predictions(vibeserve_workload, "no-prediction", lambda request, expected: None)
