"""Non-isotropic (matrix) linear SDEs: CLD's transition, covariance and gDDIM factor, and gDDIM / matrix tAB
convergence on a Gaussian mixture pushed through CLD (exact score)."""

import numpy as np
import pytest
import sympy as sp
import torch

import ei_toolkit as ei
from ei_toolkit.sde.matrix import CLD, MatrixLinearSDE
from ei_toolkit.testing import GaussianMixture, get_problem

SDE = CLD()


def test_cld_transition_is_the_closed_form_exponential_and_composes():
    t = sp.Symbol("t")
    b, m = SDE.beta, SDE.mass
    F = sp.Matrix([[0, sp.Rational(b).limit_denominator() / sp.Rational(m).limit_denominator()],
                   [-sp.Rational(b).limit_denominator(), -2 * sp.sqrt(sp.Rational(m).limit_denominator())
                    * sp.Rational(b).limit_denominator() / sp.Rational(m).limit_denominator()]])
    closed = sp.lambdify(t, (F * t).exp(), "numpy")  # sympy's exponential: critical damping, a Jordan block
    for dt in (0.05, 0.3, 0.9):
        np.testing.assert_allclose(SDE.psi(0.1 + dt, 0.1), np.asarray(closed(dt), dtype=float), rtol=1e-10,
                                   atol=1e-12)
    np.testing.assert_allclose(SDE.psi(0.8, 0.5) @ SDE.psi(0.5, 0.2), SDE.psi(0.8, 0.2), rtol=1e-12, atol=1e-14)


