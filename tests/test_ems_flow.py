"""EMS on rectified flow (issue 21): ``model_statistics(..., prediction="flow")`` of a velocity model and
``ei.sample(model, z, ei.RectifiedFlow(), prediction="flow", method=<EMS>)`` from pure noise, the held-out check of
the statistics, a calibrated grid to the data, on a flow mixture (exact velocity) and on the shipped digits-flow
model when its weights exist; the held-out check's public names."""

import warnings

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.testing.problems import get_problem


def _noise(n, dim, seed):
    return torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def fitted():
    flow = ei.RectifiedFlow()
    mix = get_problem("gmm16")
    v = mix.flow_model(flow)
    stats = ei.model_statistics(v, _noise(256, 16, 99), flow, prediction="flow", nodes=60)
    return flow, mix, v, stats


def test_ems_samples_a_flow_model_from_pure_noise(fitted):
    """The whole range of the tables, from t_max to t_min, and ei.sample's default start (t = 1) and end. EMS with
    one point + corrector at NFE 10 against its base method on the same grid: benchmarks/results/flow_ems.md measures
    EMS 0.04-0.37x its base on held-out draws of six mixtures; asserted below 1 (not worse), with the 64 draws' log
    ratio standard error 0.1-0.4 far below the measured margin."""
    flow, mix, v, stats = fitted
    assert stats.error is not None and stats.error < 0.1  # 256 draws: ~0.03 measured on the flow mixtures
    z = _noise(64, 16, 0)
    ems = ei.EMSAdams(stats, 2)
    x = ei.sample(v, z, flow, method=ems, nfe=10, prediction="flow")  # default ends: t = 1 -> t_min
    ref = mix.flow_reference(z, 1.0, flow.t_min)
    base = ei.sample(v, z, flow, method=ems.base_method, nfe=10, prediction="flow", grid="quadratic_t")
    e_ems, e_base = float((x - ref).norm()), float((base - ref).norm())
    assert torch.isfinite(x).all() and e_ems < e_base, (e_ems, e_base)
    method, report = ei.check_statistics(v, stats, _noise(32, 16, 2), flow, nfe=10, prediction="flow")
    assert method.name == "ems-logrhoab1-pc" and report.passed and report.evaluations > 20


def test_a_calibrated_flow_grid_to_the_data_starts_from_the_default_grid(fitted):
    """A grid into the data (t_end = 0) tunes its last finite point too: with a budget of one solve the default grid
    comes back unchanged (quadratic_t's last finite point is not t_min), and more solves with a held-out check give a
    strictly decreasing grid that sample runs from t = 1."""
    flow, _, v, stats = fitted
    ems = ei.EMSAdams(stats, 2)
    xc = _noise(16, 16, 1)
    g1, info = ei.optimize_grid(v, xc, flow, method=ems, nfe=6, prediction="flow", t_end=0.0, max_solves=1,
                                return_info=True)
    default = ei.time_grid(flow, info["default_grid"], 6, flow.t_max, 0.0)
    default[0] = flow.t_terminal  # laid from t_max, started where sample starts: pure noise
    assert info["start"] == info["default_grid"] and float(default[-2]) > 10 * flow.t_min
    torch.testing.assert_close(g1, default, rtol=1e-9, atol=1e-12)
    g, info = ei.optimize_grid(v, xc, flow, method=ems, nfe=6, prediction="flow", t_end=0.0, max_solves=30,
                               heldout=_noise(16, 16, 2), on_failure="fallback", return_info=True)
    assert info["loss"] <= info["loss_default"] and isinstance(info["heldout"], ei.HeldoutCheck)
    assert len(g) == 7 and float(g[-1]) == 0.0 and float(g[-2]) > flow.t_min and bool((g[1:] < g[:-1]).all())
    assert float(g[0]) == flow.t_terminal
    x = ei.sample(v, _noise(8, 16, 0), flow, method=ems, prediction="flow", grid=g)
    assert torch.isfinite(x).all()


def test_ems_on_the_shipped_digits_flow_model():
    from ei_toolkit.models.registry import shipped_model

    entry = shipped_model("digits-flow")  # registered, weights shipped in the package: missing is a failure
    model = entry.load("cpu")
    flow = entry.sde()
    xs = torch.randn(64, *entry.shape, generator=torch.Generator().manual_seed(99))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 64 draws may warn about the statistics' error
        stats = ei.model_statistics(model, xs, flow, prediction="flow", nodes=40)
        z = torch.randn(8, *entry.shape, generator=torch.Generator().manual_seed(0))
        x = ei.sample(model, z, flow, prediction="flow", method=ei.EMSAdams(stats, 2), nfe=10, t_end=0.0)
    assert stats.model == ei.grid_opt.model_id(model) and torch.isfinite(x).all()


