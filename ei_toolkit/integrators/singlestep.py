"""Singlestep exponential integrators (exponential Runge-Kutta methods of collocation type), in the noise (eps) or
the data (x0) prediction.

A step from t_i to t_{i+1} is split in lam = -log rho (the half log-SNR): stage s sits at lam_i + c_s h. Stage s
starts from x_i and integrates, exactly against the exponential kernel of its target (docs/math.md section
4.9), the polynomial in log rho through the evaluations of the stages it ``uses``; the new state does the same over
the whole step. With c = (0, 1/2), stage 1 using {0} and the step using {0, 1}, this is DPM-Solver-2 (Lu et al.
2022, "DPM-Solver", r1 = 1/2) in the eps form and DPM-Solver++(2S) in the x0 form; with c = (0, 1/3, 2/3), stage 2
using {0, 1} and the step using {0, 2}, DPM-Solver-3 / DPM-Solver++(3S). The exact kernel integrals replace their
truncated phi-function expansions; the orders (2 and 3) are those of the classical tableaux these reduce to as
the linear part vanishes (b = (0, 1) for order 2; b = (1/4, 0, 3/4), a_21 = 2/3 for order 3: Heun's third-order
method), checked by the convergence tests.

With ``variable="t"`` the stages sit uniformly in t and the polynomial is one in t (the kernel still integrated
exactly): on rectified flow (t = sigma) the x0 form with c = (0, 1/2) updates exactly as the classical midpoint rule
in t on the velocity does into the data, and its stages follow the time grid where log rho would crowd them at the
ends (benchmarks/results/flow.md, trained.md rank it on the flow models).

In the x0 form a step into the data (rho = 0) ends at the step's polynomial read at the data, an extrapolation: where
that last step is long the methods lose order (rectified flow on gmm2d from t = 0.9 into t = 0, NFE 96 -> 192, max
error slopes on uniform_t: x0-tss3 1.85, x0-logrhoss3 1.95, x0-tss2 and x0-logrhoss2 1.33; on quadratic_t, whose last
step is short: 2.80, 2.81, 1.89, 1.87). Reading the quadratic through all three stages there did not restore order 3
(1.90 on uniform_t), so the loss is not that row's alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .base import Integrator, RungeKuttaPlan, check_nfe
from .kernels import (
    TARGETS,
    check_target,
    half_lambda,
    kernel_quadrature,
    lagrange_at,
    lagrange_integrals,
    one_point_weights,
    transitions,
    variable_at,
)


@dataclass(frozen=True)
class Collocation:
    """Stage nodes c (fractions of the step in lam, or in t for ``variable="t"``; c[0] = 0) and, for each stage after
    the first and for the new state, the earlier stages whose evaluations its polynomial goes through."""

    c: tuple[float, ...]
    uses: tuple[tuple[int, ...], ...]  # len(c) - 1 stage rows, then the row of the new state
    order: int

    def __post_init__(self) -> None:
        if not self.c or self.c[0] != 0.0 or any(not 0.0 < v <= 1.0 for v in self.c[1:]):
            raise ValueError(f"stage nodes must start at 0 and lie in (0, 1] after that; got {self.c}")
        if len(self.uses) != len(self.c):
            raise ValueError(f"uses needs one row per stage after the first plus one for the new state; got "
                             f"{len(self.uses)} rows for {len(self.c)} stages")
        for s, row in enumerate(self.uses):
            if not row or len(set(row)) != len(row) or any(not 0 <= j <= s for j in row):
                raise ValueError(f"row {s} of uses must name distinct earlier stages (0..{s}); got {row}")


COLLOCATIONS = {
    2: Collocation(c=(0.0, 0.5), uses=((0,), (0, 1)), order=2),
    3: Collocation(c=(0.0, 1 / 3, 2 / 3), uses=((0,), (0, 1), (0, 2)), order=3),
}


ONE_POINT = Collocation(c=(0.0,), uses=((0,),), order=1)  # DDIM: the last step of an nfe that is not a multiple


class SinglestepExponential(Integrator):
    """An exponential Runge-Kutta method on a :class:`Collocation` in log rho (or in t: ``variable="t"``),
    extrapolating ``target`` (eps or x0). ``len(c)`` evaluations per step; an ``nfe`` that is not a multiple of it
    gives a last step of lower order with the evaluations left (as DPM-Solver does). A last step into the data
    (rho = 0) places its stages in rho (in t with ``variable="t"``)."""

    def __init__(self, name: str, collocation: Collocation | int, target: str = "eps",
                 default_grid: str = "uniform_logrho", last_stages: int | None = None,
                 variable: str = "logrho") -> None:
        if isinstance(collocation, int) and not isinstance(collocation, bool):
            if collocation not in COLLOCATIONS:
                raise ValueError(f"collocation must be a Collocation or one of the orders {sorted(COLLOCATIONS)}; "
                                 f"got {collocation!r}")
            collocation = COLLOCATIONS[collocation]
        if not isinstance(collocation, Collocation):
            raise TypeError(f"collocation must be a Collocation or an order; got {type(collocation).__name__}")
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
        if variable not in ("logrho", "t"):
            raise ValueError(f"variable must be 'logrho' or 't' (where the stages sit and the polynomial lives); "
                             f"got {variable!r}")
        self.name, self.collocation, self.target, self.variable = name, collocation, target, variable
        self.order = collocation.order
        self.evals_per_step = len(collocation.c)
        self.default_grid = default_grid
        if last_stages is not None and not 1 <= last_stages <= self.evals_per_step:
            raise ValueError(f"last_stages must lie in 1..{self.evals_per_step}; got {last_stages!r}")
        self.last_stages = last_stages

    def steps_for_nfe(self, nfe: int) -> int:
        return -(-check_nfe(nfe) // self.evals_per_step)

    def for_nfe(self, nfe: int | None, steps: int) -> SinglestepExponential:
        if nfe is None:
            return self
        last = nfe - self.evals_per_step * (steps - 1)
        if last == self.evals_per_step:
            return self
        return SinglestepExponential(self.name, self.collocation, self.target, self.default_grid, last, self.variable)

    def _collocations(self, n: int) -> list[Collocation]:
        cols = [self.collocation] * n
        if self.last_stages is not None and self.last_stages != self.evals_per_step:
            lower = [c for c in (*COLLOCATIONS.values(), ONE_POINT) if len(c.c) == self.last_stages]
            cols[-1] = lower[0]
        return cols

    def plan(self, sde: Any, grid: torch.Tensor) -> RungeKuttaPlan:
        check_target(sde, self.target)
        t = grid.to(torch.float64)
        lam = half_lambda(sde, t)
        if not np.all(np.isfinite(lam[:-1])):
            raise ValueError(f"{self.name!r} integrates its kernel in log rho, which is infinite at t = "
                             f"{float(t[:-1][~torch.from_numpy(np.isfinite(lam[:-1]))][0]):g} (rho = inf, zero "
                             "terminal SNR): start below infinite noise, or use a multistep x0 method")
        n = len(t) - 1
        cols = self._collocations(n)
        counts = [len(c.c) for c in cols]
        # stage times of every step, flattened. A step into the data (rho = 0, lam = inf) places its stages
        # uniformly in rho and interpolates in rho, which stays finite there (docs/math.md section 4.9)
        step_of = np.repeat(np.arange(n), counts)
        c_all = np.concatenate([c.c for c in cols])
        into_data = ~np.isfinite(lam[1:])
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        if self.variable == "t":  # stages uniform in t, the polynomial in t, a step into the data alike
            ta, tb = t[:-1].numpy()[step_of], t[1:].numpy()[step_of]
            t_s = torch.from_numpy(ta + c_all * (tb - ta))
        else:
            rho = sde.rho(t).numpy()
            with np.errstate(invalid="ignore", over="ignore"):
                rho_s = np.where(into_data[step_of], rho[step_of] * (1 - c_all),
                                 np.exp(-(lam[step_of] + c_all * (lam[step_of + 1] - lam[step_of]))))
            t_s = sde.t_of_rho(torch.from_numpy(rho_s))
        t_s[first] = t[:-1]
        t_s[torch.from_numpy(c_all == 1.0)] = t[1:][torch.from_numpy(step_of[c_all == 1.0])]
        if self.variable == "t":
            v_s = t_s.numpy()
        else:
            v_s = np.where(into_data[step_of], variable_at(sde, "rho", t_s), variable_at(sde, "logrho", t_s))
        # every target point: the stages after the first, then the new states; each from its step's start
        later = np.ones(len(c_all), dtype=bool)
        later[first] = False
        ends = torch.cat([t_s[torch.from_numpy(later)], t[1:]])
        ends_step = np.concatenate([step_of[later], np.arange(n)])
        starts = t[:-1][torch.from_numpy(ends_step)]
        psi = transitions(sde, starts, ends, self.target)
        exact = one_point_weights(sde, starts, ends, self.target)
        if self.variable == "t":
            v_q, k_q = kernel_quadrature(sde, starts, ends, "t", self.target)
        else:
            vq_log, k_q = kernel_quadrature(sde, starts, ends, "logrho", self.target)
            vq_rho, _ = kernel_quadrature(sde, starts, ends, "rho", self.target)
            v_q = np.where(into_data[ends_step][:, None], vq_rho, vq_log)
        alpha_end = sde.alpha(ends).numpy()
        row_of_stage = np.cumsum(later) - 1  # the row in `ends` of each later stage
        final_row = len(ends) - n
        stage_psi, stage_w, weights, psi_final = [], [], [], []
        for i, col in enumerate(cols):
            m = len(col.c)
            st_psi, st_w = [1.0], [()]
            for s, used in enumerate(col.uses):
                row = final_row + i if s == m - 1 else int(row_of_stage[first[i] + s + 1])
                w = [0.0] * (s + 1)
                nodes = v_s[[first[i] + j for j in used]]
                if len(used) == 1:
                    values = [exact[row]]
                elif self.target == "x0" and s == m - 1 and into_data[i]:
                    # x0 form into rho = 0: the kernel concentrates at the end, x_{i+1} = alpha_{i+1} p(rho = 0)
                    at_data = float(t[i + 1]) if self.variable == "t" else 0.0
                    values = [alpha_end[row] * ell for ell in lagrange_at(nodes, at_data)]
                else:
                    values = lagrange_integrals(nodes, v_q[row], k_q[row])
                for j, value in zip(used, values, strict=True):
                    w[j] = float(value)
                if s == m - 1:
                    weights.append(tuple(w))
                    psi_final.append(float(psi[row]))
                else:
                    st_psi.append(float(psi[row]))
                    st_w.append(tuple(w))
            stage_psi.append(tuple(st_psi))
            stage_w.append(tuple(st_w))
        return RungeKuttaPlan(grid=t, stage_psi=tuple(stage_psi), stage_weights=tuple(stage_w),
                              psi=tuple(psi_final), weights=tuple(weights), eval_times=t_s.clone(),
                              target=self.target)
