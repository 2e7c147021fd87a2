"""The symbolic linear-SDE layer and the built-in diffusion SDEs."""

from .builtins import EDM, CosineVPSDE, DiscreteVP, SubVPSDE, VESDE, VPSDE
from .linear import LinearSDE, SymbolicForms

__all__ = ["EDM", "CosineVPSDE", "DiscreteVP", "LinearSDE", "SubVPSDE", "SymbolicForms", "VESDE", "VPSDE"]
