"""Fixtures of scenario standard (fixtures only: the logic lives in pytest_vibeserve)."""

import pytest

from pytest_vibeserve.workloads.prompts import build_prompt_workload, with_logprobs
from pytest_vibeserve.workloads.serving import batch1_params, build_serving_workload


@pytest.fixture(scope="module")
def vibeserve_workload(vibeserve_context, vibeserve_tokenizer, vibeserve_reference, pytestconfig):
    """The load run: Poisson arrivals at a rate that saturates the starter (the headline)."""
    seed = pytestconfig.getoption("vibeserve_seed")
    params = vibeserve_context.scale.workload
    return vibeserve_context.memo(
        f"load-{seed}",
        lambda: build_serving_workload(params, vibeserve_tokenizer, vibeserve_reference, seed),
    )


@pytest.fixture(scope="module")
def batch1_workload(vibeserve_context, vibeserve_tokenizer, vibeserve_reference, pytestconfig):
    """Decode speed alone: one request in flight, a short prompt, a long output."""
    seed = pytestconfig.getoption("vibeserve_seed")
    params = batch1_params(vibeserve_context.scale.workload)
    return vibeserve_context.memo(
        f"batch1-{seed}",
        lambda: build_serving_workload(
            params, vibeserve_tokenizer, vibeserve_reference, seed, name=f"batch1-seed{seed}"
        ),
    )


@pytest.fixture(scope="module")
def prompt_workload(vibeserve_context, vibeserve_tokenizer, vibeserve_reference, pytestconfig):
    """Raw completions and chat prompts, all sent at once, each ending at EOS or its length."""
    seed = pytestconfig.getoption("vibeserve_seed")
    params = vibeserve_context.scale.workload
    return vibeserve_context.memo(
        f"prompts-{seed}",
        lambda: build_prompt_workload(params, vibeserve_tokenizer, vibeserve_reference, seed),
    )


@pytest.fixture(scope="module")
def logprob_workload(prompt_workload):
    """The same prompts asking for the top-5 logprobs of every generated token."""
    return with_logprobs(prompt_workload, 5)
