"""EMSAdams and model_statistics (docs/math.md section 4.11): the eps and x0 forms as special statistics, exactness
on Gaussian data, the declared order for fixed statistics, save / load, and clear errors."""

import math

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.integrators.base import plan_for
from ei_toolkit.integrators.ems import _sde_tag
from ei_toolkit.model import ModelEvaluator
from ei_toolkit.testing import GaussianMixture, get_problem


def _constant_stats(sde, lin, s, shape=(2,), n=9):
    ends = sde.rho(torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64))
    lam = torch.linspace(-math.log(float(ends[0])), -math.log(float(ends[1])), n, dtype=torch.float64)
    return ei.ModelStatistics(lam=lam, l=torch.full((n,), float(lin)), s=torch.full((n,), float(s)),
                              b=torch.zeros(n, *shape), sde=_sde_tag(sde), samples=1)


@pytest.mark.parametrize(("lin", "s", "registered"), [(0.0, -1.0, "logrhoab{}"), (1.0, 0.0, "x0-logrhoab{}")])
@pytest.mark.parametrize("points", [1, 2, 3])
@pytest.mark.parametrize("corrector", [False, True])
def test_eps_and_x0_forms_are_special_statistics(lin, s, registered, points, corrector):
    """Under VE (alpha = 1, sigma = e^{-lam}): (l, s, b) = (0, dlog sigma/dlam = -1, 0) makes g = const * eps, the
    eps form in log rho; (1, dlog alpha/dlam = 0, 0) makes g = -x0, the x0 form. Same states as the registered
    methods, to round-off."""
    sde = ei.VESDE()
    mix = get_problem("gmm2d")
    x = mix.sample_marginal(sde, sde.t_max, 6, torch.Generator().manual_seed(0))
    name = registered.format(points - 1) + ("-pc" if corrector else "")
    name = "ddim" if (points, corrector) == (1, False) else name  # one point: both forms are DDIM
    m = ei.EMSAdams(_constant_stats(sde, lin, s), points, corrector)
    for nfe in (6, 12):
        ours = ei.solve(mix.eps_model(sde), x, sde, method=m, nfe=nfe, grid="uniform_logrho").x
        theirs = ei.solve(mix.eps_model(sde), x, sde, method=name, nfe=nfe, grid="uniform_logrho").x
        assert torch.allclose(ours, theirs, rtol=1e-9, atol=1e-9), (name, nfe, (ours - theirs).abs().max())


def test_exact_on_gaussian_data():
    """For data N(0, c^2 I) eps is linear in x: the estimated l is its slope, f = sigma eps - l x vanishes, and the
    method is exact up to the piecewise-linear tables (here far below DDIM's error)."""
    sde = ei.VPSDE()
    g = GaussianMixture(means=torch.zeros(1, 3, dtype=torch.float64), stds=torch.tensor([0.4], dtype=torch.float64),
                        weights=torch.ones(1, dtype=torch.float64))
    model = g.eps_model(sde)
    x = g.sample_marginal(sde, sde.t_max, 64, torch.Generator().manual_seed(1))
    st = ei.model_statistics(model, x, sde, nodes=400)
    ref = g.reference(sde, x, sde.t_max, sde.t_min)
    err = (ei.solve(model, x, sde, method=ei.EMSAdams(st, 1, False), nfe=5).x - ref).abs().max()
    ddim = (ei.solve(model, x, sde, method="ddim", nfe=5).x - ref).abs().max()
    assert err < 1e-4 * ddim, (err, ddim)
    sig = sde.sigma(torch.tensor(float(sde.t_of_rho(torch.exp(-st.lam[200])))))
    alpha = (1 - sig**2).sqrt()
    assert abs(float(st.l[200]) - float(sig**2 / (alpha**2 * 0.16 + sig**2))) < 1e-6


@pytest.fixture(scope="module")
def mixture_stats():
    sde = ei.VPSDE()
    mix = get_problem("gmm2d")
    x = mix.sample_marginal(sde, sde.t_max, 64, torch.Generator().manual_seed(3))
    return sde, mix, ei.model_statistics(mix.eps_model(sde), x, sde, nodes=40, t_end=0.1)


