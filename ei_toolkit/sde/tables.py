"""Tabulated special functions that stand in for closed forms sympy cannot find.

Each table is a float64 numerical object with a NumPy and a torch evaluation, wrapped as a sympy
``Function`` so that it can sit inside the symbolic expressions of a :class:`~ei_toolkit.LinearSDE`
(``alpha = exp(numeric_log_alpha(t))``), be differentiated by sympy (its derivative is exact: the
integrand it tabulates, or the slope of a piecewise-linear table) and be compiled to torch like any other
function. Torch evaluations are differentiable in their argument.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import sympy as sp
import torch

from ..errors import NumericalError

_counter = itertools.count()


class _Table:
    """Float64 node data, copied to each (device, dtype) once and then reused."""

    def __init__(self) -> None:
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return ()

    def _on(self, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = tuple(torch.tensor(a, dtype=like.dtype, device=like.device) for a in self._arrays())
        return self._cache[key]


class PiecewiseLinear(_Table):
    """Piecewise-linear interpolation through (nodes, values); constant extrapolation of the end slopes.

    Used for tabulated (DDPM-style) log-alpha schedules, where linear interpolation in t is the convention
    of DPM-Solver and of MATH.md section 7.
    """

    def __init__(self, nodes: np.ndarray, values: np.ndarray) -> None:
        super().__init__()
        self.nodes = np.asarray(nodes, dtype=np.float64)
        self.values = np.asarray(values, dtype=np.float64)
        if self.nodes.ndim != 1 or self.nodes.shape != self.values.shape or len(self.nodes) < 2:
            raise ValueError("nodes and values must be 1-D arrays of the same length >= 2")
        if not np.all(np.diff(self.nodes) > 0):
            raise ValueError("nodes must be strictly increasing")
        if not np.all(np.isfinite(self.values)):
            raise NumericalError("tabulated values must be finite")
        self.slopes = np.diff(self.values) / np.diff(self.nodes)

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self.nodes, self.values, self.slopes

    def _index_np(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(self.nodes, x, side="right") - 1, 0, len(self.nodes) - 2)

    def numpy(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        i = self._index_np(x)
        return self.values[i] + self.slopes[i] * (x - self.nodes[i])

    def slope_numpy(self, x: Any) -> np.ndarray:
        return self.slopes[self._index_np(np.asarray(x, dtype=np.float64))]

    def _index(self, x: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(nodes, x.detach().contiguous(), right=True).sub_(1).clamp_(0, len(self.nodes) - 2)

    def torch(self, x: torch.Tensor) -> torch.Tensor:
        nodes, values, slopes = self._on(x)
        i = self._index(x, nodes)
        return values[i] + slopes[i] * (x - nodes[i])

    def slope_torch(self, x: torch.Tensor) -> torch.Tensor:
        nodes, _, slopes = self._on(x)
        return slopes[self._index(x, nodes)]

    def inverse_numpy(self, y: Any) -> np.ndarray:
        """Inverse of a strictly monotone table (linear extrapolation outside)."""
        y = np.asarray(y, dtype=np.float64)
        sign = 1.0 if self.values[-1] > self.values[0] else -1.0
        i = np.clip(np.searchsorted(sign * self.values, sign * y, side="right") - 1, 0, len(self.nodes) - 2)
        return self.nodes[i] + (y - self.values[i]) / self.slopes[i]

    def inverse_torch(self, y: torch.Tensor) -> torch.Tensor:
        nodes, values, slopes = self._on(y)
        sign = 1.0 if self.values[-1] > self.values[0] else -1.0
        key = (sign * values).contiguous()
        i = torch.searchsorted(key, (sign * y).detach().contiguous(), right=True).sub_(1)
        i = i.clamp_(0, len(self.nodes) - 2)
        return nodes[i] + (y - values[i]) / slopes[i]


class CumulativeIntegral(_Table):
    """int_{a}^{x} f, tabulated by composite Gauss-Legendre quadrature and read back by cubic Hermite
    interpolation whose node slopes are f itself (exact).

    The node count doubles until the interpolant agrees with a direct quadrature at every interval's
    midpoint to ``rtol`` (relative to the largest |value|); :attr:`error_estimate` records the agreement.

    Near ``a``, where the integral of an integrand that vanishes at ``a`` is tiny (rho^2 ~ t^3 for G = t),
    that absolute accuracy is not a relative one. Below :attr:`direct_below` (the end of the last interval
    whose midpoint misses ``10 rtol`` relative to its own value) x is therefore read by Gauss-Legendre
    quadrature from the node below it, which keeps full relative accuracy for a non-negative integrand; this
    needs ``integrand_torch`` for the torch path.
    """

    _GAUSS = np.polynomial.legendre.leggauss(10)

    def __init__(
        self,
        integrand: Callable[[np.ndarray], np.ndarray],
        a: float,
        b: float,
        initial: float = 0.0,
        rtol: float = 1e-13,
        max_nodes: int = 2**17,
        integrand_torch: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if not b > a:
            raise ValueError(f"integration interval must have b > a; got [{a}, {b}]")
        self.integrand, self.a, self.b, self.initial = integrand, float(a), float(b), float(initial)
        self.integrand_torch = integrand_torch
        self.direct_below = self.a
        n = 256
        while True:
            nodes = np.linspace(self.a, self.b, n + 1)
            pieces = self._quad(nodes[:-1], nodes[1:])
            values = self.initial + np.concatenate([[0.0], np.cumsum(pieces)])
            slopes = self._f(nodes)
            mid = 0.5 * (nodes[:-1] + nodes[1:])
            direct = values[:-1] + self._quad(nodes[:-1], mid)
            self.nodes, self.values, self.slopes, self.h = nodes, values, slopes, nodes[1] - nodes[0]
            herm = self._hermite_numpy(mid)
            err = float(np.max(np.abs(herm - direct)))
            scale = max(1.0, float(np.max(np.abs(values))))
            if err <= rtol * scale or n >= max_nodes:
                break
            n *= 2
        self.error_estimate = err / scale
        if self.error_estimate > 1e-9:
            raise NumericalError(
                f"numerical quadrature did not converge: relative error {self.error_estimate:.1e} with {n} nodes"
            )
        with np.errstate(all="ignore"):
            inexact = ~(np.abs(herm - direct) <= 10 * rtol * np.abs(direct))
        if np.any(inexact):
            self.direct_below = float(nodes[1:][inexact][-1])

    def _f(self, x: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            y = np.broadcast_to(np.asarray(self.integrand(x), dtype=np.float64), np.shape(x))
        if not np.all(np.isfinite(y)):
            bad = np.asarray(x)[~np.isfinite(y)].ravel()[0]
            raise NumericalError(f"integrand is not finite at t = {bad:.6g}")
        return y

    def _quad(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        x, w = self._GAUSS
        half = 0.5 * (hi - lo)
        pts = (0.5 * (hi + lo))[:, None] + half[:, None] * x[None, :]
        return half * (self._f(pts) @ w)

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self.nodes, self.values, self.slopes

    def _index_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((x - self.a) / self.h).astype(np.int64), 0, len(self.nodes) - 2)

    def _hermite_numpy(self, x: np.ndarray) -> np.ndarray:
        i = self._index_numpy(x)
        v, d = self.values, self.slopes
        return _hermite(x, self.nodes[i], self.h, v[i], v[i + 1], d[i], d[i + 1])

    def numpy(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        flat = x.reshape(-1)
        out = self._hermite_numpy(flat)
        near = flat < self.direct_below
        if np.any(near):
            i = self._index_numpy(flat[near])
            out[near] = self.values[i] + self._quad(self.nodes[i], flat[near])
        return out.reshape(x.shape)

    def torch(self, x: torch.Tensor) -> torch.Tensor:
        nodes, values, slopes = self._on(x)
        i = torch.floor((x.detach() - self.a) / self.h).long().clamp_(0, len(self.nodes) - 2)
        out = _hermite(x, nodes[i], self.h, values[i], values[i + 1], slopes[i], slopes[i + 1])
        if self.direct_below <= self.a or self.integrand_torch is None:
            return out
        if torch.compiler.is_compiling():  # no data-dependent shapes: evaluate the quadrature everywhere
            return torch.where(x < self.direct_below, self._direct_torch(x, i, nodes, values), out)
        near = x < self.direct_below
        if not bool(near.any()):
            return out
        out = out.clone()
        out[near] = self._direct_torch(x[near], i[near], nodes, values)
        return out

    def _direct_torch(self, x: torch.Tensor, i: torch.Tensor, nodes: torch.Tensor,
                      values: torch.Tensor) -> torch.Tensor:
        """values[i] + int_{nodes[i]}^{x} f by 10-point Gauss-Legendre (differentiable in x)."""
        g, w = (torch.as_tensor(a, dtype=x.dtype, device=x.device) for a in self._GAUSS)
        lo = nodes[i]
        half = 0.5 * (x - lo)
        pts = (lo + half).unsqueeze(-1) + half.unsqueeze(-1) * g
        return values[i] + half * (self.integrand_torch(pts) * w).sum(-1)


def _hermite(x: Any, x0: Any, h: float, y0: Any, y1: Any, d0: Any, d1: Any) -> Any:
    s = (x - x0) / h
    s2 = s * s
    s3 = s2 * s
    return (2 * s3 - 3 * s2 + 1) * y0 + (s3 - 2 * s2 + s) * h * d0 + (-2 * s3 + 3 * s2) * y1 + (s3 - s2) * h * d1


class MonotoneInverse(_Table):
    """Inverse of a strictly increasing function f on [a, b], given f and f' in NumPy and torch.

    A dense table gives a piecewise-linear first guess; three Newton steps on f(x) = y then reach
    round-off. The torch path is differentiable: only the last Newton step carries the graph, which gives
    dx/dy = 1 / f'(x) exactly at convergence (implicit-function theorem).
    """

    def __init__(
        self,
        f_np: Callable[[np.ndarray], np.ndarray],
        df_np: Callable[[np.ndarray], np.ndarray],
        f_torch: Callable[[torch.Tensor], torch.Tensor],
        df_torch: Callable[[torch.Tensor], torch.Tensor],
        a: float,
        b: float,
        n: int = 4097,
        newton_steps: int = 3,
    ) -> None:
        super().__init__()
        self.f_np, self.df_np, self.f_torch, self.df_torch = f_np, df_np, f_torch, df_torch
        self.newton_steps = newton_steps
        nodes = np.linspace(a, b, n)
        with np.errstate(all="ignore"):
            values = np.asarray(f_np(nodes), dtype=np.float64) * np.ones_like(nodes)
        if not (np.all(np.isfinite(values)) and np.all(np.diff(values) > 0)):
            raise NumericalError("cannot invert: the function is not finite and strictly increasing on the grid")
        self.lin = PiecewiseLinear(values, nodes)  # x as a function of y

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return ()

    def numpy(self, y: Any) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        x = self.lin.numpy(y)
        for _ in range(self.newton_steps):
            df = self.df_np(x)
            with np.errstate(all="ignore"):
                x = x - np.where(df > 0, (self.f_np(x) - y) / df, 0.0)
        return x

    def _newton(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # f' vanishes where rho does (e.g. EDM at t = 0): there the table guess is already exact.
        df = self.df_torch(x)
        return x - torch.where(df > 0, (self.f_torch(x) - y) / torch.where(df > 0, df, 1), 0)

    def torch(self, y: torch.Tensor) -> torch.Tensor:
        x = self.lin.torch(y.detach())
        for _ in range(self.newton_steps - 1):
            x = self._newton(x, y.detach())
        return self._newton(x.detach(), y)


# ---------------------------------------------------------------------------------------------------------
# sympy wrappers


class TableImpl:
    """What a :class:`TableFunction` evaluates with: NumPy and torch implementations, its derivative, its table.

    The function class refers to it only weakly (sympy's global caches keep function classes for as long as
    they keep expressions that use them); the owners (each derivation that uses the function, and whoever
    made it) hold it strongly, so that a table is freed with the last SDE that uses it.
    """

    __slots__ = ("__weakref__", "derivative", "numpy", "table", "torch")

    def __init__(self, numpy_impl: Callable[[np.ndarray], np.ndarray],
                 torch_impl: Callable[[torch.Tensor], torch.Tensor],
                 derivative: Callable[[sp.Expr], sp.Expr] | None, table: Any) -> None:
        self.numpy, self.torch, self.derivative, self.table = numpy_impl, torch_impl, derivative, table


class TableFunction(sp.Function):
    """A sympy function of one argument backed by a table; subclasses are made by :func:`table_function`."""

    nargs = 1
    value_key: Hashable | None = None  # identifies the table's contents (e.g. a digest); None: the class does
    _impl_ref: Callable[[], TableImpl | None] = staticmethod(lambda: None)
    _inverse: type[TableFunction] | None = None

    @classmethod
    def impl(cls) -> TableImpl:
        """The implementation; ``ReferenceError`` if every owner of the table is gone."""
        impl = cls._impl_ref()
        if impl is None:
            raise ReferenceError(f"{cls.__name__}: its table was freed with the SDE that owned it; keep the SDE "
                                 "(or its symbolic forms) alive while using the expression")
        return impl

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        derivative = type(self).impl().derivative
        if derivative is None:
            raise sp.ArgumentIndexError(self, argindex)
        return derivative(self.args[0])

    def inverse(self, argindex: int = 1) -> type[TableFunction]:
        if self._inverse is None:
            raise LookupError(f"{type(self).__name__} has no tabulated inverse")
        return self._inverse

    def _eval_evalf(self, prec: int) -> sp.Float | None:
        arg = self.args[0].evalf(prec)
        if arg.is_Number:
            return sp.Float(float(type(self).impl().numpy(float(arg))), prec)
        return None


def table_function(
    prefix: str,
    numpy_impl: Callable[[np.ndarray], np.ndarray],
    torch_impl: Callable[[torch.Tensor], torch.Tensor],
    owner: list[TableImpl],
    derivative: Callable[[sp.Expr], sp.Expr] | None = None,
    table: Any = None,
    value_key: Hashable | None = None,
) -> type[TableFunction]:
    """Make a new sympy function class (a unique name, so that compiled code can look it up).

    Its implementation is appended to ``owner``, which must outlive every use of the class (the class itself
    refers to it weakly). ``value_key`` identifies the table by value (e.g. a digest of its data); derivation
    keys use it.
    """
    impl = TableImpl(numpy_impl, torch_impl, derivative, table)
    owner.append(impl)
    name = f"{prefix}_{next(_counter)}"
    return type(name, (TableFunction,), {"_impl_ref": staticmethod(weakref.ref(impl)), "value_key": value_key})


def table_impls(*exprs: sp.Basic) -> list[TableImpl]:
    """The implementations of the table functions inside ``exprs`` (and of their tabulated inverses)."""
    out: dict[type[TableFunction], TableImpl] = {}
    for expr in exprs:
        for f in expr.atoms(TableFunction):
            for cls in (type(f), type(f)._inverse):
                if cls is not None and cls not in out:
                    out[cls] = cls.impl()
    return list(out.values())


def table_namespace(expr: sp.Basic) -> dict[str, tuple[Callable[..., Any], Callable[..., Any]]]:
    """Names of the table functions inside ``expr`` mapped to their (numpy, torch) implementations."""
    out = {}
    for f in expr.atoms(TableFunction):
        impl = type(f).impl()
        out[type(f).__name__] = (impl.numpy, impl.torch)
    return out
