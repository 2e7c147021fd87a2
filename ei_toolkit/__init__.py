"""ei_toolkit: exponential integrators for semilinear ODEs and SDEs, with fast diffusion-model sampling
as the flagship client (Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator",
ICLR 2023)."""

from . import grids, integrators
from .errors import NumericalError
from .grids import GRIDS, time_grid
from .integrators import INTEGRATORS, register
from .sampling import Solution, sample, solve
from .sde import EDM, VESDE, VPSDE, CosineVPSDE, DiscreteVP, LinearSDE, SubVPSDE, SymbolicForms

__version__ = "0.1.0"

__all__ = [
    "EDM",
    "GRIDS",
    "INTEGRATORS",
    "VESDE",
    "VPSDE",
    "CosineVPSDE",
    "DiscreteVP",
    "LinearSDE",
    "NumericalError",
    "Solution",
    "SubVPSDE",
    "SymbolicForms",
    "__version__",
    "grids",
    "integrators",
    "register",
    "sample",
    "solve",
    "time_grid",
]
