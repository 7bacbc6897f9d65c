"""Shared fixtures of the ptychography tests."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread():
    """One PyTorch thread per test (results reproducible to the bit, as the tests' measured values were)."""
    try:
        import torch
    except ImportError:  # the tests that need it skip themselves
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
