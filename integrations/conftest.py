"""Shared by both integration packages' tests."""
import os

import torch

# The tests run MiniLM on a few CPU cores shared with other jobs: one intra-op thread is several times faster there
# than threads competing for the cores. LONGCTX_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("LONGCTX_TEST_THREADS", "1")))
