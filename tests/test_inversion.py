"""Both directions (issue 22): the probability-flow ODE integrated forward in time (data to noise) with the same
plans as sampling, ei.invert, and the exact inverse of a sampler (ei_toolkit/inversion.py, docs/math.md 4.12)."""

import itertools
import warnings

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.integrators import Integrator
from ei_toolkit.testing import convergence_order
from ei_toolkit.testing.problems import get_problem

ORDERED = [n for n, m in ei.INTEGRATORS.items() if isinstance(m, Integrator) and not m.stochastic]
MATRIX = [n for n in ORDERED if ei.INTEGRATORS[n].matrix]


@pytest.mark.parametrize("name", ORDERED)
def test_every_method_reaches_its_order_forward(name):
    """The mirrored window (t = 0.1 up to 1 under the VP SDE) against a forward DOP853 solution at 1e-13; the
    predictor-corrector methods are pre-asymptotic below 128 steps forward (local slopes 1.9, 2.4, 2.7, 2.9 from
    32 to 512 steps), so the fit starts at 128."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ei.RoundoffWarning)
        # lowered final steps cap the order at 2 asymptotically, but forward their one-point step ends at the noise,
        # where the x0 prediction barely moves: up to the unlowered order may show in this window
        m = ei.INTEGRATORS[name]
        above = 1.0 + getattr(m, "unlowered_order", m.order) - m.order
        convergence_order(name, forward=True, steps=(128, 256, 512, 1024)).check(above=above)


@pytest.mark.parametrize("name", MATRIX)
def test_matrix_methods_reach_their_order_forward_on_cld(name):
    convergence_order(name, sde=ei.CLD(), forward=True, steps=(128, 256, 512, 1024)).check()


@pytest.fixture(scope="module")
def mixture():
    sde = ei.VPSDE()
    mix = get_problem("gmm16")
    x0 = mix.sample_marginal(sde, sde.t_min, 4, torch.Generator().manual_seed(0))
    return sde, mix, mix.eps_model(sde), x0


def test_sample_forward_is_invert_and_the_grid_is_the_sampling_grid_mirrored(mixture):
    """The issue's first attempt, ei.sample(model, x0, sde, t_start=t_min, t_end=t_max), now encodes; named grids
    are laid from t_start up and hold the sampling grid's points; an explicit grid may come in either order."""
    sde, _, model, x0 = mixture
    enc = ei.invert(model, x0, sde, nfe=12, solution=True)
    direct = ei.sample(model, x0, sde, t_start=sde.t_min, t_end=sde.t_max, nfe=12)
    torch.testing.assert_close(enc.x, direct, rtol=0, atol=0)
    back = ei.solve(model, enc.x, sde, method=enc.method, grid=enc.grid, nfe=12)
    torch.testing.assert_close(enc.times, back.times.flip(0), rtol=1e-12, atol=1e-12)
    for order in (enc.times, enc.times.flip(0)):
        torch.testing.assert_close(ei.invert(model, x0, sde, method=enc.method, grid=order), enc.x, rtol=0, atol=0)


