"""ei_toolkit: exponential integrators for semilinear ODEs and SDEs, with fast diffusion-model sampling
as the flagship client (Zhang & Chen, "Fast Sampling of Diffusion Models with Exponential Integrator",
ICLR 2023)."""

from .errors import NumericalError
from .sde import EDM, CosineVPSDE, DiscreteVP, LinearSDE, SubVPSDE, SymbolicForms, VESDE, VPSDE

__version__ = "0.1.0"

__all__ = [
    "EDM",
    "CosineVPSDE",
    "DiscreteVP",
    "LinearSDE",
    "NumericalError",
    "SubVPSDE",
    "SymbolicForms",
    "VESDE",
    "VPSDE",
    "__version__",
]