@pytest.mark.parametrize(("points", "corrector"), [(1, False), (1, True), (2, False), (2, True), (3, False)])
def test_declared_order_for_fixed_statistics(mixture_stats, points, corrector):
    """Error at t = 0.1 against a DOP853 solution, from exact starting values, on uniform log-rho grids of 64-512
    steps: the fitted slope reaches the declared order (within 0.3) and stays below order + 1."""
    sde, mix, st = mixture_stats
    m = ei.EMSAdams(st, points, corrector)
    model = mix.eps_model(sde)
    x = mix.sample_marginal(sde, sde.t_max, 8, torch.Generator().manual_seed(0))
    steps = (64, 128, 256, 512)
    errors = []
    for n in steps:
        grid = ei.time_grid(sde, "uniform_logrho", n, sde.t_max, 0.1)
        plan = plan_for(m, sde, grid)
        s = points - 1
        exact = mix.reference(sde, x, sde.t_max, [float(t) for t in grid[1: s + 1]] + [0.1], rtol=1e-13) \
            if s else mix.reference(sde, x, sde.t_max, [0.1], rtol=1e-13)
        states = [x] + [exact[j] for j in range(s)]
        eps_fn = ModelEvaluator(model, sde).bind(plan.eval_times, x)
        hist = [plan.u[j] * eps_fn(states[j], j) + plan.v[j] * states[j] for j in range(s)]
        out = plan.run(states[s], eps_fn, start=s, history=hist)
        errors.append(float((out - exact[-1]).abs().max()))
    fitted = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert m.order - 0.3 <= fitted < m.order + 1, (m.name, m.order, fitted, errors)


