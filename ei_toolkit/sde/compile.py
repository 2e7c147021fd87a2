"""Compile sympy expressions of time into NumPy and torch functions.

Before printing, ``exp(x) - 1`` and ``log(1 + x)`` are rewritten to ``expm1`` / ``log1p`` (sympy's C99
optimisations), which keeps sigma and rho accurate near t = 0 even in float32, and every constant
sub-expression is evaluated to a 17-digit float so that the generated code is a plain chain of torch
calls, as one would write by hand.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence

import numpy as np
import sympy as sp
import torch
from sympy.codegen.rewriting import expm1_opt, log1p_opt, optimize

from .derive import _Timeout, call_with_time_limit
from .tables import TableFunction, table_namespace

_FUNCS = ("exp", "log", "sqrt", "expm1", "log1p", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh",
          "tanh", "asinh", "acosh", "atanh", "atan2", "floor", "ceil", "sign")
_TORCH_NS: dict[str, object] = {name: getattr(torch, name) for name in _FUNCS}
_TORCH_NS.update(Abs=torch.abs, Min=torch.minimum, Max=torch.maximum, erf=torch.special.erf,
                 erfc=torch.special.erfc)
_NUMPY_NS: dict[str, object] = {name: getattr(np, name) for name in _FUNCS if hasattr(np, name)}
_NUMPY_NS.update(asin=np.arcsin, acos=np.arccos, atan=np.arctan, asinh=np.arcsinh, acosh=np.arccosh,
                 atanh=np.arctanh, atan2=np.arctan2, Abs=np.abs, Min=np.minimum, Max=np.maximum)


PREPARE_SECONDS = 2.0
"""Time limit of the expm1/log1p rewrite: sympy's factoring behind it can run for minutes on expressions with
large rational constants (seen with -a*t - 4217/1000); past the limit the expression is compiled unrewritten."""


def prepare(expr: sp.Expr) -> sp.Expr:
    """Rewrite for accurate evaluation (exp(x) - 1 -> expm1(x), log(1 + x) -> log1p(x), within
    :data:`PREPARE_SECONDS`) and fold constants to floats."""
    with contextlib.suppress(_Timeout):
        expr = call_with_time_limit(PREPARE_SECONDS, optimize, expr, (expm1_opt, log1p_opt))
    return sp.nfloat(expr, n=17, exponent=False)


CACHE_SIZE = 256
"""Compiled functions kept (least recently used evicted first); expressions with tabulated functions are
not cached, so that the cache never keeps a table alive after its derivation is gone."""


def _lambdify(args: tuple[sp.Symbol, ...], expr: sp.Expr, backend: str) -> Callable[..., object]:
    if expr.has(TableFunction):
        return _compile(args, expr, backend)
    return _cached_compile(args, expr, backend)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _cached_compile(args: tuple[sp.Symbol, ...], expr: sp.Expr, backend: str) -> Callable[..., object]:
    return _compile(args, expr, backend)


def _compile(args: tuple[sp.Symbol, ...], expr: sp.Expr, backend: str) -> Callable[..., object]:
    tables = table_namespace(expr)
    ns = dict(_NUMPY_NS if backend == "numpy" else _TORCH_NS)
    ns.update({name: impls[0 if backend == "numpy" else 1] for name, impls in tables.items()})
    try:
        import scipy.special

        if backend == "numpy":
            ns.update(erf=scipy.special.erf, erfc=scipy.special.erfc)
    except ImportError:  # pragma: no cover
        pass
    return sp.lambdify(args, prepare(expr), modules=[ns], docstring_limit=0)


def _expression(expr: sp.Expr | float) -> sp.Expr:
    """A sympy expression or a number, never text: strict sympify refuses strings (which it would evaluate)."""
    return sp.sympify(expr, strict=True)


def to_numpy(expr: sp.Expr, args: Sequence[sp.Symbol]) -> Callable[..., np.ndarray]:
    """A float64 NumPy function of ``args``; constant expressions broadcast to the first argument."""
    f = _lambdify(tuple(args), _expression(expr), "numpy")

    def call(*xs: object) -> np.ndarray:
        xs = tuple(np.asarray(x, dtype=np.float64) for x in xs)
        with np.errstate(all="ignore"):
            out = np.asarray(f(*xs))
            if np.iscomplexobj(out):  # a branch that leaves the reals is NaN, never silently truncated
                out = np.where(np.abs(out.imag) <= 1e-12 * np.abs(out.real), out.real, np.nan)
        return np.broadcast_to(out.astype(np.float64), np.broadcast(*xs).shape).copy()

    return call


def to_torch(expr: sp.Expr, args: Sequence[sp.Symbol]) -> Callable[..., torch.Tensor]:
    """A torch function of tensor ``args``; dtype and device follow the (broadcast) inputs."""
    expr = _expression(expr)
    f = _lambdify(tuple(args), expr, "torch")
    const = not expr.free_symbols & set(args)
    if not const:
        return f

    value = float(f(*(0.0 for _ in args)))

    def call(*xs: torch.Tensor) -> torch.Tensor:
        # x * 0 keeps shape, dtype, device and the autograd graph (the derivative is zero).
        return sum((x * 0 for x in xs[1:]), xs[0] * 0) + value

    return call
