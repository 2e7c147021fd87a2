"""Exceptions raised by ei_toolkit.

Bad arguments raise :class:`ValueError` (or :class:`TypeError` for a wrong type) whose message names the
argument and what was expected. Numerical trouble found while deriving or integrating (a NaN, a rho that
is not monotone, a quadrature that does not converge) raises :class:`NumericalError`.
"""

import operator

import torch


class NumericalError(ArithmeticError):
    """A computation produced a non-finite or inconsistent value instead of silently propagating it."""


class RoundoffWarning(UserWarning):
    """The plan amplifies a low-precision model's round-off so much that rounding, not the integrator, limits the
    accuracy (:mod:`ei_toolkit.integrators.conditioning`)."""


def positive_int(name: str, v: object) -> int:
    """``v`` as a Python int (numpy integers accepted; bools refused), or a ValueError naming ``name``."""
    try:
        n = operator.index(v)
    except TypeError:
        n = 0
    if isinstance(v, bool) or n < 1:
        raise ValueError(f"{name} must be a positive integer; got {v!r}")
    return n


def all_finite(x: torch.Tensor) -> bool:
    """Whether every element of x is finite (one host-device synchronisation). A sum is non-finite whenever an
    element is, and reads x once without allocating a mask (torch.isfinite(x).all() is ~100x slower on a CPU for
    a 3 MB batch); a non-finite sum of finite values (overflow) is settled by the exact element-wise test."""
    total = x.sum(dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    return bool(torch.isfinite(total)) or bool(torch.isfinite(x).all())


def abs_max(x: torch.Tensor) -> float:
    """max |x| as a Python float (one host-device synchronisation): inf or NaN when an element is not finite."""
    if x.numel() == 0:
        return 0.0
    return float(x.detach().abs().amax())
