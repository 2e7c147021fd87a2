"""ei_toolkit: exponential integrators for semilinear ODEs and SDEs, with fast diffusion-model sampling
as the flagship client (Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator",
ICLR 2023)."""

from . import adapters, grids, integrators
from .adapters import FlowODE, ReverseSDE, brownian_motion, odeint, sdeint
from .errors import NumericalError
from .grids import GRIDS, time_grid
from .integrators import INTEGRATORS, register
from .sampling import Solution, sample, solve
from .sde import CLD, EDM, VESDE, VPSDE, CosineVPSDE, DiscreteVP, LinearSDE, MatrixLinearSDE, SubVPSDE, SymbolicForms

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
    "FlowODE",
    "LinearSDE",
    "MatrixLinearSDE",
    "NumericalError",
    "ReverseSDE",
    "Solution",
    "SubVPSDE",
    "SymbolicForms",
    "__version__",
    "adapters",
    "brownian_motion",
    "grids",
    "integrators",
    "odeint",
    "register",
    "sample",
    "sdeint",
    "solve",
    "time_grid",
]