def test_the_held_out_check_is_public():
    from ei_toolkit import grid_opt, statistics

    for name, obj in (("check_statistics", statistics.check_statistics), ("heldout_check", grid_opt.heldout_check),
                      ("HeldoutCheck", grid_opt.HeldoutCheck), ("HeldoutCheckFailed", grid_opt.HeldoutCheckFailed)):
        assert name in ei.__all__ and getattr(ei, name) is obj


def test_ems_default_grid_follows_the_data_size_for_flow_models(fitted):
    """Without grid=, EMS runs on quadratic_t for variance-preserving SDEs and small flow data, on uniform_logrho for
    VE / EDM and for flow data of grids.HIGH_DIM elements or more (benchmarks/results/ems_trained.md: on quadratic_t
    the patch flow UNet's EMS was 1.19-8.3x its base method); the data size comes from x."""
    flow, _, v, stats = fitted
    pick = ei.EMSAdams.default_grid_for
    assert pick(flow, 16) == "quadratic_t" and pick(flow, ei.grids.HIGH_DIM) == "uniform_logrho"
    assert pick(ei.DiscreteVP.linear(), 768) == "quadratic_t" and pick(ei.EDM(), 2) == "uniform_logrho"
    ems = ei.EMSAdams(stats, 2)
    assert ei.solve(v, _noise(4, 16, 0), flow, method=ems, nfe=6, prediction="flow").grid == "quadratic_t"
    times, name = ems.times(ei.integrators.SolveRequest(evaluator=None, x=torch.zeros(1, 3, 16, 16), sde=flow,
                                                        t_start=flow.t_max, t_end=flow.t_min, nfe=6))
    assert name == "uniform_logrho" and len(times) == 7
    # from pure noise (the default start, through the zero-SNR step), where the grid was the class attribute
    big = torch.randn(8, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    shrink = 0.5 * torch.ones(3, 16, 16, dtype=torch.float64)  # data N(0, 0.25 I): v = (x - E[x0 | x_t]) / t

    def linear(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = t.view(-1, 1, 1, 1)
        a, c = 1 - s, shrink**2
        return (x - a * c / (a * a * c + s * s) * x) / s.clamp_min(1e-12)

    stats_big = ei.model_statistics(linear, big, flow, prediction="flow", nodes=20)
    sol = ei.solve(linear, big[:2], flow, method=ei.EMSAdams(stats_big, 2), nfe=6, prediction="flow")
    assert sol.stats["start"] == "infinite noise" and sol.grid == "uniform_logrho"


def test_one_point_ems_keeps_the_evaluation_at_pure_noise(fitted, tmp_path, runs_from_t_max_with_its_first_answer):
    """From t = 1, EMS with one point runs from t_max with the noise the evaluation at t = 1 implies there (eps = z
    at the exact step's state) as its first node: the same as that plan from t_max with a model whose first answer
    is that eps; nfe evaluations, the first at t = 1. Two points restart after the first step (measured on the flow
    mixtures: kept, two mixtures were 9x worse at NFE 20; EMSAdams.keeps_terminal_evaluation). EIScheduler's loop
    is the same run."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ei_toolkit.diffusion import EIScheduler
    from ei_toolkit.zero_snr import keeps_terminal_evaluation

    flow, _, v, stats = fitted
    ems = ei.EMSAdams(stats, 1)
    assert keeps_terminal_evaluation(ems, None) and not keeps_terminal_evaluation(ei.EMSAdams(stats, 2), None)
    z = _noise(16, 16, 0)
    # the first answer: the velocity whose eps = x + (1 - t) v is z
    runs_from_t_max_with_its_first_answer(v, z, flow, ems, lambda x, t, x0_1: (z - x) / (1 - t[:, None]))
    # the scheduler: statistics from a file, one model call per step, the same run on its grid
    stats.save(tmp_path / "stats.pt")
    sched = EIScheduler.from_config(FlowMatchEulerDiscreteScheduler(shift=3.0).config, method="ems-logrhoab0-pc",
                                    statistics=str(tmp_path / "stats.pt"))
    sched.set_timesteps(8)
    y = z
    for t in sched.timesteps:
        y = sched.step(v(y, (t.double() / 1000).expand(16)), t, y).prev_sample
    torch.testing.assert_close(y, ei.sample(v, z, flow, method=ems, grid=torch.as_tensor(sched._grid),
                                            prediction="flow"), rtol=0, atol=1e-12)
