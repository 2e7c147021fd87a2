"""Non-isotropic (matrix) linear SDEs: CLD's transition, covariance and gDDIM factor, and gDDIM / matrix tAB
convergence on a Gaussian mixture pushed through CLD (exact score)."""

import numpy as np
import pytest
import sympy as sp
import torch

from ei_toolkit.sde.matrix import CLD, MatrixLinearSDE, mixture_eps, reference_flow, sample_matrix
from ei_toolkit.testing import get_problem

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


@pytest.fixture(scope="module")
def cld_problem():
    prob = get_problem("gmm2d")
    model = mixture_eps(SDE, prob.means, prob.stds * 3, prob.weights)
    z = torch.randn(8, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u1 = torch.einsum("ab,nbd->nad", torch.as_tensor(np.linalg.cholesky(SDE.sigma_matrix(1.0))), z)
    ref = reference_flow(SDE, model, u1, 1.0, 0.1, rtol=1e-10)
    return model, u1, ref


@pytest.mark.parametrize(("points", "order"), [(1, 1.0), (2, 2.0)])
def test_gddim_and_matrix_tab_converge_with_their_order(cld_problem, points, order):
    model, u1, ref = cld_problem
    steps = (16, 32, 64, 128)
    errs = [(sample_matrix(model, u1, SDE, points=points, nfe=n, t_end=0.1, grid="uniform_t") - ref).abs().max()
            .item() for n in steps]
    slope = np.polyfit(-np.log(steps), np.log(errs), 1)[0]
    assert order - 0.25 <= slope <= order + 0.6, (slope, errs)


def test_higher_point_counts_are_more_accurate(cld_problem):
    model, u1, ref = cld_problem
    errs = [(sample_matrix(model, u1, SDE, points=p, nfe=64, t_end=0.1, grid="uniform_t") - ref).abs().max().item()
            for p in (1, 2, 3, 4)]
    assert errs[0] > errs[1] > errs[2] > errs[3], errs


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


def test_sample_routes_matrix_sdes_and_reports_what_is_not_supported(cld_problem):
    import ei_toolkit as ei

    model, u1, _ = cld_problem
    sol = ei.solve(model, u1, SDE, method="tab2", nfe=64, grid="uniform_t", t_end=0.1)
    direct = sample_matrix(model, u1, SDE, points=3, nfe=64, grid="uniform_t", t_end=0.1)
    assert sol.nfe == 64 and torch.equal(sol.x, direct)
    with pytest.raises(ValueError, match=r"method 'rhork-rk4' does not support matrix SDEs yet; valid: ddim"):
        ei.sample(model, u1, SDE, method="rhork-rk4")
    with pytest.raises(ValueError, match=r"unknown grid 'karras' for matrix SDEs"):
        ei.sample(model, u1, SDE, method="ddim", grid="karras")
    with pytest.raises(ValueError, match=r"u must have shape \(batch, 2, ...\)"):
        ei.sample(model, u1[:, :1], SDE, method="ddim")


@pytest.mark.parametrize("frame", ["t", "y"])
def test_torchdiffeq_on_the_transformed_matrix_ode(cld_problem, frame):
    import torchdiffeq

    from ei_toolkit.sde.matrix import TransformedFlow

    model, u1, ref = cld_problem
    f = TransformedFlow(model, SDE, frame)
    ts = torch.tensor([1.0, 0.1], dtype=torch.float64)
    y = torchdiffeq.odeint(f, f.encode(u1, 1.0), ts, rtol=1e-6, atol=1e-6, options={"step_t": ts})[-1]
    torch.testing.assert_close(f.decode(y, 0.1), ref, rtol=0, atol=1e-4)
    assert f.nfe > 0


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


@pytest.mark.parametrize("points", [1, 2, 3, 4])
def test_matrix_tab_reaches_its_order_from_exact_history(points):
    """Like the scalar convergence test: exact states and eps at the first grid points, then the fitted slope
    of the error against the step count reaches the order (points) within 0.3."""
    prob = get_problem("gmm2d")
    model = mixture_eps(SDE, prob.means, prob.stds * 3, prob.weights)
    z = torch.randn(8, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u1 = torch.einsum("ab,nbd->nad", torch.as_tensor(np.linalg.cholesky(SDE.sigma_matrix(1.0))), z)
    steps = (64, 128, 256, 512)
    grids = {n: np.linspace(1.0, 0.1, n + 1) for n in steps}
    need = sorted({float(g[j]) for g in grids.values() for j in range(1, points)} | {0.1}, reverse=True)
    exact = dict(zip(need, reference_flow(SDE, model, u1, 1.0, need, rtol=1e-12), strict=True))
    errs = []
    for n in steps:
        g, st = grids[n], points - 1
        states = [u1] + [exact[float(g[j])] for j in range(1, st + 1)]
        hist = [model(states[j], torch.full((8,), g[j], dtype=torch.float64)) for j in range(st)]
        out = sample_matrix(model, states[st], SDE, points=points, nfe=n, grid=torch.tensor(g), start=st,
                            history=hist)
        errs.append((out - exact[0.1]).abs().max().item())
    slope = np.polyfit(-np.log(steps), np.log(errs), 1)[0]
    assert points - 0.3 <= slope <= points + 1, (slope, errs)
