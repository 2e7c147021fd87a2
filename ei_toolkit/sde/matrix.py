"""Non-isotropic linear SDEs (gDDIM): du = F(t) u dt + G(t) dw with small k x k matrices F, G acting on the
block axis of u (shape (batch, k, *data)), e.g. critically-damped Langevin diffusion on (x, v) pairs.

Reference: Q. Zhang, M. Tao, Y. Chen, "gDDIM: Generalized denoising diffusion implicit models",
arXiv:2206.05564; MATH.md sections 1 and 6. Derived in float64: the transition Psi(t, s) (matrix exponential
when F is constant, else the ODE dPsi/dt = F Psi), the marginal covariance Sigma_t (Lyapunov ODE
dSigma/dt = F Sigma + Sigma F^T + G G^T) and gDDIM's factor R_t (R R^T = Sigma, dR/dt = F R + 1/2 G G^T R^{-T},
which makes the DDIM step exact for frozen eps: u_s = Psi(s,t) u_t + (R_s - Psi(s,t) R_t) eps).
ODEs are solved by DOP853 at rtol 1e-12 and read back from dense output. Sampling runs on the same integrators and
runner as scalar SDEs (methods with the ``matrix`` capability: ddim, tab0..tab3), with k x k coefficients;
docs/math.md section 6.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

import numpy as np
import sympy as sp
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from .derive import S, T, time_limit
from .linear import _as_parameter_symbols, parse_coefficient


def _matrix(what: str, value: Any, symbols: dict[str, sp.Symbol]) -> sp.Matrix:
    try:
        rows = value.tolist() if isinstance(value, sp.MatrixBase) else list(value)
        m = sp.Matrix([[parse_coefficient(f"{what}[{i},{j}]", v, symbols) for j, v in enumerate(row)]
                       for i, row in enumerate(rows)])
    except TypeError:
        raise ValueError(f"{what} must be a square matrix (a sympy Matrix or nested lists) of expressions in t; "
                         f"got {value!r}") from None
    if m.rows != m.cols or m.rows < 1:
        raise ValueError(f"{what} must be a square matrix; got shape {m.shape}")
    return m


class MatrixLinearSDE:
    """du = F(t) u dt + G(t) dw, F and G k x k, on [t0, t_max]; Var(u_{t0}) = sigma_init (k x k).

    ``psi(t, s)``, ``sigma_matrix(t)``, ``factor(t)`` (R_t) return float64 NumPy arrays of shape (..., k, k).
    The sampling window is [t_min, t_max]; Sigma must be nonsingular there (R_t starts from the Cholesky
    factor of Sigma at t_min).
    """

    is_matrix = True

    def __init__(self, drift: Any, diffusion: Any, *, t_max: float, t_min: float, sigma_init: Any,
                 t0: float = 0.0, **parameters: float) -> None:
        symbols = _as_parameter_symbols(parameters)
        F, G = _matrix("drift", drift, symbols), _matrix("diffusion", diffusion, symbols)
        if F.shape != G.shape:
            raise ValueError(f"drift and diffusion must have the same shape; got {F.shape} and {G.shape}")
        k = F.rows
        s0 = np.asarray(sigma_init, dtype=np.float64)
        if s0.shape != (k, k) or not np.allclose(s0, s0.T) or np.linalg.eigvalsh(s0).min() < -1e-14:
            raise ValueError(f"sigma_init must be a symmetric positive semi-definite {k}x{k} matrix; got {s0.tolist()}")
        if not t0 <= t_min < t_max:
            raise ValueError(f"need t0 <= t_min < t_max; got t0={t0}, t_min={t_min}, t_max={t_max}")
        values = {symbols[n]: sp.Float(float(v), 17) for n, v in parameters.items()}
        self.k, self.t0, self.t_min, self.t_max, self.parameters = k, float(t0), float(t_min), float(t_max), parameters
        self.symbolic_drift, self.symbolic_diffusion = F, G
        self._values = values
        self._F = sp.lambdify(T, F.xreplace(values), "numpy")
        self._G = sp.lambdify(T, G.xreplace(values), "numpy")
        self.constant_drift = not F.has(T)
        self._key = (type(self).__qualname__, sp.srepr(F), sp.srepr(G), tuple(sorted(
            (n, float(v)) for n, v in parameters.items())), np.asarray(sigma_init, dtype=np.float64).tobytes(),
            float(t0), float(t_min), float(t_max))
        self.symbolic_psi: sp.Matrix | None = None
        self.symbolic_sigma: sp.Matrix | None = None
        self.how: dict[str, str] = {}
        self._solve(s0)

    @property
    def key(self) -> Hashable:
        """A hashable description of this SDE by value (drift, diffusion, parameter values, window), for caches."""
        return self._key

    # -- coefficients --------------------------------------------------------------------------------------

    def F(self, t: float) -> np.ndarray:
        return np.asarray(self._F(float(t)), dtype=np.float64).reshape(self.k, self.k)

    def GGt(self, t: float) -> np.ndarray:
        g = np.asarray(self._G(float(t)), dtype=np.float64).reshape(self.k, self.k)
        return g @ g.T

    def _solve(self, s0: np.ndarray) -> None:
        k = self.k
        opts = {"method": "DOP853", "rtol": 1e-12, "atol": 1e-14, "dense_output": True}
        if self.constant_drift:
            self._F0 = self.F(0.0)
            self.how["psi"] = "closed form: exp(F (t - s)), evaluated by scipy.linalg.expm (constant F)"
            try:  # the sympy form, for inspection (Jordan form: CLD's critically damped F is a Jordan block)
                with time_limit(10.0):  # ~1.5 s for CLD on this machine; a margin for loaded CI runners
                    # with the parameter values (as rationals): the generic form can be singular at special
                    # values, e.g. CLD's critical damping Gamma^2 = 4 M, where exp(F t) is a Jordan block
                    rational = {sym: sp.nsimplify(v, rational=True) for sym, v in self._values.items()}
                    self.symbolic_psi = sp.simplify((self.symbolic_drift.xreplace(rational) * (T - S)).exp())
                    if not self.symbolic_diffusion.has(T):  # Sigma_t = Psi Sigma_0 Psi^T + int Psi G G^T Psi^T
                        g = self.symbolic_diffusion.xreplace(rational)
                        inner = (self.symbolic_psi * g * g.T * self.symbolic_psi.T).applyfunc(
                            lambda e: sp.integrate(sp.expand(e), (S, self.t0, T)))
                        p0 = self.symbolic_psi.subs(S, self.t0)
                        s0_sym = sp.Matrix(s0.tolist()).applyfunc(lambda v: sp.nsimplify(v, rational=True))
                        self.symbolic_sigma = sp.simplify(p0 * s0_sym * p0.T + inner)
                        self.how["sigma"] = ("closed form in sympy (symbolic_sigma); evaluated by DOP853 on the "
                                             "Lyapunov ODE (rtol 1e-12), which avoids the closed form's cancellation")
            except Exception:
                self.symbolic_psi = None
        else:
            sol = solve_ivp(lambda t, y: (self.F(t) @ y.reshape(k, k)).ravel(), (self.t0, self.t_max),
                            np.eye(k).ravel(), **opts)
            self._psi0 = sol.sol
            self.how["psi"] = "numeric (DOP853 on dPsi/dt = F Psi, rtol 1e-12)"

        def lyap(t: float, y: np.ndarray) -> np.ndarray:
            s = y.reshape(k, k)
            f = self.F(t)
            return (f @ s + s @ f.T + self.GGt(t)).ravel()

        sig = solve_ivp(lyap, (self.t0, self.t_max), s0.ravel(), **opts)
        if not sig.success:
            raise ArithmeticError(f"the Lyapunov ODE for Sigma failed: {sig.message}")
        self._sigma = sig.sol
        self.how.setdefault("sigma", "numeric (DOP853 on the Lyapunov ODE, rtol 1e-12)")
        s_min = self.sigma_matrix(self.t_min)
        eig = np.linalg.eigvalsh(s_min)
        if eig.min() <= 1e-14 * max(1.0, eig.max()):
            raise ValueError(f"Sigma is singular at t_min = {self.t_min:g} (eigenvalues {eig.tolist()}); choose a "
                             "later t_min: the gDDIM factor R_t needs a nonsingular Sigma on the window")
        r0 = np.linalg.cholesky(s_min)

        def rode(t: float, y: np.ndarray) -> np.ndarray:
            r = y.reshape(k, k)
            return (self.F(t) @ r + 0.5 * self.GGt(t) @ np.linalg.inv(r).T).ravel()

        rs = solve_ivp(rode, (self.t_min, self.t_max), r0.ravel(), **opts)
        if not rs.success:
            raise ArithmeticError(f"the ODE for R failed: {rs.message}")
        self._R = rs.sol
        self.how["factor"] = "numeric (DOP853 on dR/dt = F R + 1/2 G G^T R^-T from chol(Sigma(t_min)))"

    def _psi0_at(self, t: float) -> np.ndarray:
        if self.constant_drift:
            return expm(self._F0 * (t - self.t0))
        return self._psi0(t).reshape(self.k, self.k)

    def psi(self, t: float, s: float) -> np.ndarray:
        """Psi(t, s) = Psi(t, t0) Psi(s, t0)^{-1}."""
        if self.constant_drift:
            return expm(self._F0 * (t - s))
        return self._psi0_at(t) @ np.linalg.inv(self._psi0_at(s))

    def kernel(self, s: float, taus: np.ndarray) -> np.ndarray:
        """Psi(s, tau) 1/2 G G^T R_tau^{-T} for an array of taus (shape (n, k, k)): the exponential kernel
        that multiplies eps in the variation-of-constants formula."""
        k = self.k
        for tau in (taus.min(), taus.max()):
            self._check(float(tau), self.t_min, "tau")
        if self.constant_drift:
            psis = expm(self._F0[None] * (s - taus)[:, None, None])
        else:
            psis = np.stack([self.psi(s, float(tau)) for tau in taus])
        rs = self._R(taus).T.reshape(-1, k, k)
        ggt = np.stack([self.GGt(float(tau)) for tau in taus])
        return psis @ (0.5 * ggt) @ np.linalg.inv(rs).transpose(0, 2, 1)

    def sigma_matrix(self, t: float) -> np.ndarray:
        self._check(t, self.t0, "t")
        s = self._sigma(t).reshape(self.k, self.k)
        return 0.5 * (s + s.T)

    def factor(self, t: float) -> np.ndarray:
        """gDDIM's R_t (R R^T = Sigma_t) on [t_min, t_max]."""
        self._check(t, self.t_min, "t")
        return self._R(t).reshape(self.k, self.k)

    def _check(self, t: float, lo: float, arg: str) -> None:
        tol = 1e-9 * max(1.0, abs(self.t_max))
        if not lo - tol <= t <= self.t_max + tol:
            raise ValueError(f"{arg} must lie in [{lo:g}, {self.t_max:g}]; got {t!r}")

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.parameters.items())
        return f"{type(self).__name__}({params})"


