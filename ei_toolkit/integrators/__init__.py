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
ALIASES: dict[str, str] = {}
"""Familiar names (k-diffusion, ComfyUI, diffusers, the papers) -> the canonical name in :data:`INTEGRATORS`;
:data:`ALIAS_NOTES` says what each alias is: the same update ("exact", tested) or the closest method here."""
ALIAS_NOTES: dict[str, str] = {}


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
    if method.name in ALIASES:
        raise ValueError(f"{method.name!r} is an alias of {ALIASES[method.name]!r}; choose another name")
    INTEGRATORS[method.name] = method
    return method


def register_alias(alias: str, name: str, note: str, *, replace: bool = False) -> None:
    """Let :func:`get_integrator` (and so ``ei.sample(method=alias)``) resolve ``alias`` to the registered method
    ``name`` (the same object: its ``name`` and results are the canonical method's); ``note`` says what the alias is."""
    if not isinstance(alias, str) or not alias:
        raise ValueError("an alias needs a non-empty string name")
    if name not in INTEGRATORS:
        raise ValueError(f"unknown method {name!r}: register it before its aliases")
    if alias in INTEGRATORS:
        raise ValueError(f"{alias!r} is a method's own name; an alias cannot shadow it")
    if alias in ALIASES and not replace:
        raise ValueError(f"the alias {alias!r} exists (for {ALIASES[alias]!r}); pass replace=True to override it")
    ALIASES[alias], ALIAS_NOTES[alias] = name, note


def get_integrator(name: str | Method) -> Method:
    """The method called ``name`` (or ``name`` itself if it is one)."""
    if isinstance(name, Method):
        return name
    if not isinstance(name, str):
        raise TypeError(f"method must be a name or an ei_toolkit.integrators.Method; got {type(name).__name__}")
    name = ALIASES.get(name, name)
    if name not in INTEGRATORS:
        import difflib

        if name.startswith("torchdiffeq:"):
            bare = name.split(":", 1)[1]
            close = difflib.get_close_matches(bare, TORCHDIFFEQ_METHODS, n=1)
            hint = f"; did you mean 'torchdiffeq:{close[0]}'?" if close else ""
            raise ValueError(f"unknown torchdiffeq method {bare!r}; valid: {', '.join(TORCHDIFFEQ_METHODS)}{hint}")
        known = [*INTEGRATORS, *ALIASES]
        close = difflib.get_close_matches(name, known, n=1) or difflib.get_close_matches(name.lower(), known, n=1)
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
# DPM-Solver++ 2S/3S), on the logSNR-uniform grid DPM-Solver recommends (the singlestep ones in t: quadratic_t).
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
# DPM-Solver++(2M) as diffusers runs it below 15 steps, or at any count with final_sigmas_type="zero": the last step
# with one point.
register(ExponentialAdams("x0-logrhoab1-mid-lof", 2, "logrho", default_grid="quadratic_t", target="x0",
                          rule="midpoint", lower_order_final=True))
# Midpoint predictor + exact corrector, data prediction: UniPC bh2's structure (order 3); the "-lof" form lowers the
# order on the last steps, as UniPC does for short runs (the unguided default at NFE 8-14, sampling.py).
register(ExponentialAdams("x0-logrhoab1-mid-pc", 2, "logrho", default_grid="uniform_logrho", target="x0",
                          corrector=True, rule="midpoint"))
register(ExponentialAdams("x0-logrhoab1-mid-pc-lof", 2, "logrho", default_grid="quadratic_t", target="x0",
                          corrector=True, rule="midpoint", lower_order_final=True))
# UniPC itself (Zhao et al. 2023; bh1 and bh2, orders 2 and 3, final orders lowered as diffusers does): its two-point
# weights B(h) / 2 and one-point-more corrector (exponential_adams.py); diffusers' UniPCMultistepScheduler step for
# step (tests/test_unipc_identity.py).
for _points in (2, 3):
    for _bh in ("bh1", "bh2"):
        register(ExponentialAdams(f"x0-logrhoab{_points - 1}-unipc" + ("-bh1" if _bh == "bh1" else ""), _points,
                                  "logrho", default_grid="quadratic_t", target="x0", corrector=True, rule=_bh,
                                  corrector_rule=_bh, lower_order_final=True))
