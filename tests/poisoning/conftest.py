"""Fixtures of the poisoning tests: one torch thread per module, and the shared tiny clean model."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def one_thread(one_torch_thread):
    """One torch thread for each module (`one_torch_thread`)."""
    yield


@pytest.fixture(scope="module")
def clean_model(tiny_clean_model):
    """The clean diffusion model the attacks target (`tiny_clean_model`); a module may define its own."""
    return tiny_clean_model
