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
    """A multistep method in t; a grid ending at the data (rho = 0) keeps its last step from t_min."""
    sde = ei.DiscreteVP.linear()
    mix = get_problem("gmm2d")
    x = mix.sample_marginal(sde, sde.t_max, 8, torch.Generator().manual_seed(3))
    g = ei.optimize_grid(mix.eps_model(sde), x, sde, method="tab1", nfe=4, t_end=-1.0, max_solves=12)
    assert len(g) == 5 and g[-1] == -1.0 and g[-2] == sde.t_min and bool((g[1:] < g[:-1]).all())
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
