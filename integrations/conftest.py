"""Shared by both integration packages' tests."""
import os

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """The tests run MiniLM on a few CPU cores shared with other jobs: one intra-op thread is several times faster
    there than threads competing for the cores. LONGCTX_TEST_THREADS overrides; the setting is restored after each
    module, so a combined run of the core's tests is not affected."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("LONGCTX_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)
