"""The integrators, by name. Add your own with :func:`register` (see docs/integrators.md)."""

from __future__ import annotations

from .base import EpsFn, Integrator, MultistepPlan, RungeKuttaPlan, combine
from .ddim import DDIM
from .euler import Euler
from .exponential_adams import ExponentialAdams, adams_plan
from .ipndm import IPNDM
from .runge_kutta import TABLEAUX, ButcherTableau, RhoRungeKutta

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


register(DDIM())
register(Euler())
register(IPNDM())
for _k in range(1, 5):
    register(ExponentialAdams(f"tab{_k - 1}", _k, "t", default_grid="uniform_logrho"))
for _k in range(1, 5):
    register(ExponentialAdams(f"rhoab{_k - 1}", _k, "rho", default_grid="uniform_logrho"))
for _k in range(2, 5):
    register(ExponentialAdams(f"logrhoab{_k - 1}", _k, "logrho", default_grid="uniform_logrho"))
for _name, _tab in TABLEAUX.items():
    register(RhoRungeKutta(f"rhork-{_name}", _tab))

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
    "adams_plan",
    "combine",
    "get_integrator",
    "register",
]
