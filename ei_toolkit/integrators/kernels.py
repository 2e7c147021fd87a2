"""What the exponential integrators ask of an SDE, for scalar and matrix (gDDIM) SDEs alike (docs/math.md sections
3, 4 and 6): the transition over each step, the exact one-point (DDIM) weight, and a quadrature of the
exponential kernel against which extrapolation polynomials are integrated, for the two things a method may
extrapolate (its *target*): the noise prediction eps, or the data prediction x0.

* eps, scalar SDEs: x_b = Psi(t_b, t_a) x_a + alpha_b int_{rho_a}^{rho_b} eps drho; the kernel is constant in rho,
  so the quadrature nodes sit in rho.
* x0, scalar SDEs: x_b = (sigma_b / sigma_a) x_a + alpha_b int_{lam_a}^{lam_b} exp(lam - lam_b) x0 dlam with
  lam = -log rho (the half log-SNR); the kernel is smooth in lam, so the nodes sit there.
* eps, matrix SDEs: int Psi(t_b, tau) 1/2 G G^T R_tau^{-T} dtau, with nodes in t.

Every function takes the step ends ``t_a`` -> ``t_b`` as arrays (consecutive grid points for multistep methods, a
step's start and a stage for singlestep ones). Coefficients are float64 NumPy arrays: scalars shaped (steps,),
matrices (steps, k, k).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

GAUSS_NODES = 32
_GL_X, _GL_W = np.polynomial.legendre.leggauss(GAUSS_NODES)
VARIABLES = ("t", "rho", "logrho")


def is_matrix(sde: Any) -> bool:
    return bool(getattr(sde, "is_matrix", False))


TARGETS = ("eps", "x0")


def check_target(sde: Any, target: str) -> None:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; valid: {', '.join(TARGETS)}")
    if is_matrix(sde) and target != "eps":
        raise ValueError("matrix SDEs take eps-models: the data-prediction (x0) form needs a scalar SDE")


def steps_of(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t_a, t_b): the starts and ends of the steps of a grid."""
    return t[:-1], t[1:]


def half_lambda(sde: Any, t: torch.Tensor) -> np.ndarray:
    """lam = -log rho (the half log-SNR) at the times t: -inf at infinite noise, +inf at the data."""
    with np.errstate(divide="ignore"):
        return -np.log(sde.rho(t).numpy())


def transitions(sde: Any, t_a: torch.Tensor, t_b: torch.Tensor, target: str = "eps") -> np.ndarray:
    """The coefficient of x_a in x_b: Psi(t_b, t_a) (eps form), or sigma_b / sigma_a (x0 form)."""
    if is_matrix(sde):
        return np.stack([sde.psi(b, a) for a, b in zip(t_a.tolist(), t_b.tolist(), strict=True)])
    if target == "x0":
        return (sde.sigma(t_b) / sde.sigma(t_a)).numpy()
    return sde.psi(t_b, t_a).numpy()


def one_point_weights(sde: Any, t_a: torch.Tensor, t_b: torch.Tensor, target: str = "eps") -> np.ndarray:
    """The exact weight of a frozen eps (x0) from t_a to t_b (DDIM / gDDIM): alpha_b (rho_b - rho_a), or
    alpha_b (1 - rho_b / rho_a) in the x0 form (alpha_b from infinite noise), or R_b - Psi(t_b, t_a) R_a for a
    matrix SDE."""
    if is_matrix(sde):
        return np.stack([sde.factor(b) - sde.psi(b, a) @ sde.factor(a)
                         for a, b in zip(t_a.tolist(), t_b.tolist(), strict=True)])
    rho_a, rho_b, alpha_b = sde.rho(t_a), sde.rho(t_b), sde.alpha(t_b)
    if target == "x0":
        return (alpha_b * -torch.expm1(torch.log(rho_b) - torch.log(rho_a))).numpy()
    return (alpha_b * (rho_b - rho_a)).numpy()


def variable_at(sde: Any, variable: str, t: torch.Tensor) -> np.ndarray:
    """The extrapolation variable v (t, rho or log rho) at the times t."""
    check_variable(sde, variable)
    if variable == "t":
        return t.numpy()
    rho = sde.rho(t)
    with np.errstate(divide="ignore"):
        return rho.numpy() if variable == "rho" else np.log(rho.numpy())


