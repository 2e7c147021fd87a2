"""The symbolic linear-SDE layer, the built-in diffusion SDEs, and matrix (gDDIM) SDEs."""

from .builtins import EDM, VESDE, VPSDE, CosineVPSDE, DiscreteVP, RectifiedFlow, SubVPSDE
from .linear import LinearSDE, SymbolicForms
from .matrix import CLD, MatrixLinearSDE

__all__ = [
    "CLD",
    "EDM",
    "VESDE",
    "VPSDE",
    "CosineVPSDE",
    "DiscreteVP",
    "LinearSDE",
    "MatrixLinearSDE",
    "RectifiedFlow",
    "SubVPSDE",
    "SymbolicForms",
]
