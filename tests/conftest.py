"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def one_thread_everywhere():
    """The whole suite runs with one torch thread.

    Why: a few files used to call `torch.set_num_threads(1)` and never restore it, so every file
    after them ran on one thread and every file before on two. Tests whose trajectory depends on
    the float path (toy meta-trainings) then passed or failed by test order. One thread for all is
    order-independent, and on a 2-core CI machine it is also the faster setting for tiny models.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: the test models are tiny, and on a shared 2-core CPU one
    thread is far faster than two fighting over it. Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