def check_variable(sde: Any, variable: str) -> None:
    if variable not in VARIABLES:
        raise ValueError(f"unknown extrapolation variable {variable!r}; valid: {', '.join(VARIABLES)}")
    if is_matrix(sde) and variable != "t":
        raise ValueError(f"matrix SDEs have no scalar rho: extrapolate in t (got variable {variable!r})")


def kernel_quadrature(sde: Any, t_a: torch.Tensor, t_b: torch.Tensor, variable: str,
                      target: str = "eps") -> tuple[np.ndarray, np.ndarray]:
    """Per step i (t_a[i] -> t_b[i]), nodes v_q (shape (steps, Q)) and kernel weights K_q (shape (steps, Q) or
    (steps, Q, k, k)) with (the kernel of ``target``) integrated against p(v(tau)) ~= sum_q K_q p(v_q), for
    polynomials p in v. The x0 form needs finite lam at both ends (callers treat a step into rho = 0 apart)."""
    check_variable(sde, variable)
    check_target(sde, target)
    if is_matrix(sde):
        a, b = t_a.numpy(), t_b.numpy()
        mid, half = 0.5 * (b + a), 0.5 * (b - a)
        taus = mid[:, None] + half[:, None] * _GL_X[None, :]
        kern = np.stack([sde.kernel(b[i], taus[i]) for i in range(len(b))])  # (steps, Q, k, k)
        return taus, (half[:, None] * _GL_W[None, :])[:, :, None, None] * kern
    alpha_b = sde.alpha(t_b).numpy()
    if target == "x0":
        lam_a, lam_b = half_lambda(sde, t_a), half_lambda(sde, t_b)
        ok = np.isfinite(lam_a) & np.isfinite(lam_b)  # other steps (from rho = inf, into rho = 0) get NaN weights
        lam_a, lam_b = np.where(ok, lam_a, 0.0), np.where(ok, lam_b, 1.0)
        mid, half = 0.5 * (lam_b + lam_a), 0.5 * (lam_b - lam_a)
        lq = mid[:, None] + half[:, None] * _GL_X[None, :]
        rq = torch.from_numpy(np.exp(-lq)).clamp(0.0, sde.rho_max)
        weights = (alpha_b * half)[:, None] * np.exp(lq - lam_b[:, None]) * _GL_W[None, :]
    else:
        rho_a, rho_b = sde.rho(t_a).numpy(), sde.rho(t_b).numpy()
        ok = np.isfinite(rho_a)  # a step from infinite noise has no eps form: NaN weights
        rho_a = np.where(ok, rho_a, rho_b)
        mid, half = 0.5 * (rho_b + rho_a), 0.5 * (rho_b - rho_a)
        rq = torch.from_numpy(mid[:, None] + half[:, None] * _GL_X[None, :]).clamp_min(0)
        weights = (alpha_b * half)[:, None] * _GL_W[None, :]
    weights[~ok] = np.nan
    if variable == "t":
        vq = sde.t_of_rho(rq).numpy()
    elif variable == "rho":
        vq = rq.numpy()
    else:
        with np.errstate(divide="ignore"):
            vq = np.log(rq.numpy())
    return vq, weights


def lagrange_at(nodes: np.ndarray, v: float) -> list[float]:
    """The Lagrange basis polynomials on ``nodes`` evaluated at v."""
    out = []
    for j in range(len(nodes)):
        ell = 1.0
        for m in range(len(nodes)):
            if m != j:
                ell *= (v - nodes[m]) / (nodes[j] - nodes[m])
        out.append(ell)
    return out


def lagrange_integrals(nodes: np.ndarray, v_q: np.ndarray, k_q: np.ndarray) -> list[np.ndarray]:
    """sum_q K_q l_j(v_q) for each Lagrange basis polynomial l_j on ``nodes`` (scalars or k x k matrices)."""
    out = []
    for j in range(len(nodes)):
        ell = np.ones_like(v_q)
        for m in range(len(nodes)):
            if m != j:
                ell = ell * (v_q - nodes[m]) / (nodes[j] - nodes[m])
        out.append(np.tensordot(ell, k_q, axes=1))
    return out
