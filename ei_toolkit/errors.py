"""Exceptions raised by ei_toolkit.

Bad arguments raise :class:`ValueError` (or :class:`TypeError` for a wrong type) whose message names the
argument and what was expected. Numerical trouble found while deriving or integrating (a NaN, a rho that
is not monotone, a quadrature that does not converge) raises :class:`NumericalError`.
"""


class NumericalError(ArithmeticError):
    """A computation produced a non-finite or inconsistent value instead of silently propagating it."""
