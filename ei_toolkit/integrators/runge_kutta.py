"""rhoRK-DEIS: explicit Runge-Kutta methods on the transformed ODE dy/drho = eps (DEIS, section 4).

A method is a validated :class:`ButcherTableau` plus its order. In x: stage s of a step from rho_i to
rho_{i+1} = rho_i + h sits at rho_s = rho_i + c_s h, t_s = t(rho_s), and
x_s = (alpha_s / alpha_i) x_i + alpha_s h sum_l a_sl k_l; then
x_{i+1} = (alpha_{i+1} / alpha_i) x_i + alpha_{i+1} h sum_s b_s k_s.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import torch

from .base import Integrator, RungeKuttaPlan, as_tuple2

if TYPE_CHECKING:
    from ..sde import LinearSDE


@dataclass(frozen=True)
class ButcherTableau:
    """Explicit Runge-Kutta coefficients, checked on construction against the order conditions up to
    ``order`` (up to 4: the rooted trees of order <= 4)."""

    a: tuple[tuple[float, ...], ...]  # strictly lower triangular, row s has s entries
    b: tuple[float, ...]
    c: tuple[float, ...]
    order: int

    def __post_init__(self) -> None:
        s = len(self.b)
        if len(self.c) != s or len(self.a) != s:
            raise ValueError(f"tableau: a, b, c must describe the same number of stages; got {len(self.a)}, {s}, "
                             f"{len(self.c)}")
        for i, row in enumerate(self.a):
            if len(row) != i:
                raise ValueError(f"tableau: row {i} of a must have {i} entries (explicit method); got {len(row)}")
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"tableau: row {i} of a must sum to c[{i}] = {self.c[i]}; got {sum(row)}")
        if not 1 <= self.order <= 4:
            raise ValueError(f"tableau: order must be between 1 and 4; got {self.order}")
        A = [list(r) + [0.0] * (s - len(r)) for r in self.a]
        b, c = self.b, self.c

        def dot(u: list[float] | tuple[float, ...], v: list[float] | tuple[float, ...]) -> float:
            return sum(x * y for x, y in zip(u, v, strict=True))

        Ac = [dot(A[i], c) for i in range(s)]
        Ac2 = [dot(A[i], [x * x for x in c]) for i in range(s)]
        AAc = [dot(A[i], Ac) for i in range(s)]
        conditions = [(1, sum(b), 1.0), (2, dot(b, c), 1 / 2), (3, dot(b, [x * x for x in c]), 1 / 3),
                      (3, dot(b, Ac), 1 / 6), (4, dot(b, [x**3 for x in c]), 1 / 4),
                      (4, dot(b, [x * y for x, y in zip(c, Ac, strict=True)]), 1 / 8), (4, dot(b, Ac2), 1 / 12),
                      (4, dot(b, AAc), 1 / 24)]
        for p, value, want in conditions:
            if p <= self.order and abs(value - want) > 1e-12:
                raise ValueError(f"tableau: an order-{p} condition fails ({value} != {want}); the declared order "
                                 f"{self.order} is not reached")


def _f(*xs: str | int) -> tuple[float, ...]:
    return tuple(float(Fraction(x)) for x in xs)


TABLEAUX: dict[str, ButcherTableau] = {
    "euler": ButcherTableau(a=((),), b=_f(1), c=_f(0), order=1),
    "midpoint": ButcherTableau(a=((), _f("1/2")), b=_f(0, 1), c=_f(0, "1/2"), order=2),
    "heun": ButcherTableau(a=((), _f(1)), b=_f("1/2", "1/2"), c=_f(0, 1), order=2),
    "kutta3": ButcherTableau(a=((), _f("1/2"), _f(-1, 2)), b=_f("1/6", "2/3", "1/6"), c=_f(0, "1/2", 1), order=3),
    "rk4": ButcherTableau(a=((), _f("1/2"), _f(0, "1/2"), _f(0, 0, 1)), b=_f("1/6", "1/3", "1/3", "1/6"),
                          c=_f(0, "1/2", "1/2", 1), order=4),
    # Kutta's 3/8 rule: torchdiffeq's "rk4"
    "rk4-38": ButcherTableau(a=((), _f("1/3"), _f("-1/3", 1), _f(1, -1, 1)), b=_f("1/8", "3/8", "3/8", "1/8"),
                             c=_f(0, "1/3", "2/3", 1), order=4),
}


class RhoRungeKutta(Integrator):
    """An explicit Runge-Kutta method on dy/drho = eps, from its tableau."""

    def __init__(self, name: str, tableau: ButcherTableau, default_grid: str = "uniform_logrho") -> None:
        self.name, self.tableau = name, tableau
        self.order = tableau.order
        self.evals_per_step = len(tableau.b)
        self.default_grid = default_grid

    def plan(self, sde: LinearSDE, grid: torch.Tensor) -> RungeKuttaPlan:
        tab = self.tableau
        t = grid.to(torch.float64)
        rho, alpha = sde.rho(t), sde.alpha(t)
        h = rho[1:] - rho[:-1]
        c = torch.tensor(tab.c, dtype=torch.float64)
        rho_s = (rho[:-1, None] + c[None, :] * h[:, None]).clamp_min(0)
        t_s = sde.t_of_rho(rho_s)
        t_s[:, c == 0] = t[:-1, None]  # stage at the step's start: exactly t_i
        t_s[:, c == 1] = t[1:, None]
        alpha_s = sde.alpha(t_s)
        stage_psi = sde.psi(t_s, t[:-1, None])
        stage_w = [[[float(alpha_s[i, s] * h[i] * a) for a in tab.a[s]] for s in range(len(tab.b))]
                   for i in range(len(h))]
        w = (alpha[1:, None] * h[:, None]) * torch.tensor(tab.b, dtype=torch.float64)[None, :]
        return RungeKuttaPlan(grid=t, stage_psi=as_tuple2(stage_psi.tolist()),
                              stage_weights=tuple(tuple(tuple(r) for r in st) for st in stage_w),
                              psi=tuple(sde.psi(t[1:], t[:-1]).tolist()), weights=as_tuple2(w.tolist()),
                              eval_times=t_s.flatten().clone())