def test_sigma_solves_the_lyapunov_ode_and_r_factors_it():
    h = 1e-6  # central differences: O(h^2) truncation, ~1e-7 here
    for t in (0.01, 0.2, 0.7):
        s = SDE.sigma_matrix(t)
        ds = (SDE.sigma_matrix(t + h) - SDE.sigma_matrix(t - h)) / (2 * h)
        f = SDE.F(t)
        np.testing.assert_allclose(ds, f @ s + s @ f.T + SDE.GGt(t), rtol=1e-6, atol=1e-8)
        r = SDE.factor(t)
        np.testing.assert_allclose(r @ r.T, s, rtol=1e-9, atol=1e-12)
        dr = (SDE.factor(t + h) - SDE.factor(t - h)) / (2 * h)
        np.testing.assert_allclose(dr, f @ r + 0.5 * SDE.GGt(t) @ np.linalg.inv(r).T, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(SDE.sigma_matrix(0.0), [[0, 0], [0, SDE.gamma * SDE.mass]], atol=1e-15)


def _wide_mixture() -> GaussianMixture:
    prob = get_problem("gmm2d")
    return GaussianMixture(means=prob.means, stds=prob.stds * 3, weights=prob.weights)


@pytest.fixture(scope="module")
def cld_problem():
    mix = _wide_mixture()
    model = mix.eps_model(SDE)
    u1 = mix.sample_marginal(SDE, 1.0, 8, torch.Generator().manual_seed(0))
    ref = mix.reference(SDE, u1, 1.0, 0.1, rtol=1e-10)
    return model, u1, ref


def test_higher_point_counts_are_more_accurate(cld_problem):
    model, u1, ref = cld_problem
    errs = [(ei.sample(model, u1, SDE, method=f"tab{p - 1}", nfe=64, t_end=0.1, grid="uniform_t") - ref).abs().max()
            .item() for p in (1, 2, 3, 4)]
    assert errs[0] > errs[1] > errs[2] > errs[3], errs


def test_the_default_method_samples_a_matrix_sde(cld_problem):
    """ei.sample(model, u, CLD()) works with no method named (the matrix default, a matrix-capable method)."""
    model, u1, _ = cld_problem
    sol = ei.solve(model, u1, SDE)
    assert sol.nfe == 10 and sol.method == "tab2" and torch.isfinite(sol.x).all()


def test_matrix_sde_bad_input():
    with pytest.raises(ValueError, match=r"drift must be a square matrix; got shape \(1, 2\)"):
        MatrixLinearSDE([["0", "1"]], [["1", "0"]], t_max=1.0, t_min=0.1, sigma_init=[[1.0]])
    with pytest.raises(ValueError, match=r"drift and diffusion must have the same shape"):
        MatrixLinearSDE([["0", "1"], ["-1", "0"]], [["1"]], t_max=1.0, t_min=0.1, sigma_init=np.eye(2))
    with pytest.raises(ValueError, match=r"drift\[0,1\] must be a function of t alone.*depends on x"):
        MatrixLinearSDE([["0", "x"], ["-1", "0"]], [["1", "0"], ["0", "1"]], t_max=1.0, t_min=0.1,
                        sigma_init=np.eye(2))
    with pytest.raises(ValueError, match=r"Sigma is singular at t_min = 0"):
        CLD(t_min=0.0)
    with pytest.raises(ValueError, match=r"sigma_init must be a symmetric positive semi-definite 2x2 matrix"):
        MatrixLinearSDE([["0", "1"], ["-1", "0"]], [["1", "0"], ["0", "1"]], t_max=1.0, t_min=0.1,
                        sigma_init=[[1.0, 2.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"t must lie in \[0.001, 1\]"):
        SDE.factor(0.0)


def test_matrix_sampling_gets_every_check_of_the_scalar_path(cld_problem):
    model, u1, _ = cld_problem
    with pytest.raises(ValueError, match=r"method 'rhork-rk4' does not support matrix SDEs; valid: ddim"):
        ei.sample(model, u1, SDE, method="rhork-rk4")
    with pytest.raises(ValueError, match=r"grid 'karras' needs the scalar rho.*uniform_t, quadratic_t"):
        ei.sample(model, u1, SDE, method="ddim", grid="karras")
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2, ...\)"):
        ei.sample(model, u1[:, :1], SDE, method="ddim")
    with pytest.raises(ei.NumericalError, match=r"model output is not finite at evaluation 0 \(t = 1\)"):
        ei.sample(lambda u, t: u * float("nan"), u1, SDE)
    with pytest.raises(TypeError, match=r"x must be a real floating-point tensor; got torch.int64"):
        ei.sample(model, u1.long(), SDE)
    with pytest.raises(TypeError, match=r"the model returned dtype torch.float32; expected torch.float64"):
        ei.sample(lambda u, t: u.float(), u1, SDE)
    with pytest.raises(ValueError, match=r"matrix SDEs take eps-models .* got prediction='x0'"):
        ei.sample(model, u1, SDE, prediction="x0")
    with pytest.raises(ValueError, match=r"t_end must lie in the SDE's domain \[0.001, 1\]"):
        ei.sample(model, u1, SDE, t_end=0.0)


@pytest.mark.parametrize("frame", ["t", "y"])
def test_torchdiffeq_on_the_transformed_matrix_ode(cld_problem, frame):
    model, u1, ref = cld_problem
    sol = ei.solve(model, u1, SDE, method="torchdiffeq:dopri5", t_end=0.1,
                   options={"frame": frame, "rtol": 1e-6, "atol": 1e-6})
    torch.testing.assert_close(sol.x, ref, rtol=0, atol=1e-4)
    assert sol.nfe > 0


def test_cld_symbolic_transition_is_the_critically_damped_jordan_form():
    t, tau = sp.Symbol("t", real=True), sp.Symbol("tau", real=True)
    e = sp.exp(-8 * (t - tau))  # beta / sqrt(M) ... = 8 for beta = 4, M = 0.25: the double eigenvalue -8
    expected = sp.Matrix([[(1 + 8 * (t - tau)) * e, 16 * (t - tau) * e], [-4 * (t - tau) * e, (1 - 8 * (t - tau)) * e]])
    assert sp.simplify(SDE.symbolic_psi - expected) == sp.zeros(2, 2)
    num = sp.lambdify((t, tau), SDE.symbolic_psi, "numpy")
    np.testing.assert_allclose(np.asarray(num(0.9, 0.2), dtype=float), SDE.psi(0.9, 0.2), rtol=1e-12, atol=1e-14)


def test_cld_sigma_closed_form_matches_the_lyapunov_solution():
    """Sigma_t = Psi Sigma_0 Psi^T + int_0^t Psi G G^T Psi^T, in sympy (exact for constant F, G)."""
    t = sp.Symbol("t", real=True)
    assert SDE.symbolic_sigma is not None and "closed form" in SDE.how["sigma"]
    f = sp.lambdify(t, SDE.symbolic_sigma, "numpy")
    for tt in (0.01, 0.3, 1.0):
        np.testing.assert_allclose(np.asarray(f(tt), dtype=float), SDE.sigma_matrix(tt), rtol=1e-9, atol=1e-13)
