"""ei.optimize_grid, ei.save_grid, ei.load_grid (ei_toolkit/grid_opt.py): the calibrated grid is a valid grid for
its method and NFE, beats the method's default grid on held-out draws, and is saved and loaded only for its own
(model, SDE, method, NFE)."""

import json

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.testing import get_problem


@pytest.fixture(scope="module")
def calibrated():
    sde = ei.DiscreteVP.linear()
    mix = get_problem("gmm2d")
    model = mix.eps_model(sde)
    x = mix.sample_marginal(sde, sde.t_max, 16, torch.Generator().manual_seed(1))
    grid, info = ei.optimize_grid(model, x, sde, nfe=5, max_solves=60, return_info=True)
    return sde, mix, model, grid, info


def median_error(a, b):
    return float((a.double() - b).reshape(len(a), -1).pow(2).mean(1).sqrt().median())


def test_the_grid_is_decreasing_with_nfe_consistent_length(calibrated):
    sde, _, _, grid, info = calibrated
    assert grid.dtype == torch.float64 and grid.ndim == 1 and len(grid) == 5 + 1
    assert bool((grid[1:] < grid[:-1]).all())
    assert grid[0] == sde.t_max and grid[-1] == sde.t_min
    # the cost is bounded and reported: the reference plus at most max_solves solves of nfe evaluations
    assert info["solves"] <= 60 and info["nfe_optimiser"] == info["solves"] * 5 and info["nfe_reference"] > 0
    assert info["loss"] < info["loss_default"]


def test_the_calibrated_grid_beats_the_default_grid_on_held_out_draws(calibrated):
    sde, mix, model, grid, _ = calibrated
    x = mix.sample_marginal(sde, sde.t_max, 64, torch.Generator().manual_seed(2))  # other draws
    ref = mix.reference(sde, x, sde.t_max, sde.t_min)
    default = median_error(ei.sample(model, x, sde, nfe=5), ref)
    tuned = ei.sample(model, x, sde, nfe=5, grid=grid)
    assert median_error(tuned, ref) < 0.8 * default, (median_error(tuned, ref), default)


def test_other_methods_and_a_grid_to_rho_zero():
    """A multistep method in t; a grid ending at the data (rho = 0) tunes its last finite point too, kept at or above
    t_min."""
    sde = ei.DiscreteVP.linear()
    mix = get_problem("gmm2d")
    x = mix.sample_marginal(sde, sde.t_max, 8, torch.Generator().manual_seed(3))
    g = ei.optimize_grid(mix.eps_model(sde), x, sde, method="tab1", nfe=4, t_end=-1.0, max_solves=12)
    assert len(g) == 5 and g[-1] == -1.0 and g[-2] >= sde.t_min and bool((g[1:] < g[:-1]).all())
    assert torch.isfinite(ei.sample(mix.eps_model(sde), x, sde, method="tab1", grid=g)).all()
    # a budget smaller than the starting grids: the default grid, one solve
    g1, info = ei.optimize_grid(mix.eps_model(sde), x, sde, method="tab1", nfe=4, max_solves=1, return_info=True)
    assert info["solves"] == 1 and info["start"] == ei.INTEGRATORS["tab1"].default_grid
    default = ei.time_grid(sde, ei.INTEGRATORS["tab1"].default_grid, 4, sde.t_max, sde.t_min)
    torch.testing.assert_close(g1, default, rtol=1e-9, atol=1e-9)


def test_bad_arguments_are_named():
    sde = ei.VPSDE()
    mix = get_problem("gmm2d")
    x = mix.sample_marginal(sde, 1.0, 4)
    model = mix.eps_model(sde)
    with pytest.raises(ValueError, match="chooses its own steps or is stochastic"):
        ei.optimize_grid(model, x, sde, method="adaptive", nfe=5)
    with pytest.raises(ValueError, match="chooses its own steps or is stochastic"):
        ei.optimize_grid(model, x, sde, method="sddim", nfe=5)
    with pytest.raises(ValueError, match="nfe"):
        ei.optimize_grid(model, x, sde, nfe=0)
    with pytest.raises(ValueError, match="max_solves"):
        ei.optimize_grid(model, x, sde, nfe=5, max_solves=0)
    with pytest.raises(ValueError, match="reference must be a tensor shaped like x"):
        ei.optimize_grid(model, x, sde, nfe=5, reference=x[:2])