def test_encodings_converge_to_the_exact_ode_encoding(mixture):
    """Against the DOP853 encoding (rtol 1e-12) of exact-eps mixture data, the default's error falls with NFE."""
    sde, mix, model, x0 = mixture
    exact = mix.reference(sde, x0, sde.t_min, sde.t_max, rtol=1e-12, atol=1e-12)
    errors = [float((ei.invert(model, x0, sde, nfe=n) - exact).abs().max()) for n in (10, 20, 40, 80)]
    assert all(b < a / 2 for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 1e-3 * float(exact.abs().max()), errors


@pytest.mark.parametrize(("method", "options"), [("adaptive", {}), ("torchdiffeq:dopri5", {})])
def test_adaptive_and_black_box_methods_encode_to_their_tolerance(mixture, method, options):
    """Step-size control works forward too (lam = -log rho decreasing): the error follows rtol."""
    sde, mix, model, x0 = mixture
    exact = mix.reference(sde, x0, sde.t_min, sde.t_max, rtol=1e-12, atol=1e-12)
    errors = []
    for rtol in (1e-3, 1e-5):
        sol = ei.invert(model, x0, sde, method=method, options={"rtol": rtol, "atol": rtol}, solution=True)
        assert float(sol.times[0]) == sde.t_min and float(sol.times[-1]) == sde.t_max
        errors.append(float((sol.x - exact).abs().max() / exact.abs().max()))
    assert errors[1] < errors[0] / 10 and errors[1] < 1e-3, errors


def test_ddim_inversion_equals_diffusers_ddim_inverse_scheduler_step_for_step():
    """diffusers' DDIMInverseScheduler moves from timestep t - r to t with the model evaluated at t (its one-step
    time lag; r = 1000 // steps) and starts from alpha = 1. From its second step on, its states are ei's DDIM
    forward steps on the grid 0, r, 2r, ... with the model read one grid point later."""
    diffusers = pytest.importorskip("diffusers")
    steps = 10
    theirs = diffusers.DDIMInverseScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=True)
    theirs.set_timesteps(steps)
    sde = ei.diffusion.sde_from_scheduler_config(theirs.config)
    mix = get_problem("gmm16")
    eps = mix.eps_model(sde)
    x = mix.sample_data(3, torch.Generator().manual_seed(1)).to(torch.float64)
    states = []
    for t in theirs.timesteps:
        x = theirs.step(eps(x, torch.full((3,), float(t), dtype=torch.float64)), t, x).prev_sample
        states.append(x)
    grid = theirs.timesteps.to(torch.float64)
    step = float(grid[1] - grid[0])

    def lagged(x, t):  # the model one grid point later, as the scheduler reads it
        return eps(x, t + step)

    ours = ei.solve(lagged, states[0], sde, method="ddim", grid=grid, trajectory=True)
    assert ours.nfe == steps - 1
    for k in range(1, steps):  # diffusers computes its alphas in float32
        torch.testing.assert_close(ours.trajectory[k], states[k], rtol=1e-5, atol=1e-5)


def _budget(name, nfe):
    """The smallest budget >= nfe the method can spend (a multiple of its evaluations per step)."""
    k = ei.INTEGRATORS[name].evals_per_step
    return -(-nfe // k) * k


@pytest.mark.parametrize("nfe", [10, 50])
@pytest.mark.parametrize("name", ORDERED)
def test_exact_inversion_round_trip(mixture, name, nfe):
    """sample(invert(x0, exact=True)) equals x0 to <= 1e-6 relative in float64, for every deterministic method at
    NFE 10 and 50 (the next multiple of a method's evaluations per step), where the naive inversion drifts; every
    model evaluation is counted."""
    sde, _, model, x0 = mixture
    nfe = _budget(name, nfe)
    calls = []

    def counted(x, t):
        calls.append(1)
        return model(x, t)

    sol = ei.invert(counted, x0, sde, method=name, nfe=nfe, exact=True, solution=True)
    assert sol.nfe == len(calls) == sol.stats["nfe"] and sol.stats["exact"]
    assert sol.stats["residual"] <= sol.stats["tol"] and sol.stats["iterations"] >= 1
    back = ei.sample(model, sol.x, sde, method=name, nfe=nfe, t_start=sde.t_max, t_end=sde.t_min)
    err = (back - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)
    assert float(err.max()) <= 1e-6, float(err.max())
    try:  # the naive inversion drifts, or (rhoab3 at NFE 10: its own forward solve diverges) fails outright
        naive = ei.invert(model, x0, sde, method=name, nfe=nfe)
    except ei.NumericalError:
        assert sol.stats["encoder"] == "ddim"  # then DDIM on the same points started and preconditioned Newton
        return
    drift = ei.sample(model, naive, sde, method=name, nfe=nfe, t_start=sde.t_max, t_end=sde.t_min) - x0
    assert float((drift.flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)).max()) > 1e-6


def test_exact_inversion_in_float32_meets_its_default_tolerance(mixture):
    sde, _, model, x0 = mixture
    x32 = x0.float()
    sol = ei.invert(model, x32, sde, method="logrhoab2", nfe=20, exact=True, solution=True)
    assert sol.x.dtype == torch.float32 and sol.stats["tol"] == pytest.approx(np.sqrt(np.finfo(np.float32).eps))
    back = ei.sample(model, sol.x, sde, method="logrhoab2", nfe=20, t_start=sde.t_max, t_end=sde.t_min)
    rel = (back.double() - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)
    assert float(rel.max()) <= 2 * sol.stats["tol"]  # the residual was measured on the same float32 sampler


