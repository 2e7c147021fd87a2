"""ei_toolkit: exponential integrators for semilinear ODEs and SDEs, with fast diffusion-model sampling
as the flagship client (Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator",
ICLR 2023)."""

from . import adapters, diffusion, grids, integrators, k_samplers
from .adapters import FlowODE, NFEBudgetExceeded, ReverseSDE, brownian_motion, odeint, sdeint
from .errors import NumericalError, RoundoffWarning
from .generate import generate
from .grid_opt import HeldoutCheck, HeldoutCheckFailed, heldout_check, load_grid, optimize_grid, save_grid
from .grids import GRIDS, time_grid
from .integrators import INTEGRATORS, Integrator, Method, register
from .integrators.ems import EMSAdams, ModelStatistics
from .inversion import invert
from .likelihood import log_likelihood
from .model import ModelEvaluator
from .sampling import sample, solve
from .sde import (
    CLD,
    EDM,
    VESDE,
    VPSDE,
    CosineVPSDE,
    DiscreteVP,
    LinearSDE,
    MatrixLinearSDE,
    RectifiedFlow,
    SubVPSDE,
    SymbolicForms,
)
from .shards import evaluate_shards, load_shards, verify_shards
from .solution import Solution
from .statistics import check_statistics, model_statistics

__version__ = "0.1.0"

__all__ = [
    "CLD",
    "EDM",
    "GRIDS",
    "INTEGRATORS",
    "VESDE",
    "VPSDE",
    "CosineVPSDE",
    "DiscreteVP",
    "EMSAdams",
    "FlowODE",
    "HeldoutCheck",
    "HeldoutCheckFailed",
    "Integrator",
    "LinearSDE",
    "MatrixLinearSDE",
    "Method",
    "ModelEvaluator",
    "ModelStatistics",
    "NFEBudgetExceeded",
    "NumericalError",
    "RectifiedFlow",
    "ReverseSDE",
    "RoundoffWarning",
    "Solution",
    "SubVPSDE",
    "SymbolicForms",
    "__version__",
    "adapters",
    "brownian_motion",
    "check_statistics",
    "diffusion",
    "evaluate_shards",
    "generate",
    "grids",
    "heldout_check",
    "integrators",
    "invert",
    "k_samplers",
    "load_grid",
    "load_shards",
    "log_likelihood",
    "model_statistics",
    "odeint",
    "optimize_grid",
    "register",
    "sample",
    "save_grid",
    "sdeint",
    "solve",
    "time_grid",
    "verify_shards",
]


def __getattr__(name: str) -> object:
    # diffusers is an optional extra: ei_toolkit.EIScheduler is imported on first use
    if name == "EIScheduler":
        from .diffusion.scheduler import EIScheduler

        return EIScheduler
    if name == "EIInverseScheduler":
        from .diffusion.inverse_scheduler import EIInverseScheduler

        return EIInverseScheduler
    raise AttributeError(f"module 'ei_toolkit' has no attribute {name!r}")
