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


def _runs_from_t_max_with_its_first_answer(v, z, flow, method, first_answer) -> None:
    """From pure noise (t = 1) ``method`` spends 8 evaluations, the first at t = 1, and its result is the same plan from
    t_max, started at the exact step's state (x0 frozen at the data prediction x0_1 of t = 1), with a model whose first
    answer is ``first_answer(x, t, x0_1)`` (a velocity) and v afterwards."""
    import ei_toolkit as ei

    calls = []

    def counted(x, t):
        calls.append(float(t[0]))
        return v(x, t)

    sol = ei.solve(counted, z, flow, method=method, nfe=8, prediction="flow", t_end=0.0)
    assert sol.nfe == len(calls) == 8 and calls[0] == 1.0 and float(sol.times[0]) == 1.0
    t_max = flow.t_max
    x0_1 = z - v(z, torch.ones(len(z), dtype=torch.float64))  # the data prediction at t = 1
    x_m = (1 - t_max) * x0_1 + t_max * z  # the exact step with x0 frozen, to t_max
    first = [True]

    def answers_first(x, t):
        if first[0]:
            first[0] = False
            return first_answer(x, t, x0_1)
        return v(x, t)

    grid = sol.times.clone()
    grid[0] = t_max
    want = ei.sample(answers_first, x_m, flow, method=method, grid=grid, prediction="flow")
    torch.testing.assert_close(sol.x, want, rtol=0, atol=1e-12)


@pytest.fixture
def runs_from_t_max_with_its_first_answer():
    """The check that a run from pure noise keeps its evaluation at t = 1 (test_flow.py, test_ems_flow.py)."""
    return _runs_from_t_max_with_its_first_answer
