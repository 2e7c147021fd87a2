"""The symbolic semilinear layer: a scalar linear SDE dx = F(t) x dt + G(t) dw and everything derived from it.

Reference: Q. Zhang, Y. Chen, "Fast Sampling of Diffusion Models with Exponential Integrator" (DEIS),
ICLR 2023, section 3; notation of MATH.md sections 1-3.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from tokenize import TokenError
from typing import Any

import numpy as np
import sympy as sp
import torch
from sympy.parsing.sympy_parser import parse_expr

from ..errors import NumericalError
from . import derive
from .compile import to_numpy, to_torch
from .derive import RHO, S, T
from .tables import CumulativeIntegral, MonotoneInverse, TableFunction, table_function

ExprLike = sp.Expr | str | float | int
Tensorish = torch.Tensor | float | int

_RESERVED = {"t", "tau", "rho", "u"}
# Strings are parsed with the elementary functions only, so that a name such as ``beta`` or ``gamma`` is a
# parameter symbol (not sympy's special function of that name).
_PARSE_GLOBALS: dict[str, Any] = {
    name: getattr(sp, name)
    for name in ("Integer", "Float", "Rational", "Symbol", "Function", "exp", "log", "sqrt", "sin", "cos", "tan",
                 "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "erf", "erfc", "pi",
                 "E", "Abs", "Min", "Max")
}
_PARSE_GLOBALS.update(ln=sp.log, abs=sp.Abs)


@dataclass(frozen=True)
class SymbolicForms:
    """The sympy expressions of one SDE; parameters stay symbols (their values are in ``parameters``).

    Parts that sympy could not integrate or invert in closed form appear as tabulated functions (e.g.
    ``numeric_log_alpha_3(t)``); :attr:`how` says, for each quantity, which method produced it.
    """

    t: sp.Symbol
    s: sp.Symbol
    rho_symbol: sp.Symbol
    drift: sp.Expr
    diffusion: sp.Expr
    log_alpha: sp.Expr
    alpha: sp.Expr
    sigma: sp.Expr
    rho: sp.Expr
    drho_dt: sp.Expr
    psi: sp.Expr
    t_of_rho: sp.Expr
    parameters: Mapping[sp.Symbol, float]
    how: Mapping[str, str] = field(default_factory=dict)

    def evaluated(self, name: str) -> sp.Expr:
        """The expression ``name`` with the parameter values substituted."""
        return getattr(self, name).xreplace(dict(self.parameters))


def _as_parameter_symbols(parameters: Mapping[str, Any]) -> dict[str, sp.Symbol]:
    symbols = {}
    for name, value in parameters.items():
        if name in _RESERVED or not name.isidentifier():
            raise ValueError(f"parameter name {name!r} is reserved or not an identifier; choose another name")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"parameter {name} must be a real number; got {value!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"parameter {name} must be finite; got {value!r}")
        symbols[name] = sp.Symbol(name, positive=True) if v > 0 else sp.Symbol(name, real=True)
    return symbols


def parse_coefficient(what: str, value: ExprLike, symbols: Mapping[str, sp.Symbol]) -> sp.Expr:
    """Parse a coefficient of t (sympy expression, string or number) and check that it depends on t and on
    the declared parameters only."""
    local = {**symbols, "t": T}
    try:
        expr = parse_expr(value, local_dict=local, global_dict=_PARSE_GLOBALS) if isinstance(value, str) else (
            sp.sympify(value))
    except (sp.SympifyError, SyntaxError, TypeError, TokenError) as exc:
        raise ValueError(f"{what} could not be parsed as an expression in t: {value!r} ({exc})") from None
    if not isinstance(expr, sp.Expr):
        raise ValueError(f"{what} must be a scalar expression in t; got {type(expr).__name__}: {value!r}")
    if isinstance(expr, sp.MatrixBase):  # pragma: no cover - sympify returns ImmutableMatrix, not an Expr
        raise ValueError(f"{what} must be scalar")
    # Symbols that the user built with other assumptions are matched by name.
    repl = {}
    for sym in expr.free_symbols:
        if sym.name == "t" and sym != T:
            repl[sym] = T
        elif sym.name in symbols and sym != symbols[sym.name]:
            repl[sym] = symbols[sym.name]
    expr = expr.xreplace(repl)
    unknown = sorted(str(s) for s in expr.free_symbols - {T} - set(symbols.values()))
    if unknown:
        params = ", ".join(symbols) or "none"
        raise ValueError(
            f"{what} must be a function of t alone (parameters declared: {params}); it depends on "
            f"{', '.join(unknown)}. A linear SDE has drift F(t) x: give F(t) without the state, and pass "
            f"parameter values as keyword arguments, e.g. LinearSDE(..., {unknown[0]}=1.0)."
        )
    undefined = sorted(
        str(f.func) for f in expr.atoms(sp.Function)
        if isinstance(f, sp.core.function.AppliedUndef) and not isinstance(f, TableFunction)
    )
    if undefined:
        raise ValueError(f"{what} uses undefined function(s) {', '.join(undefined)}; write them out in t")
    return expr


class LinearSDE:
    """A scalar linear SDE dx = F(t) x dt + G(t) dw on [t0, t_max] with Var(x_{t0}) = sigma_init^2.

    From F and G it derives, symbolically where sympy can and by verified numerical quadrature / root
    finding where it cannot: the transition Psi(t, s), alpha(t) = Psi(t, t0), sigma(t), rho = sigma / alpha,
    its inverse t(rho) and d rho/dt (DEIS, Zhang & Chen 2023, section 3). Each is a torch function that
    takes tensors of any shape, keeps dtype and device, and is differentiable. The sympy forms are in
    :attr:`symbolic`; :attr:`how` says which method produced each. Derivations are cached.

    Args:
        drift: F(t), a sympy expression or a string in ``t`` (the drift is F(t) x).
        diffusion: G(t), likewise.
        t_max: end of the domain (the fully noised time).
        t_min: default end of sampling; default ``t0 + 1e-3 (t_max - t0)`` if ``sigma_init == 0``, else ``t0``.
        t0: the data time, where alpha = 1 (default 0).
        sigma_init: standard deviation of the marginal at ``t0`` (0 for VP, sigma_min for VE).
        **parameters: values of the other symbols in ``drift`` and ``diffusion``; they stay symbolic in
            the derivation, so SDEs that differ only in values share one sympy derivation.

    Example:
        >>> sde = LinearSDE(drift="-(b0 + (b1 - b0) * t) / 2", diffusion="sqrt(b0 + (b1 - b0) * t)",
        ...                 t_max=1.0, b0=0.1, b1=20.0)
        >>> sde.symbolic.rho
        sqrt(exp(b0*t - t**2*(b0/2 - b1/2)) - 1)
    """

    name: str = "LinearSDE"

    def __init__(
        self,
        drift: ExprLike,
        diffusion: ExprLike,
        *,
        t_max: float,
        t_min: float | None = None,
        t0: float = 0.0,
        sigma_init: ExprLike = 0.0,
        **parameters: float,
    ) -> None:
        symbols = _as_parameter_symbols(parameters)
        F = parse_coefficient("drift", drift, symbols)
        G = parse_coefficient("diffusion", diffusion, symbols)
        s0 = parse_coefficient("sigma_init", sigma_init, symbols)
        if s0.has(T):
            raise ValueError(f"sigma_init must be a number or an expression in the parameters, not in t; got {s0}")
        s0v = s0.xreplace({symbols[k]: sp.Float(float(v), 17) for k, v in parameters.items()})
        if not (s0v.is_number and s0v.is_real and float(s0v) >= 0):
            raise ValueError(f"sigma_init must be a real number >= 0; got {sigma_init!r}")
        self._setup(("coefficients", F, G, s0), symbols, parameters, t0=t0, t_min=t_min, t_max=t_max)

    @classmethod
    def from_marginals(
        cls,
        sigma: ExprLike,
        alpha: ExprLike | None = None,
        *,
        log_alpha: ExprLike | None = None,
        t_max: float,
        t_min: float | None = None,
        t0: float = 0.0,
        **parameters: float,
    ) -> LinearSDE:
        """The linear SDE whose marginal is N(alpha(t) x0, sigma(t)^2): F = d log alpha / dt and
        G^2 = d sigma^2/dt - 2 F sigma^2 (MATH.md 1), found by differentiation, so always in closed form.

        This is how noise schedules are usually given (cosine schedule, EDM's sigma(t) = t). Give ``alpha``
        or ``log_alpha`` (default alpha = 1); alpha(t0) must be 1.
        """
        self = cls.__new__(cls)
        self._init_marginals(sigma, alpha, log_alpha=log_alpha, t_max=t_max, t_min=t_min, t0=t0, **parameters)
        return self

    def _init_marginals(self, sigma: ExprLike, alpha: ExprLike | None = None, *, log_alpha: ExprLike | None,
                        t_max: float, t_min: float | None, t0: float, **parameters: float) -> None:
        symbols = _as_parameter_symbols(parameters)
        sig = parse_coefficient("sigma", sigma, symbols)
        if alpha is not None and log_alpha is not None:
            raise ValueError("give alpha or log_alpha, not both")
        if log_alpha is not None:
            la = parse_coefficient("log_alpha", log_alpha, symbols)
            al = sp.exp(la)
        else:
            al = parse_coefficient("alpha", 1 if alpha is None else alpha, symbols)
            la = sp.expand_log(sp.log(al), force=True)
        self._setup(("marginals", la, al, sig), symbols, parameters, t0=t0, t_min=t_min, t_max=t_max)

    # ------------------------------------------------------------------------------------------------
    # construction

    def _setup(self, spec: tuple, symbols: dict[str, sp.Symbol], parameters: Mapping[str, Any], *, t0: float,
               t_min: float | None, t_max: float) -> None:
        for arg, v in (("t0", t0), ("t_max", t_max)):
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{arg} must be a finite real number; got {v!r}")
        if not t_max > t0:
            raise ValueError(f"t_max must be greater than t0; got t0={t0}, t_max={t_max}")
        values = {symbols[k]: sp.Float(float(v), 17) for k, v in parameters.items()}
        key = (spec, tuple(sorted((s.name, float(v)) for s, v in values.items())), float(t0), float(t_max))
        built = _BUILD_CACHE.get(key)
        if built is None:
            built = _Built(spec, values, float(t0), float(t_max))
            _BUILD_CACHE[key] = built
        self._b = built
        self.parameters = dict(parameters)
        self.t0, self.t_max = float(t0), float(t_max)
        self.sigma_init = built.sigma_init
        if t_min is None:
            t_min = self.t0 if self.sigma_init > 0 else self.t0 + 1e-3 * (self.t_max - self.t0)
        if not isinstance(t_min, (int, float)) or not math.isfinite(t_min):
            raise ValueError(f"t_min must be a finite real number; got {t_min!r}")
        if not t_min < self.t_max:
            raise ValueError(f"t_min must be less than t_max; got t_min={t_min}, t_max={self.t_max}")
        if t_min < self.t0:
            raise ValueError(f"t_min must be >= t0 (the data time); got t_min={t_min}, t0={self.t0}")
        if built.rho_np(np.array([float(t_min)]))[0] <= 0:
            raise ValueError(
                f"t_min must be a time where sigma > 0 (sigma vanishes at t0 = {self.t0} when sigma_init = 0); "
                f"got t_min={t_min}"
            )
        self.t_min = float(t_min)
        built.check_diffusion_positive(self.t_min, self.t_max)

    # ------------------------------------------------------------------------------------------------
    # inspection

    @property
    def symbolic(self) -> SymbolicForms:
        """The sympy forms (drift, diffusion, log_alpha, alpha, sigma, rho, drho_dt, psi, t_of_rho)."""
        return self._b.forms

    @property
    def how(self) -> Mapping[str, str]:
        """For each derived quantity, whether it is a closed form (and from which strategy) or numerical."""
        return self._b.forms.how

    @property
    def rho_min(self) -> float:
        """rho at t_min."""
        return float(self._b.rho_np(np.array([self.t_min]))[0])

    @property
    def rho_max(self) -> float:
        """rho at t_max."""
        return float(self._b.rho_np(np.array([self.t_max]))[0])

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        return f"{type(self).__name__}({params})" if params else f"{type(self).__name__}()"

    def describe(self) -> str:
        """A human-readable account of what was derived and how."""
        f = self.symbolic
        lines = [f"{self!r} on [t0={self.t0:g}, t_max={self.t_max:g}], "
                 f"sampling window [{self.t_min:g}, {self.t_max:g}]"]
        for name in ("drift", "diffusion", "alpha", "sigma", "rho", "t_of_rho", "psi"):
            lines.append(f"  {name:<10} = {getattr(f, name)}")
        lines.append("  derived by:")
        lines += [f"    {k:<10} {v}" for k, v in f.how.items()]
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------------
    # torch functions

    def _time(self, t: Tensorish, arg: str = "t") -> torch.Tensor:
        if not isinstance(t, torch.Tensor):
            t = torch.as_tensor(t, dtype=torch.float64)
        if t.is_complex():
            raise TypeError(f"{arg} must be a real tensor; got dtype {t.dtype}")
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        return t

    def _check_range(self, x: torch.Tensor, lo: float, hi: float, arg: str, what: str) -> None:
        if torch.compiler.is_compiling() or x.numel() == 0:
            return
        tol = 1e-9 * max(1.0, abs(lo), abs(hi))
        inside = (x >= lo - tol) & (x <= hi + tol)  # False for NaN too
        if not bool(inside.all()):
            bad = x[~inside].flatten()[0].item()
            raise ValueError(f"{arg} must lie in {what} [{lo:g}, {hi:g}]; got {bad!r}")

    def _t(self, t: Tensorish, arg: str = "t") -> torch.Tensor:
        t = self._time(t, arg)
        self._check_range(t, self.t0, self.t_max, arg, "the SDE's domain")
        return t

    def drift(self, t: Tensorish) -> torch.Tensor:
        """F(t)."""
        return self._b.fn["drift"](self._t(t))

    def diffusion(self, t: Tensorish) -> torch.Tensor:
        """G(t)."""
        return self._b.fn["diffusion"](self._t(t))

    def log_alpha(self, t: Tensorish) -> torch.Tensor:
        """log alpha(t) = int_{t0}^t F."""
        return self._b.fn["log_alpha"](self._t(t))

    def alpha(self, t: Tensorish) -> torch.Tensor:
        """alpha(t) = Psi(t, t0), the marginal mean coefficient."""
        return self._b.fn["alpha"](self._t(t))

    def sigma(self, t: Tensorish) -> torch.Tensor:
        """sigma(t), the marginal standard deviation."""
        return self._b.fn["sigma"](self._t(t))

    def rho(self, t: Tensorish) -> torch.Tensor:
        """rho(t) = sigma(t) / alpha(t), strictly increasing."""
        return self._b.fn["rho"](self._t(t))

    def drho_dt(self, t: Tensorish) -> torch.Tensor:
        """d rho / dt = G^2 / (2 sigma alpha)."""
        return self._b.fn["drho_dt"](self._t(t))

    def t_of_rho(self, rho: Tensorish) -> torch.Tensor:
        """The inverse of rho(t)."""
        r = self._time(rho, "rho")
        self._check_range(r, self._b.rho_t0, self._b.rho_tmax, "rho", "rho's range")
        return self._b.fn["t_of_rho"](r)

    def psi(self, t: Tensorish, s: Tensorish) -> torch.Tensor:
        """The transition Psi(t, s) = alpha(t) / alpha(s); ``t`` and ``s`` broadcast. In :attr:`symbolic`,
        the second time is the symbol ``tau``."""
        t, s = self._t(t), self._t(s, "s")
        return self._b.fn["psi"](t, s)

    # ------------------------------------------------------------------------------------------------
    # the probability-flow ODE

    def probability_flow(self, eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
        """``func(t, x)`` of the original ODE dx/dt = F x + G^2 / (2 sigma) eps(x, t) (MATH.md 2)."""
        from .ode import probability_flow

        return probability_flow(self, eps_model)

    def rho_flow(self, eps_model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
        """``func(rho, y)`` of the transformed ODE dy/drho = eps(alpha y, t(rho)), y = x / alpha (MATH.md 3)."""
        from .ode import rho_flow

        return rho_flow(self, eps_model)


# ---------------------------------------------------------------------------------------------------------


_BUILD_CACHE: dict[tuple, _Built] = {}


def _grid(a: float, b: float, n: int = 2049) -> np.ndarray:
    # uniform plus geometric clustering at both ends, where schedules change fastest
    u = np.linspace(0.0, 1.0, n)
    g = np.geomspace(1e-9, 1.0, 200)
    s = np.unique(np.concatenate([u, g, 1.0 - g]))
    return a + (b - a) * s


class _Built:
    """The derivation of one SDE for given parameter values: sympy forms, checks, compiled functions."""

    def __init__(self, spec: tuple, values: dict[sp.Symbol, float], t0: float, t_max: float) -> None:
        start = time.perf_counter()
        self.values, self.t0, self.t_max = values, t0, t_max
        how: dict[str, str] = {}
        grid = _grid(t0, t_max)
        self.grid = grid
        if spec[0] == "coefficients":
            _, F, G, s0 = spec
            G2 = G**2
            t0s = sp.nsimplify(t0)
            sigma_init = float(s0.xreplace(values))
            la, how["log_alpha"] = derive.log_alpha_closed_form(F, t0s)
            la = self._verified(la, F, grid, "log_alpha", how, at_t0=0.0)
            if la is None:
                la = self._numeric_integral("numeric_log_alpha", F, 0.0, how, "log_alpha")
            r2, how["rho"] = (None, "") if la.has(TableFunction) else derive.rho2_closed_form(F, G2, la, s0**2, t0s)
            r2 = self._verified(r2, G2 * sp.exp(-2 * la), grid, "rho", how, at_t0=sigma_init**2)
            if r2 is None:
                r2 = self._numeric_integral("numeric_rho2", G2 * sp.exp(-2 * la), sigma_init**2, how, "rho")
            alpha = sp.exp(la)
            # Factored forms evaluate without cancellation near t0 (sub-VP: rho^2 = (e - 1)^2 / e, not
            # e + 1/e - 2); of equal forms of sigma keep the cheaper (sqrt(1 - e) for VP, sigma_min r^t for VE).
            rho = sp.sqrt(derive.factor_in_generator(r2))
            s2 = derive.factor_in_generator(sp.powsimp(sp.expand(sp.exp(2 * la) * r2)))
            sigma = min(sp.sqrt(s2), alpha * rho, key=sp.count_ops)
        else:
            _, la, alpha, sigma = spec
            how.update(log_alpha="given (marginal alpha)", rho="given (sigma / alpha)")
            F = sp.diff(la, T)
            G2 = sp.diff(sigma**2, T) - 2 * F * sigma**2
            G2 = min(G2, sp.expand(G2), key=sp.count_ops)  # expand cancels the VP terms; keep the shorter
            G = sp.sqrt(G2)
            r2 = sigma**2 / alpha**2
            rho = sigma / alpha
            a0 = to_numpy(alpha.xreplace(values), [T])(np.array([t0]))[0]
            if not abs(a0 - 1.0) < 1e-12:
                raise ValueError(f"alpha must equal 1 at t0 = {t0} (the data time); got alpha(t0) = {a0!r}")
            sigma_init = float(to_numpy(sigma.xreplace(values), [T])(np.array([t0]))[0])
        self.sigma_init = float(sigma_init)
        drho_dt = G2 * sp.exp(-2 * la) / (2 * rho)

        sub = self._sub
        self.G_np = to_numpy(sub(G), [T])
        self.rho_np = to_numpy(sub(rho), [T])
        self.alpha_np = to_numpy(sub(alpha), [T])
        if spec[0] == "coefficients":  # for given marginals a bad G shows as a non-monotone rho: say that
            self.check_diffusion_positive(t0, t_max, strict=False)
        self._check_marginals(grid)
        self.rho_t0 = float(self.rho_np(np.array([t0]))[0])
        self.rho_tmax = float(self.rho_np(np.array([t_max]))[0])

        t_of_rho = self._inverse(r2, G2 * sp.exp(-2 * la), how)
        psi = sp.powsimp(alpha / alpha.subs(T, S))
        self.forms = SymbolicForms(
            t=T, s=S, rho_symbol=RHO, drift=F, diffusion=G, log_alpha=la, alpha=alpha, sigma=sigma, rho=rho,
            drho_dt=drho_dt, psi=psi, t_of_rho=t_of_rho, parameters=dict(values), how=how,
        )
        self.fn: dict[str, Callable[..., torch.Tensor]] = {
            name: to_torch(sub(getattr(self.forms, name)), [T])
            for name in ("drift", "diffusion", "log_alpha", "alpha", "sigma", "rho", "drho_dt")
        }
        self.fn["t_of_rho"] = to_torch(sub(t_of_rho), [RHO])
        self.fn["psi"] = to_torch(sub(psi), [T, S])
        self.build_seconds = time.perf_counter() - start

    # -- derivation helpers -----------------------------------------------------------------------------

    def _sub(self, expr: sp.Expr) -> sp.Expr:
        """``expr`` with the parameter values substituted."""
        return expr.xreplace(self.values)

    def _verified(self, closed: sp.Expr | None, integrand: sp.Expr, grid: np.ndarray, name: str,
                  how: dict[str, str], at_t0: float) -> sp.Expr | None:
        """Keep a closed-form integral only if its derivative matches the integrand and its value at t0."""
        if closed is None:
            return None
        sub = self._sub
        try:
            d = to_numpy(sub(sp.diff(closed, T)), [T])(grid)
            f = to_numpy(sub(integrand), [T])(grid)
            v0 = to_numpy(sub(closed), [T])(np.array([self.t0]))[0]
            probe = to_torch(sub(closed), [T])(torch.tensor(grid[:3]))  # every function must exist in torch
            if not torch.allclose(probe, torch.as_tensor(to_numpy(sub(closed), [T])(grid[:3])), equal_nan=True):
                raise ArithmeticError("torch and NumPy disagree")
        except Exception:
            how[name] += "; rejected (could not be evaluated)"
            return None
        ok = np.isfinite(f)
        if (not np.all(np.abs(d[ok] - f[ok]) <= 1e-8 * (1.0 + np.abs(f[ok]))) or
                not abs(v0 - at_t0) <= 1e-10 * (1 + abs(at_t0))):
            how[name] += "; rejected by the numerical check"
            return None
        return closed

    def _numeric_integral(self, prefix: str, integrand: sp.Expr, initial: float, how: dict[str, str],
                          name: str) -> sp.Expr:
        """int_{t0}^t integrand as a tabulated function (verified composite Gauss-Legendre quadrature)."""
        f = integrand.xreplace(self.values)
        table = CumulativeIntegral(to_numpy(f, [T]), self.t0, self.t_max, initial=initial)
        cls = table_function(prefix, table.numpy, table.torch, derivative=lambda x: f.subs(T, x), table=table)
        why = how.get(name, "")
        how[name] = (f"numeric (Gauss-Legendre quadrature, cubic Hermite table of {len(table.nodes)} nodes, "
                     f"relative error {table.error_estimate:.0e})" + (f"; {why}" if why else ""))
        return cls(T)

    def _check_marginals(self, grid: np.ndarray) -> None:
        a = self.alpha_np(grid)
        if not np.all(np.isfinite(a) & (a > 0)):
            bad = grid[~(np.isfinite(a) & (a > 0))][0]
            raise NumericalError(f"alpha must be finite and positive on [t0, t_max]; alpha({bad:.6g}) = "
                                 f"{self.alpha_np(np.array([bad]))[0]!r}")
        r = self.rho_np(grid)
        if not np.all(np.isfinite(r)):
            bad = grid[~np.isfinite(r)][0]
            raise NumericalError(f"rho = sigma/alpha is not finite at t = {bad:.6g}; check the diffusion and "
                                 "t_max (alpha must not vanish on the domain)")
        dec = np.diff(r) <= 0
        if np.any(dec):
            bad = grid[1:][dec][0]
            raise ValueError(f"rho = sigma/alpha must be strictly increasing in t on [t0, t_max]; it does not "
                             f"increase near t = {bad:.6g} (rho = {r[1:][dec][0]:.6g})")

    def check_diffusion_positive(self, t_min: float, t_max: float, strict: bool = True) -> None:
        """G > 0 on the window (``strict``), or G real and >= 0 on the whole domain."""
        g = _grid(t_min, t_max)
        gv = self.G_np(g)
        bad = ~(np.isfinite(gv) & ((gv > 0) if strict else (gv >= 0)))
        if np.any(bad):
            where = "the window [t_min, t_max]" if strict else "the domain [t0, t_max]"
            raise ValueError(f"diffusion must be real and positive on {where} = [{t_min:g}, {t_max:g}]; "
                             f"G({g[bad][0]:.6g}) = {float(gv[bad][0])!r}")

    def _inverse(self, r2: sp.Expr, dr2: sp.Expr, how: dict[str, str]) -> sp.Expr:
        """t(rho): the closed-form branch that checks out numerically, else a Newton-refined table."""
        ts = self.grid[:: max(1, len(self.grid) // 400)]
        ts = np.concatenate([ts, [self.t0, self.t_max]])
        rs = self.rho_np(ts)
        scale = max(1.0, abs(self.t0), abs(self.t_max))
        best, best_err = None, 1e-11 * scale
        for cand in derive.inverse_candidates(r2):
            try:
                back = to_numpy(cand.xreplace(self.values), [RHO])(rs)
                to_torch(cand.xreplace(self.values), [RHO])(torch.tensor(rs[:2]))  # must exist in torch
            except Exception:
                continue
            err = float(np.max(np.abs(back - ts)))
            if err < best_err:  # the branch that reproduces t, and of those the most accurate
                best, best_err = cand, err
        if best is not None:
            how["t_of_rho"] = "symbolic (inverted rho^2(t) = rho^2, branch checked numerically)"
            return best
        sub = self._sub
        r2_s, dr2_s = sub(r2), sub(dr2)
        inv = MonotoneInverse(to_numpy(r2_s, [T]), to_numpy(dr2_s, [T]), to_torch(r2_s, [T]), to_torch(dr2_s, [T]),
                              self.t0, self.t_max)
        cls = table_function("numeric_t_of_rho2", inv.numpy, inv.torch,
                             derivative=lambda x: 1 / dr2_s.subs(T, cls(x)), table=inv)
        how["t_of_rho"] = "numeric (table of 4097 nodes + 3 Newton steps on rho^2(t) = rho^2)"
        return cls(RHO**2)
