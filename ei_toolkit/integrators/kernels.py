"""What the exponential integrators ask of an SDE, for scalar and matrix (gDDIM) SDEs alike (docs/math.md sections
3, 4 and 6): the transition over each step, the exact one-point (DDIM) weight, and a quadrature of the exponential
kernel against which extrapolation polynomials are integrated.

Scalar SDEs: the kernel integral over a step is alpha(t_{i+1}) int drho, so the quadrature nodes sit in rho, where
the integrand is smooth. Matrix SDEs: int Psi(t_{i+1}, tau) 1/2 G G^T R_tau^{-T} dtau, with nodes in t.
Coefficients are float64 NumPy arrays: scalars shaped (steps,), matrices (steps, k, k).
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


def transitions(sde: Any, t: torch.Tensor) -> np.ndarray:
    """Psi(t_{i+1}, t_i) for each step."""
    if is_matrix(sde):
        g = t.tolist()
        return np.stack([sde.psi(g[i + 1], g[i]) for i in range(len(g) - 1)])
    return sde.psi(t[1:], t[:-1]).numpy()


def one_point_weights(sde: Any, t: torch.Tensor) -> np.ndarray:
    """The exact weight of a frozen eps over each step (DDIM / gDDIM): alpha_{i+1} (rho_{i+1} - rho_i), or
    R_{i+1} - Psi(t_{i+1}, t_i) R_i for a matrix SDE."""
    if is_matrix(sde):
        g = t.tolist()
        return np.stack([sde.factor(g[i + 1]) - sde.psi(g[i + 1], g[i]) @ sde.factor(g[i]) for i in range(len(g) - 1)])
    rho, alpha = sde.rho(t), sde.alpha(t)
    return (alpha[1:] * (rho[1:] - rho[:-1])).numpy()


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


def kernel_quadrature(sde: Any, t: torch.Tensor, variable: str) -> tuple[np.ndarray, np.ndarray]:
    """Per step i, nodes v_q (shape (steps, Q)) and kernel weights K_q (shape (steps, Q) or (steps, Q, k, k)) with
    int_{step i} Psi(t_{i+1}, tau) (kernel) p(v(tau)) dtau ~= sum_q K_q p(v_q) for polynomials p in v."""
    check_variable(sde, variable)
    if is_matrix(sde):
        g = t.numpy()
        mid, half = 0.5 * (g[1:] + g[:-1]), 0.5 * (g[1:] - g[:-1])
        taus = mid[:, None] + half[:, None] * _GL_X[None, :]
        kern = np.stack([sde.kernel(g[i + 1], taus[i]) for i in range(len(g) - 1)])  # (steps, Q, k, k)
        return taus, (half[:, None] * _GL_W[None, :])[:, :, None, None] * kern
    rho, alpha = sde.rho(t), sde.alpha(t)
    mid, half = 0.5 * (rho[1:] + rho[:-1]), 0.5 * (rho[1:] - rho[:-1])
    rq = (mid[:, None] + half[:, None] * torch.from_numpy(_GL_X)[None, :]).clamp_min(0)
    if variable == "t":
        vq = sde.t_of_rho(rq).numpy()
    elif variable == "rho":
        vq = rq.numpy()
    else:
        with np.errstate(divide="ignore"):
            vq = np.log(rq.numpy())
    return vq, (alpha[1:] * half).numpy()[:, None] * _GL_W[None, :]


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
