"""Exponential Adams integrators: tAB-DEIS, rhoAB-DEIS and the same in log rho; their data-prediction (x0) forms;
and their predictor-corrector forms.

DEIS (Zhang & Chen, ICLR 2023, section 4): over a step from t_i to t_{i+1}, fit the polynomial through the last k
evaluations e_i, e_{i-1}, ... in a variable v (t for tAB, rho for rhoAB, log rho as a third choice) and integrate it
exactly against the exponential kernel (docs/math.md sections 4.2, 4.7, 4.8):

    x_{i+1} = T_i x_i + sum_j C_ij e_{i-j},   C_ij = int_step kernel(tau) l_j(v(tau)) dtau,

l_j the Lagrange basis on v_i, v_{i-1}, .... ``target="eps"`` extrapolates the noise prediction (T_i = Psi, the
kernel alpha_{i+1} drho: DEIS); ``target="x0"`` extrapolates the data prediction (T_i = sigma_{i+1} / sigma_i, the
kernel alpha_{i+1} exp(lam - lam_{i+1}) dlam with lam = -log rho), which is far smoother when the data are sharp:
in log rho this is DPM-Solver++'s multistep family (Lu et al. 2022, "DPM-Solver++"), with the polynomial integrated
exactly instead of through truncated phi-functions. One-point steps use the exact DDIM weight. The first steps use
fewer points (no extra evaluations); ``lower_order_final`` also lowers the order on the last steps. Order k with k
points.

``rule="midpoint"`` evaluates the polynomial at the middle of the step (in the extrapolation variable) and integrates
that constant exactly, instead of integrating the polynomial against the kernel: with two points in log rho and
``target="x0"`` these are DPM-Solver++(2M)'s coefficients (Lu et al. 2022, which truncate the phi-functions this
way), with ``target="eps"`` DPM-Solver-2M's. Order 2 whatever the number of points. It extrapolates less than the
exact integral, whose kernel weight gathers at the end of long steps: on data whose x0 prediction saturates as the
noise vanishes, and under classifier-free guidance, it had 0.6-0.75x the exact rule's error (docs/math.md 4.10).

``corrector=True`` adds UniPC's idea (Zhao et al. 2023, "UniPC"): once the model has been evaluated at the predicted
x_{i+1} (the next step needs that evaluation anyway), redo the step from x_i with the polynomial through
e_{i+1}, e_i, ..., e_{i-k+1} (k + 1 points, an Adams-Moulton-type step) and continue from the corrected state. No
extra evaluation; order k + 1. The last step is not corrected (that would cost one more evaluation). The corrector
integrates its polynomial exactly whatever the predictor's ``rule``: with ``rule="midpoint"``, two points and
``target="x0"`` this is UniPC's bh2 variant of order 2 (its predictor is DPM-Solver++(2M), its corrector the exact
three-point integral); order 3.

``rule="bh1"`` / ``"bh2"`` and ``corrector_rule="bh1"`` / ``"bh2"`` are UniPC's own weights (Zhao et al. 2023, data
prediction in log rho): a two-point form adds to the exact one-point step B(h) / 2 times the divided difference
(m_other - m_start) / r, with B(h) = h (bh1) or e^h - 1 (bh2), h the step in lambda = -log rho and r the other node's
offset in units of h; with bh2 that is the midpoint rule. Three and more points are integrated exactly, which is what
UniPC's linear solve for its coefficients gives (B(h) cancels). UniPC's corrector takes one point more than the step's
predictor (after a lowered step, fewer). With ``target="x0"``, ``variable="logrho"`` and ``lower_order_final`` these
are diffusers' UniPCMultistepScheduler(solver_type=..., solver_order=points) step for step
(tests/test_unipc_identity.py).

``lower_order_final`` lowers the number of points on the last steps (one on the last, two on the one before, ...),
as DPM-Solver and UniPC do for short runs: steadier at a handful of steps, order at most 2.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import Integrator, MultistepPlan, PredictorCorrectorPlan, as_tuple2
from .kernels import (
    TARGETS,
    VARIABLES,
    check_target,
    check_variable,
    half_lambda,
    kernel_quadrature,
    lagrange_at,
    lagrange_integrals,
    one_point_weights,
    steps_of,
    transitions,
    variable_at,
)

RULES = ("exact", "midpoint", "bh1", "bh2")
CORRECTOR_RULES = ("exact", "bh1", "bh2")


def _row(i: int, m: int, newest: int, v_grid: np.ndarray, lam: np.ndarray, exact: np.ndarray,
         v_q: np.ndarray | None, k_q: np.ndarray | None, alpha_b: float, target: str, rule: str = "exact"
         ) -> list[Any]:
    """Weights of the m-point polynomial through the evaluations at grid points newest, newest - 1, ... for the
    step i -> i + 1."""
    v_end = v_grid[i + 1]
    if not (np.isfinite(v_end) and np.isfinite(lam[i])):
        # log rho -> -inf at the data: no polynomial in it reaches there; and a step from infinite noise
        # (zero terminal SNR) has only its one exact weight
        m = 1
    # nodes at infinite noise carry no usable value of rho or log rho
    while m > 1 and not np.all(np.isfinite(v_grid[newest - m + 1: newest + 1])):
        m -= 1
    if m == 1:  # a frozen evaluation: the exact weight, whichever evaluation it is
        return [exact[i]]
    nodes = v_grid[newest - m + 1: newest + 1][::-1]
    if target == "x0" and np.isinf(lam[i + 1]):
        # a step into rho = 0 in the x0 form: the kernel concentrates at the end, x_{i+1} = alpha_{i+1} p(v_{i+1})
        return [alpha_b * ell for ell in lagrange_at(nodes, v_end)]
    if rule in ("bh1", "bh2") and m == 2:  # UniPC: the exact one-point step + B(h) / 2 x divided difference
        base = v_grid[i]
        r = [(v - base) / (v_end - base) for v in nodes]  # 0 at the step's start, the other node's offset in h
        c = 0.5 * (exact[i] if rule == "bh2" else alpha_b * (base - v_end))
        other = 1 if r[0] == 0.0 else 0
        w = [0.0, 0.0]
        w[other], w[1 - other] = c / r[other], exact[i] - c / r[other]
        return w
    if rule == "midpoint":  # the polynomial's value at the step's middle, frozen over the step
        return [exact[i] * ell for ell in lagrange_at(nodes, 0.5 * (v_grid[i] + v_end))]
    return lagrange_integrals(nodes, v_q[i], k_q[i])


def adams_plan(sde: Any, grid: torch.Tensor, points: int, variable: str, lower_order_final: bool = False,
               target: str = "eps", corrector: bool = False, rule: str = "exact", corrector_rule: str = "exact"
               ) -> MultistepPlan:
    """Coefficients of the k-point exponential Adams method in ``variable`` on ``grid``, extrapolating ``target``;
    with ``corrector``, a :class:`PredictorCorrectorPlan` (``corrector_rule``: see :class:`ExponentialAdams`)."""
    t = grid.to(torch.float64)
    n = len(t) - 1
    t_a, t_b = steps_of(t)
    psi = transitions(sde, t_a, t_b, target)
    exact = one_point_weights(sde, t_a, t_b, target)
    v_grid = variable_at(sde, variable, t)
    many = (points > 1 and rule != "midpoint") or corrector
    with np.errstate(over="ignore", invalid="ignore"):
        v_q, k_q = kernel_quadrature(sde, t_a, t_b, variable, target) if many else (None, None)
    scalar = not getattr(sde, "is_matrix", False)
    alpha_b = sde.alpha(t_b).tolist() if scalar else [0.0] * n
    lam = half_lambda(sde, t) if scalar else np.zeros(n + 1)

    def lowered(m: int, i: int) -> int:
        return min(m, n - i) if lower_order_final else m

    weights = [_row(i, lowered(min(points, i + 1), i), i, v_grid, lam, exact, v_q, k_q, alpha_b[i], target, rule)
               for i in range(n)]
    common = dict(grid=t, psi=as_tuple2([psi])[0], weights=as_tuple2(weights), eval_times=t[:-1].clone(),
                  target=target)
    if not corrector:
        return MultistepPlan(**common)
    if corrector_rule == "exact":
        # the corrector integrates its polynomial exactly whatever the predictor's rule: that raises the order
        fixes = [_row(i, lowered(min(points + 1, i + 2), i), i + 1, v_grid, lam, exact, v_q, k_q, alpha_b[i],
                      target) for i in range(n - 1)]
    else:  # UniPC's: one point more than this step's predictor, its own two-point weights
        fixes = [_row(i, lowered(min(points, i + 1), i) + 1, i + 1, v_grid, lam, exact, v_q, k_q, alpha_b[i], target,
                      corrector_rule) for i in range(n - 1)]
    return PredictorCorrectorPlan(**common, corrector=as_tuple2(fixes))


class ExponentialAdams(Integrator):
    """k-point exponential Adams-Bashforth in t (tAB), rho (rhoAB) or log rho (logrhoAB), extrapolating eps or x0
    (``target``); order k, or k + 1 with ``corrector``. In t with target eps it also runs on matrix SDEs."""

    def __init__(self, name: str, points: int, variable: str, default_grid: str, lower_order_final: bool = False,
                 target: str = "eps", corrector: bool = False, rule: str = "exact", corrector_rule: str = "exact"
                 ) -> None:
        if variable not in VARIABLES:
            raise ValueError(f"unknown extrapolation variable {variable!r}; valid: {', '.join(VARIABLES)}")
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
        if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= 6:
            raise ValueError(f"points must be an integer between 1 and 6; got {points!r}")
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(RULES)}")
        if corrector_rule not in CORRECTOR_RULES:
            raise ValueError(f"unknown corrector_rule {corrector_rule!r}; valid: {', '.join(CORRECTOR_RULES)}")
        unipc = {"bh1", "bh2"} & {rule, corrector_rule}
        if unipc and (target != "x0" or variable != "logrho"):
            raise ValueError(f"UniPC's weights (rule / corrector_rule {rule!r} / {corrector_rule!r}) are for the "
                                 f"data prediction in log rho; got target={target!r}, variable={variable!r}")
        self.corrector_rule = corrector_rule
        self.name, self.points, self.variable, self.target, self.rule = name, points, variable, target, rule
        self.corrector = bool(corrector)
        self.order = (min(points, 2) if rule == "midpoint" else points) + self.corrector
        self.unlowered_order = self.order  # what the steps before the lowered final ones reach
        if lower_order_final:  # the last step has one point: a local error O(h^2) that no other step makes up
            self.order = min(self.order, 2)
        self.default_grid = default_grid
        self.lower_order_final = bool(lower_order_final)
        self.matrix = variable == "t" and target == "eps"

    def plan(self, sde: Any, grid: torch.Tensor) -> MultistepPlan:
        check_variable(sde, self.variable)
        check_target(sde, self.target)
        return adams_plan(sde, grid, self.points, self.variable, self.lower_order_final, self.target, self.corrector,
                          self.rule, self.corrector_rule)
