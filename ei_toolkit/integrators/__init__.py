"""The integrators, by name. Add your own with :func:`register` (see docs/integrators.md)."""

from __future__ import annotations

from .base import EpsFn, Integrator, MultistepPlan, RungeKuttaPlan, combine
from .ddim import DDIM
from .euler import Euler
from .exponential_adams import ExponentialAdams, adams_plan
from .ipndm import IPNDM
from .runge_kutta import TABLEAUX, ButcherTableau, RhoRungeKutta
from .sddim import StochasticDDIM, StochasticPlan, brownian_noise

INTEGRATORS: dict[str, Integrator] = {}


def register(integrator: Integrator, *, replace: bool = False) -> Integrator:
    """Make ``integrator`` available to :func:`ei_toolkit.sample` under ``integrator.name``."""
    if not isinstance(integrator, Integrator):
        raise TypeError(f"integrator must be an ei_toolkit.integrators.Integrator; got {type(integrator).__name__}")
    if integrator.name in INTEGRATORS and not replace:
        raise ValueError(f"an integrator named {integrator.name!r} exists; pass replace=True to override it")
    INTEGRATORS[integrator.name] = integrator
    return integrator


def get_integrator(name: str | Integrator) -> Integrator:
    """The integrator called ``name`` (or ``name`` itself if it is one)."""
    if isinstance(name, Integrator):
        return name
    if name not in INTEGRATORS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(INTEGRATORS)}")
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

__all__ = [
    "DDIM",
    "INTEGRATORS",
    "IPNDM",
    "TABLEAUX",
    "ButcherTableau",
    "EpsFn",
    "Euler",
    "ExponentialAdams",
    "Integrator",
    "MultistepPlan",
    "RhoRungeKutta",
    "RungeKuttaPlan",
    "StochasticDDIM",
    "StochasticPlan",
    "adams_plan",
    "brownian_noise",
    "combine",
    "get_integrator",
    "register",
]
