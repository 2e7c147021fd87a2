import os

# scipy's OpenBLAS threads and torch's OpenMP threads oversubscribe a 2-core machine: the small k x k linear
# algebra of the matrix-SDE tests then stalls each tiny torch op by milliseconds (18 ms instead of 0.3 ms per
# model call, measured). One BLAS thread removes the contention; it must be set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Likewise torch's OpenMP pool: with two threads on two shared cores every parallel region waits for a descheduled
# thread when anything else runs (the torchrun tests start more processes), and the suite slows several-fold.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

torch.set_default_dtype(torch.float32)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; none is available")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _run_in_a_temporary_directory(tmp_path, monkeypatch):
    """Every test runs in its own empty working directory: a command or example that writes a default output path
    (digits.png, a calibration folder) writes there, never into the repository."""
    monkeypatch.chdir(tmp_path)