class CLD(MatrixLinearSDE):
    """Critically-damped Langevin diffusion (Dockhorn, Vahdat, Kreis, ICLR 2022) on u = (x, v):
    F = [[0, beta/M], [-beta, -Gamma beta/M]], G = diag(0, sqrt(2 Gamma beta)), Gamma^2 = 4 M (critical
    damping), v_0 ~ N(0, gamma M). Defaults as in the paper: M = 0.25, beta = 4, gamma = 0.04, T = 1;
    t_min = 1e-3 (Sigma is singular at t = 0, where x is the data)."""

    def __init__(self, beta: float = 4.0, mass: float = 0.25, gamma: float = 0.04, *, t_min: float = 1e-3,
                 t_max: float = 1.0) -> None:
        for name, v in (("beta", beta), ("mass", mass), ("gamma", gamma)):
            if not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)):
                raise ValueError(f"{name} must be a finite positive number; got {v!r}")
        self.beta, self.mass, self.gamma = float(beta), float(mass), float(gamma)
        Gamma = 2 * math.sqrt(mass)
        super().__init__(drift=[["0", "beta / M"], ["-beta", "-Gamma * beta / M"]],
                         diffusion=[["0", "0"], ["0", "sqrt(2 * Gamma * beta)"]], t_max=t_max, t_min=t_min,
                         sigma_init=[[0.0, 0.0], [0.0, gamma * mass]], beta=beta, M=mass, Gamma=Gamma)
        self.Gamma = Gamma


def apply_block(m: np.ndarray | torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The k x k matrix m applied to the block axis (dim 1) of u."""
    mt = torch.as_tensor(m, dtype=u.dtype, device=u.device)
    return torch.einsum("ab,nb...->na...", mt, u)
