"""Adaptive step-size control for the probability-flow ODE: an embedded pair of exponential Adams methods in
lam = -log rho (the half log-SNR of DPM-Solver), with the error estimated in the well-conditioned variable
y = x / alpha (docs/math.md sections 3, 4.2 and 4.7).

Over a step lam_i -> lam_{i+1} = lam_i + h the exponential integrator is exact in its linear part and integrates a
polynomial P through the last m evaluations e_i, e_{i-1}, ... (in lam) against the exponential kernel:

* ``form="x0"`` (data prediction, DPM-Solver++): x_{i+1} = sigma_{i+1}/sigma_i x_i
  + alpha_{i+1} int_0^h exp(-(h - u)) P(u) du;
* ``form="eps"`` (noise prediction, DEIS in log rho): x_{i+1} = alpha_{i+1}/alpha_i x_i
  - sigma_{i+1} int_0^h exp(h - u) P(u) du.

The pair: the p-point formula (order p) advances the solution, the (p - 1)-point one is embedded; their difference
estimates the local error of the lower one, O(h^p). Both are explicit and use the same past evaluations, so a
rejected step costs no model evaluation; each accepted step costs one (at its end, which the next step needs). The
first step has a single point: it is an exponential Euler (DDIM) step whose error is estimated, after the evaluation
at its end, by the two-point (trapezoid-type) formula through both ends. Once a step is accepted and the model
evaluated at its end (which the next step needs anyway), the step is redone with the polynomial through that new
evaluation as well (``corrector``, default on: UniPC's idea, Zhao et al. 2023; an Adams-Moulton-type step, one order
higher, no extra evaluation), and the solution continues from the corrected state; the history keeps the evaluation
at the predicted state. The last step is not corrected (that would cost one more evaluation) unless the solve goes
on to rho = 0, which needs that evaluation anyway. The step sizes follow
a PI controller (Söderlind; Hairer, Nørsett & Wanner, "Solving ODEs I", section II.4) with a safety factor and
bounds on the change per step; the idea of an embedded pair of exponential integrators in lam is DPM-Solver's
adaptive solver (Lu et al. 2022, "DPM-Solver", Algorithm 4), which uses single-step pairs instead (2-3 evaluations
per step).

The error norm is the RMS over all elements of (y_hi - y_lo) / (atol + rtol max(|y_i|, |y_{i+1}|)): in y a
perturbation made at noise level rho decays like rho_end / rho while rho exceeds the data's scale, and rtol |y| grows
like rho, so the tolerance is balanced across noise levels. The controller needs that norm on the host once per
step attempt (one device synchronisation per step, as in any adaptive solver).

A solve ending at rho = 0 (e.g. DiscreteVP's t0) stops the adaptive part at ``sde.t_min`` and takes the last step
with the data prediction there, x_end = alpha_end x0_hat (the exact DDIM step to rho = 0; no extra evaluation).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from ..errors import NumericalError
from .base import Method, SolveRequest
from .kernels import lagrange_integrals

FORMS = ("x0", "eps")
CONTROLLERS = ("pi", "i")
_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)
DEFAULT_MAX_NFE = 10_000
"""The cap on model evaluations when ``options`` give no ``max_nfe``: 40x what rtol = 1e-7 takes on the benchmark
mixtures (250-300), so a runaway solve (a tolerance the model's noise cannot meet) stops with NFEBudgetExceeded."""
RTOL_FLOOR_EPS = 10
"""``rtol`` must be at least this many machine epsilons of the working dtype (the state's; see :func:`rtol_floor`)."""
_DEFAULTS: dict[str, Any] = {"rtol": 1e-3, "atol": 1e-3, "max_nfe": DEFAULT_MAX_NFE, "h_init": None, "order": 4,
                             "form": "x0",
                             "safety": 0.9, "min_factor": 0.2, "max_factor": 3.0, "controller": "pi",
                             "max_rejections": 50, "corrector": True}
OPTIONS = tuple(_DEFAULTS)


def lam_weights(nodes: np.ndarray, h: float, form: str) -> np.ndarray:
    """int_0^h kernel(u) l_j(u) du for the Lagrange basis l_j on ``nodes`` (offsets u_j = lam_{i-j} - lam_i <= 0),
    kernel exp(-(h - u)) (x0 form) or exp(h - u) (eps form); Gauss-Legendre in u (exact to round-off: the integrand
    is a polynomial times an exponential over one step). Float64."""
    u = 0.5 * h * (_GL_X + 1.0)
    kern = np.exp((-1.0 if form == "x0" else 1.0) * (h - u)) * (0.5 * h * _GL_W)
    return np.array([float(w) for w in lagrange_integrals(np.asarray(nodes, dtype=np.float64), u, kern)])


def rtol_floor(dtype: torch.dtype) -> float:
    """The smallest ``rtol`` the working dtype can meet: 10 eps. The error estimate is the difference of two
    formulas evaluated in that dtype, each a sum of a few terms of size ~|y|, so it carries round-off of a few
    eps |y| whatever the step; against a tolerance rtol |y| that is noise of a few eps / rtol. At rtol = 10 eps it is
    a few tenths of the tolerance (the controller still converges); below, the steps shrink until they underflow or
    the solve runs for hours (float32: 10 eps = 1.2e-6; float64: 2.2e-15)."""
    return RTOL_FLOOR_EPS * torch.finfo(dtype).eps


def _positive(name: str, v: Any, *, zero: bool = False) -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v >= 0 if zero else v > 0)
    if not ok:
        raise ValueError(f"options[{name!r}] must be a {'non-negative' if zero else 'positive'} finite number; "
                         f"got {v!r}")
    return float(v)


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The full, validated option set (defaults filled in); a clear error naming the bad option otherwise."""
    if not isinstance(options, dict):
        raise TypeError(f"options must be a dict; got {type(options).__name__}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown options {unknown} for method 'adaptive'; valid: {sorted(OPTIONS)}")
    o = {**_DEFAULTS, **options}
    o["rtol"] = _positive("rtol", o["rtol"])
    o["atol"] = _positive("atol", o["atol"], zero=True)
    if o["max_nfe"] is not None and (isinstance(o["max_nfe"], bool) or not isinstance(o["max_nfe"], int)
                                     or o["max_nfe"] < 2):
        raise ValueError(f"options['max_nfe'] must be an integer >= 2 or None (no cap; the default is "
                         f"{DEFAULT_MAX_NFE}); got {o['max_nfe']!r}")
    if o["h_init"] is not None:
        o["h_init"] = _positive("h_init", o["h_init"])
    if isinstance(o["order"], bool) or not isinstance(o["order"], int) or o["order"] not in (2, 3, 4):
        raise ValueError(f"options['order'] must be 2, 3 or 4 (the p-point exponential Adams formula, with the "
                         f"(p - 1)-point one embedded); got {o['order']!r}")
    if o["form"] not in FORMS:
        raise ValueError(f"options['form'] must be one of {', '.join(FORMS)}; got {o['form']!r}")
    if o["controller"] not in CONTROLLERS:
        raise ValueError(f"options['controller'] must be one of {', '.join(CONTROLLERS)}; got {o['controller']!r}")
    o["safety"] = _positive("safety", o["safety"])
    if not o["safety"] <= 1:
        raise ValueError(f"options['safety'] must lie in (0, 1]; got {o['safety']!r}")
    o["min_factor"] = _positive("min_factor", o["min_factor"])
    if not o["min_factor"] < 1:
        raise ValueError(f"options['min_factor'] must lie in (0, 1); got {o['min_factor']!r}")
    o["max_factor"] = _positive("max_factor", o["max_factor"])
    if not o["max_factor"] > 1:
        raise ValueError(f"options['max_factor'] must be > 1; got {o['max_factor']!r}")
    if not isinstance(o["corrector"], bool):
        raise ValueError(f"options['corrector'] must be True or False; got {o['corrector']!r}")
    if isinstance(o["max_rejections"], bool) or not isinstance(o["max_rejections"], int) or o["max_rejections"] < 1:
        raise ValueError(f"options['max_rejections'] must be a positive integer; got {o['max_rejections']!r}")
    return o


class Adaptive(Method):
    """Exponential Adams embedded pair in lam = -log rho with PI step-size control (see the module docstring).

    ``options``: ``rtol``, ``atol`` (tolerances on y = x / alpha; default 1e-3; ``rtol`` at least
    :func:`rtol_floor` of the state's dtype, 10 eps), ``max_nfe`` (raise :class:`~ei_toolkit.NFEBudgetExceeded`
    rather than exceed it; default :data:`DEFAULT_MAX_NFE` = 10000, None for no cap), ``h_init`` (first step in
    lam; default from the first-step heuristic), ``order`` (p = 4, default: the 4-point formula with the 3-point
    one embedded; 3; or 2: the 2-point formula with DDIM),
    ``form`` (``"x0"``, default, or ``"eps"``), ``safety``, ``min_factor``, ``max_factor`` (bounds on h_new / h),
    ``controller`` (``"pi"`` or ``"i"``), ``max_rejections`` (consecutive rejections before giving up),
    ``corrector`` (default True: correct each accepted step with the evaluation at its end, no extra evaluation).

    ``Solution.times`` is the accepted grid (float64, monotone from t_start to t_end: decreasing when sampling,
    increasing forward in time; usable as ``grid=`` of a fixed-step method);
    ``stats`` holds ``nfe``, ``steps`` (= ``accepted``), ``rejected``, ``accepted_grid`` (the same times) and
    ``h`` (the accepted step sizes in lam).
    """

    name = "adaptive"
    matrix = False
    stochastic = False
    black_box = False

    def __init__(self, **options: Any) -> None:
        o = check_options(options)
        self.options = o
        self.order = o["order"]

    def configure(self, *, lam: float | None = None, eta: float | None = None,
                  options: dict[str, Any] | None = None) -> Method:
        self.refuse_noise(lam, eta)
        if not options:
            return self
        if not isinstance(options, dict):
            raise TypeError(f"options must be a dict; got {type(options).__name__}")
        return Adaptive(**{**self.options, **options})

    # -- the solve -------------------------------------------------------------------------------------------------

    def solve(self, request: SolveRequest) -> Any:
        from ..adapters import NFEBudgetExceeded
        from ..solution import Solution

        if request.nfe is not None or request.grid is not None:
            raise ValueError("method 'adaptive' chooses its own steps: nfe/grid do not apply; set options={'rtol': "
                             "..., 'atol': ..., 'max_nfe': ...}")
        o = self.options
        floor = rtol_floor(request.x.dtype)
        if o["rtol"] < floor:
            raise ValueError(f"options['rtol']={o['rtol']:.3g} is below what {request.x.dtype} can meet: the error "
                             f"estimate carries round-off of a few eps, so rtol must be at least 10 eps = {floor:.3g}; "
                             "loosen rtol or solve in float64 (dtype=torch.float64)")
        start = time.perf_counter()
        sde, ev, form = request.sde, request.evaluator, o["form"]
        t_start, t_end = request.t_start, request.t_end
        rho_end = float(sde.rho(torch.tensor(t_end, dtype=torch.float64)))
        to_zero = not rho_end > 0
        t_stop = t_end
        if to_zero:
            if not t_end < sde.t_min < t_start:
                raise ValueError(f"method 'adaptive' steps in log rho, which is singular at rho = 0: to end at "
                                 f"t_end = {t_end:g} it stops at sde.t_min = {sde.t_min:g} first, which must lie "
                                 f"inside (t_end, t_start)")
            t_stop = sde.t_min
        lam_a = -math.log(float(sde.rho(torch.tensor(t_start, dtype=torch.float64))))
        lam_b = -math.log(float(sde.rho(torch.tensor(t_stop, dtype=torch.float64))))
        d = 1.0 if lam_b >= lam_a else -1.0  # toward the data (lam grows) or, forward in time, toward the noise
        span = abs(lam_b - lam_a)
        nfe0 = ev.nfe
        budget = o["max_nfe"]

        def coeffs(t: float) -> tuple[float, float]:
            tt = torch.tensor(t, dtype=torch.float64)
            return float(sde.alpha(tt)), float(sde.sigma(tt))

        def t_of(lam: float) -> float:
            return float(sde.t_of_rho(torch.tensor(math.exp(-lam), dtype=torch.float64)))

        def evaluate(x: torch.Tensor, t: float, a: float, s: float) -> torch.Tensor:
            if budget is not None and ev.nfe - nfe0 >= budget:
                raise NFEBudgetExceeded(f"method 'adaptive' needed more than max_nfe={budget} model evaluations "
                                        f"(at t = {t:.6g}); loosen rtol/atol or raise max_nfe")
            eval_times.append(t)
            return ev(x, t, form, alpha=a, sigma=s)

        def scale(x: torch.Tensor, a: float) -> torch.Tensor:
            return x.abs() * (1.0 / a)

        x = request.x
        a_i, s_i = coeffs(t_start)
        times, hs, eval_times = [t_start], [], []
        lams, evals = [lam_a], [evaluate(x, t_start, a_i, s_i)]  # history (newest last)
        states = [x] if request.trajectory else []
        lam_i, t_i = lam_a, t_start
        p = o["order"]
        rtol, atol, safety = o["rtol"], o["atol"], o["safety"]
        h = o["h_init"] if o["h_init"] is not None else self._first_step(rtol, span)
        h = min(h, span)
        err_prev, rejected, in_a_row, last_rejected = 1.0, 0, 0, False
        while d * (lam_b - lam_i) > 1e-12 * max(1.0, abs(lam_b)):
            rest = d * (lam_b - lam_i)
            if h >= rest * (1 - 1e-9):
                h, last = rest, True
            else:
                if h > 0.5 * rest:  # avoid a sliver of a last step: split the rest evenly
                    h = 0.5 * rest
                last = False
            if h <= 1e-10 * max(1.0, abs(span)):
                raise NumericalError(f"method 'adaptive': the step size underflowed at t = {t_i:.6g} (h = {h:.3g} in "
                                     "log rho); the tolerance may be too tight for the working precision")
            lam_n = lam_b if last else lam_i + d * h
            sh = d * h  # the signed step: the weights integrate over [lam_i, lam_n] either way
            t_n = t_stop if last else t_of(lam_n)
            a_n, s_n = coeffs(t_n)
            psi = s_n / s_i if form == "x0" else a_n / a_i
            c = a_n if form == "x0" else -s_n
            m = min(p, len(evals))
            nodes = np.asarray([lams[-1 - j] - lam_i for j in range(m)])
            hi = c * lam_weights(nodes, sh, form)
            x_n = torch.mul(x, psi)
            for j in range(m):
                x_n.add_(evals[-1 - j], alpha=float(hi[j]))
            e_n = None
            if m == 1:  # first step: DDIM, its error by the 2-point formula through both ends (needs e at the end)
                e_n = evaluate(x_n, t_n, a_n, s_n)
                w2 = c * lam_weights(np.asarray([sh, 0.0]), sh, form)
                diff = torch.mul(e_n, float(w2[0])).add_(evals[-1], alpha=float(w2[1] - hi[0]))
                k = 2
            else:
                lo = c * lam_weights(nodes[:-1], sh, form)
                dw = hi - np.append(lo, 0.0)
                diff = torch.mul(evals[-1], float(dw[0]))
                for j in range(1, m):
                    diff.add_(evals[-1 - j], alpha=float(dw[j]))
                k = m
            tol = torch.maximum(scale(x, a_i), scale(x_n, a_n)).mul_(rtol).add_(atol)
            err = float(((diff * (1.0 / a_n)) / tol).pow(2).mean().sqrt().detach())
            if not math.isfinite(err):
                ev.check()
                err = math.inf
            if err <= 1.0:
                need_eval = not last or to_zero
                if e_n is None and need_eval:
                    e_n = evaluate(x_n, t_n, a_n, s_n)
                if o["corrector"] and e_n is not None:  # UniPC's idea: refit through e_n, no extra evaluation
                    wc = c * lam_weights(np.concatenate([[sh], nodes]), sh, form)
                    x_c = torch.mul(x, psi).add_(e_n, alpha=float(wc[0]))
                    for j in range(m):
                        x_c.add_(evals[-1 - j], alpha=float(wc[j + 1]))
                    x_n = x_c
                x, lam_i, t_i, a_i, s_i = x_n, lam_n, t_n, a_n, s_n
                times.append(t_n)
                hs.append(h)
                if request.trajectory:
                    states.append(x)
                if e_n is not None:
                    lams.append(lam_n)
                    evals.append(e_n)
                    del lams[:-p], evals[:-p]
                err = max(err, 1e-10)
                if o["controller"] == "pi" and len(hs) > 1:
                    fac = safety * err ** (-0.7 / k) * err_prev ** (0.4 / k)
                else:
                    fac = safety * err ** (-1.0 / k)
                fac = min(1.0 if last_rejected else o["max_factor"], max(o["min_factor"], fac))
                h, err_prev, in_a_row, last_rejected = h * fac, err, 0, False
            else:
                rejected += 1
                in_a_row += 1
                if in_a_row > o["max_rejections"]:
                    raise NumericalError(f"method 'adaptive': {in_a_row} consecutive rejected steps at t = {t_i:.6g} "
                                         f"(error estimate {err:.3g}); the problem may be too stiff for the tolerance")
                fac = o["min_factor"] if not math.isfinite(err) else max(o["min_factor"], safety * err ** (-1.0 / k))
                h, last_rejected = h * min(fac, 0.9), True
        if to_zero:  # the exact DDIM step to rho = 0 from the data prediction at t_min
            a_n, s_n = coeffs(t_end)
            e = evals[-1]
            x0 = e if form == "x0" else (x - s_i * e) * (1.0 / a_i)
            x = x0 * a_n
            times.append(t_end)
            hs.append(math.inf)
            if request.trajectory:
                states.append(x)
        ev.check()
        grid = torch.tensor(times, dtype=torch.float64)
        return Solution(x=x, times=grid, eval_times=torch.tensor(eval_times, dtype=torch.float64), nfe=ev.nfe - nfe0,
                        method=self.name, grid="adaptive",
                        trajectory=torch.stack(states) if request.trajectory else None,
                        stats={"seconds": time.perf_counter() - start, "steps": len(times) - 1,
                               "accepted": len(times) - 1, "rejected": rejected, "accepted_grid": grid.clone(),
                               "h": hs, "rtol": rtol, "atol": atol, "order": p, "form": form})

    @staticmethod
    def _first_step(rtol: float, span: float) -> float:
        """First step in lam, without an extra evaluation. At the start (high noise) the data prediction is nearly
        constant (the data mean), so the exponential Euler first step is nearly exact and a step of half a unit of
        lam (rho / 1.65) is usually accepted; it shrinks like rtol^(1/4) below rtol = 1e-4 and is capped at a quarter
        of the span. Its own error estimate corrects it (a rejection costs one evaluation, on the first step only)."""
        return min(0.25 * span, 0.5 * min(1.0, (rtol / 1e-4) ** 0.25))