for _order in (2, 3):
    for _target, _prefix in (("eps", ""), ("x0", "x0-")):
        register(SinglestepExponential(f"{_prefix}logrhoss{_order}", _order, target=_target))
    # stages uniform in t, on the data prediction (the eps form, stages in t, folds the sampling map of a 16-dimensional
    # mixture at NFE 10-12 on VP: exact inversion stalls; on the flow mixtures it trailed the x0 form)
    register(SinglestepExponential(f"x0-tss{_order}", _order, target="x0", variable="t", default_grid="quadratic_t"))
register(StochasticDDIM(lam=1.0, name="sddim"))  # lam=1: the DDPM posterior; solve(..., lam= or eta=) reconfigures
for _name in TORCHDIFFEQ_METHODS:
    register(TorchDiffEq(_name))
register(Adaptive())  # exponential Adams embedded pair with step-size control (adaptive.py)

# Familiar names. "Exact": the same update, step for step (tests/test_k_samplers.py drives k-diffusion's own
# samplers through ei_toolkit.k_samplers on the same sigmas; tests/test_compare.py). "Closest": same variable,
# target and evaluations per step, other coefficients. k-diffusion's `euler` is `ddim` here (Euler in sigma on
# x / alpha is DDIM; on VE / EDM also this toolkit's `euler`); `ddim`, `euler` and `ipndm` are canonical names.
for _alias, _name, _note in (
    ("dpmpp_2m", "x0-logrhoab1-mid", "exact: DPM-Solver++(2M), k-diffusion's sample_dpmpp_2m (diffusers' "
                                     "DPMSolverMultistepScheduler 2M from 15 steps with final_sigmas_type='sigma_min'; "
                                     "below, or with 'zero', it lowers the last order: x0-logrhoab1-mid-lof)"),
    ("lms", "rhoab3", "exact: k-diffusion's sample_lms (order 4): Adams in sigma = rho, integrated exactly"),
    ("heun", "rhork-heun", "exact: k-diffusion's sample_heun without churn (Heun's method in sigma = rho; its step "
                           "into sigma = 0 is an Euler step, as in ei_toolkit.k_samplers)"),
    ("deis", "tab3", "exact: DEIS's tAB3 (Zhang & Chen 2023), implemented here"),
    ("dpmpp_3m", "x0-logrhoab2", "closest: DPM-Solver++(3M) (k-diffusion's dpmpp_3m_sde at eta=0, diffusers' "
                                 "order 3): same three x0 points in log rho; they truncate a Taylor expansion, "
                                 "x0-logrhoab2 integrates the interpolating quadratic exactly"),
    ("unipc", "x0-logrhoab1-unipc", "exact: diffusers' UniPCMultistepScheduler(solver_type='bh2', solver_order=2) "
                                    "(UniPC, Zhao et al. 2023; tests/test_unipc_identity.py)"),
    ("unipc_bh1", "x0-logrhoab1-unipc-bh1", "exact: diffusers' UniPCMultistepScheduler(solver_type='bh1', "
                                            "solver_order=2)"),
    ("uni_pc_bh2", "x0-logrhoab1-unipc", "closest: ComfyUI's uni_pc_bh2 (see unipc; its order and final steps "
                                         "follow the UniPC reference code)"),
    ("dpm_2", "logrhoss2", "closest: DPM-Solver-2 / k-diffusion's sample_dpm_2: same stage at the log-rho "
                           "midpoint; they advance with the midpoint evaluation alone, logrhoss2 with the exact "
                           "integral of the line through both"),
    ("dpmpp_2s", "x0-logrhoss2", "closest: DPM-Solver++(2S) (k-diffusion's sample_dpmpp_2s_ancestral at eta=0): "
                                 "as dpm_2, on the data prediction"),
):
    register_alias(_alias, _name, _note)

__all__ = [
    "ALIASES",
    "ALIAS_NOTES",
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
    "register_alias",
]
