"""The integrators, by name. Add your own with :func:`register` (see docs/integrators.md)."""

from __future__ import annotations

from .adaptive import Adaptive
from .base import (
    EpsFn,
    Integrator,
    Method,
    MultistepPlan,
    NoiseSource,
    Plan,
    PredictorCorrectorPlan,
    RungeKuttaPlan,
    SolveRequest,
    combine,
    plan_for,
)
from .ddim import DDIM
from .euler import Euler
from .exponential_adams import ExponentialAdams, adams_plan
from .ipndm import IPNDM
from .runge_kutta import TABLEAUX, ButcherTableau, RhoRungeKutta
from .sddim import StochasticDDIM
from .singlestep import COLLOCATIONS, Collocation, SinglestepExponential
from .torchdiffeq import TORCHDIFFEQ_METHODS, TorchDiffEq

INTEGRATORS: dict[str, Method] = {}


def register(method: Method, *, replace: bool = False) -> Method:
    """Make ``method`` (an :class:`Integrator`, a stochastic or a black-box :class:`Method`) available to
    :func:`ei_toolkit.sample` under ``method.name``."""
    if not isinstance(method, Method):
        raise TypeError(f"method must be an ei_toolkit.integrators.Method (e.g. an Integrator); got "
                        f"{type(method).__name__}")
    if not isinstance(getattr(method, "name", None), str) or not method.name:
        raise ValueError("a registered method needs a non-empty string name")
    if method.name in INTEGRATORS and not replace:
        raise ValueError(f"a method named {method.name!r} exists; pass replace=True to override it")
    INTEGRATORS[method.name] = method
    return method


def get_integrator(name: str | Method) -> Method:
    """The method called ``name`` (or ``name`` itself if it is one)."""
    if isinstance(name, Method):
        return name
    if not isinstance(name, str):
        raise TypeError(f"method must be a name or an ei_toolkit.integrators.Method; got {type(name).__name__}")
    if name not in INTEGRATORS:
        import difflib

        if name.startswith("torchdiffeq:"):
            bare = name.split(":", 1)[1]
            close = difflib.get_close_matches(bare, TORCHDIFFEQ_METHODS, n=1)
            hint = f"; did you mean 'torchdiffeq:{close[0]}'?" if close else ""
            raise ValueError(f"unknown torchdiffeq method {bare!r}; valid: {', '.join(TORCHDIFFEQ_METHODS)}{hint}")
        close = difflib.get_close_matches(name, list(INTEGRATORS), n=1) or difflib.get_close_matches(
            name.lower(), list(INTEGRATORS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""  # last, where the eye lands after the list
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(INTEGRATORS)}{hint}")
    return INTEGRATORS[name]


# Default grids: for each method, the grid with the lowest geometric-mean median error at NFE 10, 15 and 20
# over the four Gaussian mixtures of benchmarks/results/accuracy.md (DDPM linear schedule).
_BEST_GRID = {
    "tab0": "quadratic_t", "tab1": "quadratic_t", "tab2": "uniform_logrho", "tab3": "uniform_logrho",
    "rhoab0": "quadratic_t", "rhoab1": "quadratic_t", "rhoab2": "quadratic_t", "rhoab3": "quadratic_t",
    "logrhoab1": "quadratic_t", "logrhoab2": "uniform_logrho", "logrhoab3": "uniform_logrho",
}
register(DDIM())
register(Euler())
register(IPNDM())
for _k in range(1, 5):
    register(ExponentialAdams(f"tab{_k - 1}", _k, "t", default_grid=_BEST_GRID[f"tab{_k - 1}"]))
for _k in range(1, 5):
    register(ExponentialAdams(f"rhoab{_k - 1}", _k, "rho", default_grid=_BEST_GRID[f"rhoab{_k - 1}"]))
for _k in range(2, 5):
    register(ExponentialAdams(f"logrhoab{_k - 1}", _k, "logrho", default_grid=_BEST_GRID[f"logrhoab{_k - 1}"]))
for _name, _tab in TABLEAUX.items():
    register(RhoRungeKutta(f"rhork-{_name}", _tab, default_grid="quadratic_t"))
# The data-prediction (x0) forms of the exponential Adams family (DPM-Solver++'s multistep family in log rho), the
# predictor-corrector forms (UniPC's idea, no extra evaluations) and the singlestep methods (DPM-Solver-2/3,
# DPM-Solver++ 2S/3S), all on the logSNR-uniform grid DPM-Solver recommends.
for _k in range(2, 5):
    for _var, _stem in (("t", "tab"), ("rho", "rhoab"), ("logrho", "logrhoab")):
        register(ExponentialAdams(f"x0-{_stem}{_k - 1}", _k, _var, default_grid="uniform_logrho", target="x0"))
for _k in range(1, 4):
    for _target, _prefix in (("eps", ""), ("x0", "x0-")):
        register(ExponentialAdams(f"{_prefix}logrhoab{_k - 1}-pc", _k, "logrho", default_grid="uniform_logrho",
                                  target=_target, corrector=True))
# Two points in log rho with the polynomial frozen at the step's middle: DPM-Solver-2M / DPM-Solver++(2M)'s
# coefficients (exponential_adams.py, rule="midpoint").
for _target, _prefix in (("eps", ""), ("x0", "x0-")):
    register(ExponentialAdams(f"{_prefix}logrhoab1-mid", 2, "logrho", default_grid="uniform_logrho", target=_target,
                              rule="midpoint"))
# Midpoint predictor + exact corrector, data prediction: UniPC's bh2 variant (order 3); the "-lof" form lowers the
# order on the last steps, as UniPC does for short runs, and is the default under strong guidance (sampling.py).
register(ExponentialAdams("x0-logrhoab1-mid-pc", 2, "logrho", default_grid="uniform_logrho", target="x0",
                          corrector=True, rule="midpoint"))
register(ExponentialAdams("x0-logrhoab1-mid-pc-lof", 2, "logrho", default_grid="quadratic_t", target="x0",
                          corrector=True, rule="midpoint", lower_order_final=True))
for _order in (2, 3):
    for _target, _prefix in (("eps", ""), ("x0", "x0-")):
        register(SinglestepExponential(f"{_prefix}logrhoss{_order}", _order, target=_target))
register(StochasticDDIM(lam=1.0, name="sddim"))  # lam=1: the DDPM posterior; solve(..., lam= or eta=) reconfigures
for _name in TORCHDIFFEQ_METHODS:
    register(TorchDiffEq(_name))
register(Adaptive())  # exponential Adams embedded pair with step-size control (adaptive.py)

__all__ = [
    "COLLOCATIONS",
    "DDIM",
    "INTEGRATORS",
    "IPNDM",
    "TABLEAUX",
    "ButcherTableau",
    "Collocation",
    "EpsFn",
    "Euler",
    "ExponentialAdams",
    "Integrator",
    "Method",
    "MultistepPlan",
    "NoiseSource",
    "Plan",
    "PredictorCorrectorPlan",
    "RhoRungeKutta",
    "RungeKuttaPlan",
    "SinglestepExponential",
    "SolveRequest",
    "StochasticDDIM",
    "TorchDiffEq",
    "adams_plan",
    "combine",
    "get_integrator",
    "plan_for",
    "register",
]