def test_iteration_cap_and_non_convergence_are_reported(mixture):
    sde, _, model, x0 = mixture
    with pytest.raises(ei.NumericalError, match=r"did not converge in max_iter=1 iterations: the round trip's "
                                                r"relative residual is .* > tol=1e-10"):
        ei.invert(model, x0, sde, method="ddim", nfe=10, exact=True, tol=1e-10, max_iter=1)
    with pytest.raises(ei.NumericalError, match=r"stalled after \d+ iterations: .* > tol=1e-30 .* also with 80 "
                                                r"Krylov vectors"):
        ei.invert(model, x0, sde, method="logrhoab2", nfe=20, exact=True, tol=1e-30, max_iter=1000)


def test_bad_arguments_name_what_was_expected(mixture):
    sde, _, model, x0 = mixture
    with pytest.raises(ValueError, match=r"t_start must be below t_end; got t_start=1, t_end=0.5"):
        ei.invert(model, x0, sde, t_start=1.0, t_end=0.5)
    with pytest.raises(ValueError, match=r"tol must be a positive finite number; got -1"):
        ei.invert(model, x0, sde, exact=True, tol=-1)
    with pytest.raises(ValueError, match=r"max_iter must be a positive integer; got 0"):
        ei.invert(model, x0, sde, exact=True, max_iter=0)
    with pytest.raises(ValueError, match=r"krylov must be a positive integer; got 0"):
        ei.invert(model, x0, sde, exact=True, krylov=0)
    with pytest.raises(TypeError, match=r"exact must be True or False"):
        ei.invert(model, x0, sde, exact="yes")
    with pytest.raises(ValueError, match=r"'sddim' is stochastic: the reverse SDE runs from noise to data only"):
        ei.invert(model, x0, sde, method="sddim")
    with pytest.raises(ValueError, match=r"exact=True inverts a sampler with a fixed grid; 'adaptive' chooses"):
        ei.invert(model, x0, sde, method="adaptive", exact=True)
    with pytest.raises(ValueError, match=r"t_start must be >= sde.t_min = 0.001; got 0.0005"):
        ei.invert(model, x0, sde, t_start=5e-4)
    with pytest.raises(ValueError, match=r"explicit grid gives its own start and end"):
        ei.invert(model, x0, sde, grid=torch.tensor([0.1, 0.5, 1.0]), t_end=1.0)
    with pytest.raises(ValueError, match=r"t_start and t_end must differ"):
        ei.solve(model, x0, sde, t_start=0.5, t_end=0.5)


def test_rectified_flow_models_invert_too():
    """A velocity (flow) model under ei.RectifiedFlow: the encoding converges to the exact ODE encoding and the exact
    inverse of its sampler round-trips (issue 21's SDE, issue 22's directions)."""
    sde = ei.RectifiedFlow()
    mix = get_problem("gmm16")
    v = mix.flow_model(sde)
    x0 = mix.sample_marginal(sde, sde.t_min, 4, torch.Generator().manual_seed(0))
    exact = mix.reference(sde, x0, sde.t_min, sde.t_max, rtol=1e-12, atol=1e-12)
    errors = [float((ei.invert(v, x0, sde, prediction="flow", nfe=n, t_start=sde.t_min) - exact).abs().max())
              for n in (10, 20, 40)]
    assert errors[2] < errors[1] < errors[0] and errors[2] < 1e-2 * float(exact.abs().max()), errors
    for end in (sde.t_max, sde.t_terminal):  # to the last finite time, and to pure noise (t = 1, rho = inf)
        sol = ei.invert(v, x0, sde, prediction="flow", nfe=10, t_start=sde.t_min, t_end=end, exact=True,
                        solution=True)
        back = ei.sample(v, sol.x, sde, prediction="flow", method=sol.method, nfe=10, t_start=end, t_end=sde.t_min)
        assert float(((back - x0).norm(dim=1) / x0.norm(dim=1)).max()) <= 1e-6