def test_save_and_load_round_trip_and_refusal(calibrated, tmp_path):
    sde, _, _, grid, _ = calibrated
    path = ei.save_grid(tmp_path / "grid.json", grid, model="gmm2d-exact", sde=sde, nfe=5)
    back = ei.load_grid(path, model="gmm2d-exact", sde=sde, nfe=5)
    torch.testing.assert_close(back, grid, rtol=0, atol=0)
    assert json.loads(path.read_text())["key"]["method"] == ei.sampling.default_method(5)[0]
    with pytest.raises(ValueError, match="nfe: saved 5, requested 10"):
        ei.load_grid(path, model="gmm2d-exact", sde=sde, nfe=10)
    with pytest.raises(ValueError, match="method: saved"):
        ei.load_grid(path, model="gmm2d-exact", sde=sde, method="tab3", nfe=5)
    with pytest.raises(ValueError, match="sde: saved"):
        ei.load_grid(path, model="gmm2d-exact", sde=ei.DiscreteVP.linear(beta_end=0.012), nfe=5)
    with pytest.raises(ValueError, match="model: saved"):
        ei.load_grid(path, model="another-model", sde=sde, nfe=5)
    with pytest.raises(ValueError, match="do not fit nfe"):
        ei.save_grid(tmp_path / "bad.json", grid[:-1], model="m", sde=sde, nfe=5)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a saved grid"):
        ei.load_grid(tmp_path / "junk.json", model="m", sde=sde, nfe=5)


def test_a_module_model_is_keyed_by_its_weights(tmp_path):
    sde = ei.VPSDE()
    net = torch.nn.Linear(2, 2)
    grid = ei.time_grid(sde, "uniform_logrho", 5, sde.t_max, sde.t_min)
    path = ei.save_grid(tmp_path / "g.json", grid, model=net, sde=sde, nfe=5)
    torch.testing.assert_close(ei.load_grid(path, model=net, sde=sde, nfe=5), grid)
    with torch.no_grad():
        net.weight.add_(1.0)
    with pytest.raises(ValueError, match="model: saved 'module:"):
        ei.load_grid(path, model=net, sde=sde, nfe=5)


def test_a_reference_with_a_nan_row_is_refused():
    """Issue 24: one NaN row made the loss NaN everywhere, and a grid came back with loss NaN."""
    sde = ei.VPSDE()
    mix = get_problem("gmm2d")
    x = mix.sample_marginal(sde, sde.t_max, 4, torch.Generator().manual_seed(0))
    ref = x.clone()
    ref[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"reference: rows \[2\] hold NaN or inf"):
        ei.optimize_grid(mix.eps_model(sde), x, sde, nfe=5, reference=ref, max_solves=5)


def test_loss_default_is_on_the_grid_solve_uses():
    """Issue 24: for EMS on a VE SDE solve() uses uniform_logrho (vp_or_logrho), but loss_default was computed on
    the class attribute's quadratic_t, overstating the gain."""
    from ei_toolkit.integrators.ems import _sde_tag

    sde = ei.VESDE()
    mix = get_problem("gmm2d")
    x = mix.sample_marginal(sde, sde.t_max, 8, torch.Generator().manual_seed(0))
    n = 9
    ends = sde.rho(torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64))
    lam = torch.linspace(-float(ends[0].log()), -float(ends[1].log()), n, dtype=torch.float64)
    st = ei.ModelStatistics(lam=lam, l=torch.zeros(n), s=torch.full((n,), -1.0), b=torch.zeros(n, 2), sde=_sde_tag(sde),
                            samples=1)
    method = ei.EMSAdams(st, 2)
    model = mix.eps_model(sde)
    ref = mix.reference(sde, x, sde.t_max, sde.t_min)
    _, info = ei.optimize_grid(model, x, sde, method=method, nfe=5, reference=ref, max_solves=4, return_info=True)
    assert info["default_grid"] == "uniform_logrho"
    out = ei.solve(model, x, sde, method=method, nfe=5).x  # no grid=: the default
    err = (out.double() - ref.double()).reshape(len(x), -1).pow(2).mean(1).sqrt()
    assert info["loss_default"] == pytest.approx(float(torch.log(err + 1e-12).mean()), rel=1e-9, abs=1e-12)


def test_a_grid_file_is_checked_against_its_digest_and_ends(tmp_path):
    """Issue 24: a grid whose ends were edited (999 -> 600) was accepted; parse errors were not wrapped."""
    sde = ei.DiscreteVP.linear()
    grid = ei.time_grid(sde, "uniform_logrho", 5, sde.t_max, sde.t0)
    path = ei.save_grid(tmp_path / "g.json", grid, model="m", sde=sde, method="logrhoab2", nfe=5)
    kw = {"model": "m", "sde": sde, "method": "logrhoab2", "nfe": 5}
    assert torch.equal(ei.load_grid(path, t_start=sde.t_max, t_end=sde.t0, **kw), grid)
    with pytest.raises(ValueError, match=r"runs from 999.0 to -1.0; t_end=0 requested"):
        ei.load_grid(path, t_end=0, **kw)
    doc = json.loads(path.read_text())
    doc["times"][0] = 600.0
    (tmp_path / "edited.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"edited\.json' was edited or is corrupt"):
        ei.load_grid(tmp_path / "edited.json", **kw)
    for name, content in (("deep.json", b"[" * 100_000), ("latin.json", b"\xff\xfe{}"),
                          ("big.json", b'{"times": [' + b"9" * 5000 + b"]}")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            ei.load_grid(tmp_path / name, **kw)
