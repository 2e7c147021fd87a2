"""ei_toolkit: exponential integrators for semilinear ODEs and SDEs, with fast diffusion-model sampling
as the flagship client (Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator",
ICLR 2023)."""

from .errors import NumericalError
from .sde import EDM, VESDE, VPSDE, CosineVPSDE, DiscreteVP, LinearSDE, SubVPSDE, SymbolicForms

__version__ = "0.1.0"

__all__ = [
    "EDM",
    "VESDE",
    "VPSDE",
    "CosineVPSDE",
    "DiscreteVP",
    "LinearSDE",
    "NumericalError",
    "SubVPSDE",
    "SymbolicForms",
    "__version__",
]