def test_save_load_and_refusals(tmp_path, mixture_stats):
    sde, mix, st = mixture_stats
    path = st.save(tmp_path / "stats.pt")
    back = ei.ModelStatistics.load(path, sde=sde)
    assert back.digest == st.digest and torch.equal(back.b, st.b)
    with pytest.raises(ValueError, match="estimated for the SDE"):
        ei.ModelStatistics.load(path, sde=ei.CosineVPSDE())
    torch.save({"format": "something else"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not saved ei_toolkit model statistics"):
        ei.ModelStatistics.load(tmp_path / "bad.pt")
    m = ei.EMSAdams(st, 2)
    x = mix.sample_marginal(sde, sde.t_max, 4, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="outside the statistics' range"):  # they were estimated down to t = 0.1
        ei.solve(mix.eps_model(sde), x, sde, method=m, nfe=5)
    with pytest.raises(ValueError, match="samples shaped"):
        ei.solve(lambda y, t: torch.zeros_like(y), torch.zeros(2, 3, dtype=torch.float64), sde, method=m, nfe=5,
                 t_end=0.1)
    with pytest.raises(ValueError, match="points must be an integer from 1 to 4"):
        ei.EMSAdams(st, 0)
    with pytest.raises(TypeError, match=r"statistics must be ei_toolkit\.ModelStatistics"):
        ei.EMSAdams("stats.pt")
    with pytest.raises(ValueError, match="nodes must be at least 4"):
        ei.model_statistics(mix.eps_model(sde), x, sde, nodes=3)
    with pytest.raises(ValueError, match="finite log-SNR"):
        ddpm = ei.DiscreteVP.linear()
        ei.model_statistics(mix.eps_model(ddpm), x, ddpm, t_end=ddpm.t0)  # rho = 0 there


def test_follows_dtype_and_caches_plans_by_value(mixture_stats):
    sde, mix, st = mixture_stats
    x = mix.sample_marginal(sde, sde.t_max, 4, torch.Generator().manual_seed(0)).float()
    out = ei.solve(mix.eps_model(sde), x, sde, method=ei.EMSAdams(st, 2), nfe=8, t_end=0.1)
    assert out.x.dtype == torch.float32 and bool(torch.isfinite(out.x).all()) and out.nfe == 8
    same = ei.ModelStatistics(lam=st.lam.clone(), l=st.l.clone(), s=st.s.clone(), b=st.b.clone(), sde=st.sde,
                              samples=st.samples)
    assert ei.EMSAdams(same, 2).key == ei.EMSAdams(st, 2).key  # by value, not identity
    other = ei.ModelStatistics(lam=st.lam, l=st.l, s=st.s + 0.1, b=st.b, sde=st.sde, samples=st.samples)
    assert ei.EMSAdams(other, 2).key != ei.EMSAdams(st, 2).key


def test_calibrated_grid_round_trip(tmp_path, mixture_stats):
    """optimize_grid accepts the method object; the saved grid is keyed by the statistics (another set refuses
    it)."""
    sde, mix, st = mixture_stats
    model = mix.eps_model(sde)
    x = mix.sample_marginal(sde, sde.t_max, 8, torch.Generator().manual_seed(5))
    m = ei.EMSAdams(st, 2)
    grid, info = ei.optimize_grid(model, x, sde, method=m, nfe=5, t_end=0.1, max_solves=20, return_info=True)
    assert info["loss"] <= info["loss_default"]
    path = ei.save_grid(tmp_path / "g.json", grid, model="gmm2d", sde=sde, method=m, nfe=5)
    assert torch.equal(ei.load_grid(path, model="gmm2d", sde=sde, method=m, nfe=5), grid)
    other = ei.EMSAdams(ei.ModelStatistics(lam=st.lam, l=st.l, s=st.s * 0, b=st.b, sde=st.sde, samples=1), 2)
    with pytest.raises(ValueError, match="method_config"):
        ei.load_grid(path, model="gmm2d", sde=sde, method=other, nfe=5)


def test_default_grid_follows_the_sde_family():
    """quadratic_t for variance-preserving schedules, uniform_logrho where t is sigma (EDM)."""
    for sde, want in ((ei.VPSDE(), "quadratic_t"), (ei.EDM(), "uniform_logrho")):
        mix = get_problem("gmm2d")
        x = mix.sample_marginal(sde, sde.t_max, 16, torch.Generator().manual_seed(0))
        st = ei.model_statistics(mix.eps_model(sde), x, sde, nodes=20)
        assert ei.solve(mix.eps_model(sde), x, sde, method=ei.EMSAdams(st), nfe=6).grid == want


def test_last_step_into_the_data():
    """A grid ending at rho = 0 (beyond every table): the last step returns the data prediction at the last finite
    point. With the eps-form statistics and one point that is DDIM all the way (EDM: t = sigma, rho(0) = 0); with
    fitted statistics and no corrector it is (x - sigma eps) / alpha at the state the finite steps reach."""
    sde = ei.EDM()
    mix = get_problem("gmm2d")
    model = mix.eps_model(sde)
    x = mix.sample_marginal(sde, sde.t_max, 6, torch.Generator().manual_seed(0))
    grid = ei.time_grid(sde, "uniform_logrho", 6, sde.t_max, sde.t_min)
    grid = torch.cat([grid, torch.zeros(1, dtype=torch.float64)])  # t = 0 is the data
    ours = ei.solve(model, x, sde, method=ei.EMSAdams(_constant_stats(sde, 0.0, -1.0), 1, False), grid=grid).x
    ddim = ei.solve(model, x, sde, method="ddim", grid=grid).x
    assert torch.allclose(ours, ddim, rtol=1e-10, atol=1e-10)
    st = ei.model_statistics(model, mix.sample_marginal(sde, sde.t_max, 32, torch.Generator().manual_seed(2)), sde,
                             nodes=30)
    sol = ei.solve(model, x, sde, method=ei.EMSAdams(st, 2, False), grid=grid, trajectory=True)
    last = sol.trajectory[-2]
    t = grid[-2:-1]
    a, s = float(sde.alpha(t)[0]), float(sde.sigma(t)[0])
    want = (last - s * model(last, t.expand(len(last)))) / a
    assert torch.allclose(sol.x, want, rtol=1e-9, atol=1e-9)
    with_corrector = ei.solve(model, x, sde, method=ei.EMSAdams(st, 2), grid=grid).x
    ref = ei.solve(model, x, sde, method="x0-logrhoab3", nfe=400, t_end=0.0).x  # converged to ~1e-9
    assert float((with_corrector - ref).abs().max()) < float((ddim - ref).abs().max())


def test_named_methods(mixture_stats):
    """Configs and command lines hold names: EMSAdams.named maps each of NAMES to its points and corrector."""
    _, _, st = mixture_stats
    for name in ei.EMSAdams.NAMES:
        m = ei.EMSAdams.named(name, st)
        assert m.name == name and m.points == int(name[12]) + 1 and m.corrector == name.endswith("-pc")
    with pytest.raises(ValueError, match="unknown EMS method 'ems-logrhoab4'"):
        ei.EMSAdams.named("ems-logrhoab4", st)


def test_statistics_record_their_model_and_refuse_another(tmp_path):
    """Issue 25: statistics carry the id of the model they were estimated from (the SHA-256 of an nn.Module's
    weights); loading them for another model, or a retrained one, is refused."""
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2).double()

        def forward(self, y, t):
            return self.lin(y)

    sde = ei.VPSDE()
    net = Net()
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    st = ei.model_statistics(net, x, sde, nodes=8, t_end=0.1, model_id="linear-a")
    assert st.model == "linear-a"
    path = st.save(tmp_path / "stats.pt")
    assert ei.ModelStatistics.load(path, model="linear-a").model == "linear-a"
    with pytest.raises(ValueError, match=r"stats\.pt.*estimated from the model 'linear-a', not from 'linear-b'"):
        ei.ModelStatistics.load(path, sde=sde, model="linear-b")
    module_stats = ei.model_statistics(net, x, sde, nodes=8, t_end=0.1)
    assert module_stats.model.startswith("module:") and "Net:" in module_stats.model
    path = module_stats.save(tmp_path / "module.pt")
    ei.ModelStatistics.load(path, model=net)
    with torch.no_grad():
        net.lin.weight.add_(0.01)  # retrained
    with pytest.raises(ValueError, match="estimated from the model 'module:"):
        ei.ModelStatistics.load(path, model=net)
    unknown = _constant_stats(sde, 0.0, -1.0).save(tmp_path / "unknown.pt")
    with pytest.raises(ValueError, match="record no model"):
        ei.ModelStatistics.load(unknown, model=net)


def test_a_central_difference_step_below_the_precision_is_refused():
    """Issue 24: step=1e-9 on a float32 batch gave x + delta v == x, so l = 0 at every node, silently."""
    sde = ei.VPSDE()
    mix = get_problem("gmm2d")
    x = mix.sample_marginal(sde, sde.t_max, 8, torch.Generator().manual_seed(0)).float()
    with pytest.raises(ValueError, match=r"step=1e-09 is below what torch.float32 resolves.*sqrt\(eps\) = 0.000345"):
        ei.model_statistics(mix.eps_model(sde), x, sde, nodes=8, step=1e-9)
    st = ei.model_statistics(mix.eps_model(sde), x.double(), sde, nodes=8, step=1e-6, t_end=0.1)  # fine in float64
    assert bool((st.l != 0).any())


def test_a_changed_value_in_a_statistics_file_is_reported_as_corrupt(tmp_path, mixture_stats):
    """Issue 24: a flipped exponent bit used to surface as a NumericalError blamed on the model output."""
    _, _, st = mixture_stats
    raw = bytearray(st.save(tmp_path / "stats.pt").read_bytes())
    at = raw.find(st.b.numpy().tobytes())
    raw[at + 8 * 7 + 6] ^= 0x40  # one exponent bit of one value of b
    (tmp_path / "flipped.pt").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"flipped\.pt"):
        ei.ModelStatistics.load(tmp_path / "flipped.pt")
