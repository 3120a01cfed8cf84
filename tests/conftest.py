"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """The whole suite, module- and session-scoped fixtures included, runs with one torch thread.

    Why: the test models are tiny, and on a shared 2-core CPU one thread is far faster than two
    fighting over it. It is every test's setting, not an opt-in: a few files used to call
    `torch.set_num_threads(1)` and never restore it, so every file after them ran on one thread
    and every file before on two, and tests whose trajectory depends on the float path (toy
    meta-trainings) passed or failed by test order.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
