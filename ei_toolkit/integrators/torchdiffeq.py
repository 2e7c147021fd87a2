"""Black-box ODE solvers: any torchdiffeq method on the transformed probability-flow ODE (DEIS, section 3), as a
method object. ``"torchdiffeq:<name>"`` is its shorthand in :func:`ei_toolkit.solve`; ``options=`` configures it
(``frame``, ``rtol``, ``atol``, ``max_nfe``, and torchdiffeq's own ``options``).

Fixed-grid methods take ``nfe`` evaluations on the request's grid; adaptive ones (dopri5, ...) choose their own
steps and ignore both.
"""

from __future__ import annotations

from typing import Any

from ..adapters import TORCHDIFFEQ_FIXED, TORCHDIFFEQ_METHODS, odeint
from ..solution import Solution
from .base import Method, SolveRequest

_FIXED_ORDER = {"euler": 1, "midpoint": 2, "heun2": 2, "heun3": 3, "rk4": 4}
OPTIONS = ("frame", "rtol", "atol", "max_nfe", "options")


class TorchDiffEq(Method):
    """torchdiffeq's ``solver`` in ``frame`` (default: log rho; ``"y"`` for matrix SDEs)."""

    black_box = True
    matrix = True

    def __init__(self, solver: str, *, frame: str | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                 max_nfe: int | None = None, options: dict[str, Any] | None = None) -> None:
        if solver not in TORCHDIFFEQ_METHODS:
            raise ValueError(f"unknown torchdiffeq method {solver!r}; valid: {', '.join(TORCHDIFFEQ_METHODS)}")
        for name, v in (("rtol", rtol), ("atol", atol)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number; got {v!r}")
        self.name = f"torchdiffeq:{solver}"
        self.solver, self.frame, self.rtol, self.atol, self.max_nfe = solver, frame, float(rtol), float(atol), max_nfe
        self.options = dict(options or {})
        self.order = _FIXED_ORDER.get(solver)
        self.evals_per_step = TORCHDIFFEQ_FIXED.get(solver)

    def configure(self, *, lam: float | None = None, eta: float | None = None,
                  options: dict[str, Any] | None = None) -> Method:
        self.refuse_noise(lam, eta)
        if not options:
            return self
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown options {unknown}; valid: {sorted(OPTIONS)}")
        current = {"frame": self.frame, "rtol": self.rtol, "atol": self.atol, "max_nfe": self.max_nfe,
                   "options": self.options}
        return TorchDiffEq(self.solver, **{**current, **options})

    def solve(self, request: SolveRequest) -> Solution:
        kw: dict[str, Any] = {}
        k = self.evals_per_step
        if k is not None:
            if not request.explicit_grid:
                n = 10 if request.nfe is None else request.nfe
                if n < k or n % k:
                    raise ValueError(f"nfe={n} is not possible for {self.name}: it uses {k} model evaluations per "
                                     f"step, so nfe must be a multiple of {k}")
                kw["steps"] = n // k
            kw["grid"] = request.grid
        elif request.nfe is not None or request.grid is not None:
            raise ValueError(f"{self.name} is adaptive: nfe/grid do not apply; set rtol/atol in options=")
        sol = odeint(request.evaluator.model, request.x, request.sde, method=self.solver, rtol=self.rtol,
                     atol=self.atol, frame=self.frame, t_start=request.t_start, t_end=request.t_end,
                     options=self.options or None, max_nfe=self.max_nfe, evaluator=request.evaluator, **kw)
        if not request.trajectory:
            sol.trajectory = None
        return sol
