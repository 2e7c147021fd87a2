"""High-accuracy reference solutions of the probability-flow ODE, for convergence tests and accuracy benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp

from ..adapters import FlowODE
from ..model import Model


def reference_solution(model: Model, sde: Any, x: torch.Tensor, t_start: float, t_end: float | Sequence[float], *,
                       rtol: float = 1e-10, atol: float | None = None, prediction: str = "eps") -> torch.Tensor:
    """x at ``t_end`` from x at ``t_start`` by DOP853 (order 8, scipy) on the package's probability-flow vector field
    (:class:`~ei_toolkit.FlowODE`) in its best-conditioned frame: log rho for scalar SDEs (rho(t_end) must be > 0),
    y = Psi(t0, t) u for matrix SDEs. Float64. A sequence of decreasing end times gives the state at each, stacked
    time-first, from one solve; increasing end times above ``t_start`` integrate forward (data to noise)."""
    many = not isinstance(t_end, (int, float))
    ends = [float(v) for v in (t_end if many else [t_end])]
    ts = torch.tensor([float(t_start), *ends], dtype=torch.float64)
    if not (bool((ts[1:] < ts[:-1]).all()) or bool((ts[1:] > ts[:-1]).all())):
        raise ValueError("reference_solution(): end times must be monotone away from t_start: decreasing below it "
                         "(sampling) or increasing above it (inversion)")
    matrix = bool(getattr(sde, "is_matrix", False))
    if not matrix and not bool((sde.rho(ts) > 0).all()):
        raise ValueError("reference_solution(): every time must have rho > 0 (the log-rho frame is singular at "
                         "rho = 0)")
    func = FlowODE(model, sde, "y" if matrix else "logrho", prediction)
    taus = func.tau(ts).tolist()
    x64 = x.to(torch.float64)
    shape = x64.shape

    def f(tau: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return func(torch.tensor(tau, dtype=torch.float64), torch.from_numpy(y).reshape(shape)).numpy().ravel()

    y0 = func.encode(x64, ts[0]).numpy().ravel()
    sol = solve_ivp(f, (taus[0], taus[-1]), y0, method="DOP853", rtol=rtol, atol=rtol if atol is None else atol,
                    t_eval=taus[1:])
    if not sol.success:
        raise ArithmeticError(f"the reference solve failed: {sol.message}")
    out = torch.stack([func.decode(torch.from_numpy(sol.y[:, i].copy()).reshape(shape), ts[i + 1])
                       for i in range(len(ends))])
    return out if many else out[0]
