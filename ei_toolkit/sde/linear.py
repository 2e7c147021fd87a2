"""The symbolic semilinear layer: a scalar linear SDE dx = F(t) x dt + G(t) dw and everything derived from it.

Reference: Q. Zhang, Y. Chen, "Fast Sampling of Diffusion Models with Exponential Integrator" (DEIS),
ICLR 2023, section 3; notation of MATH.md sections 1-3. Coefficients are parsed by :mod:`.parsing`, derived
by :mod:`.derivation`; this module holds the public :class:`LinearSDE` and :class:`SymbolicForms`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy as sp
import torch

from .derivation import Derivation, derive_sde
from .derive import RHO, S, T
from .parsing import ExprLike, parameter_symbols, parse_coefficient

# ei_toolkit.sde.matrix imports these two from here (to move to .parsing).
_as_parameter_symbols = parameter_symbols

Tensorish = torch.Tensor | float | int


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
    _owner: Any = field(default=None, repr=False, compare=False)  # keeps the tabulated functions' data alive

    def evaluated(self, name: str) -> sp.Expr:
        """The expression ``name`` with the parameter values substituted."""
        return getattr(self, name).xreplace(dict(self.parameters))


class LinearSDE:
    """A scalar linear SDE dx = F(t) x dt + G(t) dw on [t0, t_max] with Var(x_{t0}) = sigma_init^2.

    From F and G it derives, symbolically where sympy can and by verified numerical quadrature / root
    finding where it cannot: the transition Psi(t, s), alpha(t) = Psi(t, t0), sigma(t), rho = sigma / alpha,
    its inverse t(rho) and d rho/dt (DEIS, Zhang & Chen 2023, section 3). Each is a torch function that
    takes tensors of any shape, keeps dtype and device, and is differentiable. The sympy forms are in
    :attr:`symbolic`; :attr:`how` says which method produced each. Derivations are cached by value (the
    last :data:`~ei_toolkit.sde.derivation.CACHE_SIZE`); :attr:`key` identifies the SDE by value.

    Args:
        drift: F(t), a sympy expression, a number or a string in ``t`` (the drift is F(t) x); strings may
            contain numbers, ``t``, the parameters, + - * / ** and elementary functions (:mod:`.parsing`).
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
        symbols = parameter_symbols(parameters)
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
        symbols = parameter_symbols(parameters)
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
        self._derivation_key, built = derive_sde(spec, values, float(t0), float(t_max))
        self._b: Derivation = built
        self._forms = SymbolicForms(t=T, s=S, rho_symbol=RHO, parameters=dict(built.values), how=built.how,
                                    _owner=built.tables, **built.exprs)
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
        return self._forms

    @property
    def how(self) -> Mapping[str, str]:
        """For each derived quantity, whether it is a closed form (and from which strategy) or numerical."""
        return self._b.how

    @property
    def key(self) -> Hashable:
        """A hashable value that identifies this SDE: (class name, derivation key, t_min).

        Equal for SDEs built with equal arguments, different when a parameter value, the domain, the window
        start or (DiscreteVP) the table differs; for keying caches of plans and grids by value.
        """
        return type(self).__name__, self._derivation_key, self.t_min

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

    # The probability-flow ODE of this SDE for a model: ei_toolkit.FlowODE(model, sde, frame) (one vector field for
    # every frame and for matrix SDEs, in ei_toolkit/adapters.py).

