"""The symbolic linear-SDE layer and the built-in diffusion SDEs."""

from .builtins import EDM, VESDE, VPSDE, CosineVPSDE, DiscreteVP, SubVPSDE
from .linear import LinearSDE, SymbolicForms

__all__ = ["EDM", "VESDE", "VPSDE", "CosineVPSDE", "DiscreteVP", "LinearSDE", "SubVPSDE", "SymbolicForms"]
