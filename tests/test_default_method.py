"""sample()'s default depends on the budget and the data size (issues 11 and 26: chosen by benchmarks/choose_default.py
on the mixtures and the trained networks, see benchmarks/results/default.md): below sampling.HIGH_DIM elements per
sample x0-logrhoab1-unipc up to nfe=7 and x0-logrhoab1-mid-pc-lof up to 14 on quadratic_t (uniform_logrho for VE /
EDM), x0-logrhoab2-unipc-bh1 beyond on uniform_logrho; at or above it DEFAULTS_BY_NFE_HIGH_DIM."""

import ast
from pathlib import Path

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit import sampling
from ei_toolkit.sampling import default_method
from ei_toolkit.testing import get_problem

SDE = ei.VPSDE()
PROBLEM = get_problem("gmm2d")
DEFAULT_MD = Path(__file__).parents[1] / "benchmarks" / "results" / "default.md"


@pytest.mark.parametrize(("nfe", "sde", "dim", "want"), [
    (1, SDE, None, ("x0-logrhoab1-unipc", "quadratic_t")), (None, SDE, 2, ("x0-logrhoab1-mid-pc-lof", "quadratic_t")),
    (7, SDE, 511, ("x0-logrhoab1-unipc", "quadratic_t")),
    (14, ei.DiscreteVP.linear(), 64, ("x0-logrhoab1-mid-pc-lof", "quadratic_t")),
    (10, ei.EDM(), None, ("x0-logrhoab1-mid-pc-lof", "uniform_logrho")),  # t is a noise level: no time-quadratic grid
    (15, SDE, None, ("x0-logrhoab2-unipc-bh1", "uniform_logrho")),
    (1000, ei.EDM(), None, ("x0-logrhoab2-unipc-bh1", "uniform_logrho")),
    (5, SDE, 512, ("logrhoab1-mid", "karras")), (10, SDE, 768, ("x0-logrhoab1-mid-pc", "uniform_logrho")),
    (20, ei.EDM(), 3 * 64 * 64, ("x0-logrhoab2-unipc", "uniform_logrho")),
])
def test_default_method_by_nfe_and_data_size(nfe, sde, dim, want):
    assert default_method(nfe, sde=sde, dim=dim) == want


def test_sample_takes_the_data_size_from_x():
    """The same budget and model: 2-element draws get the low-dimensional default, 768-element ones (16 x 16 RGB) the
    high-dimensional one; generate() reads the size from its shape."""
    for shape, table in (((2,), sampling.DEFAULTS_BY_NFE), ((3, 16, 16), sampling.DEFAULTS_BY_NFE_HIGH_DIM)):
        x = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        sol = ei.solve(lambda x, t: 0.1 * x, x, SDE, nfe=10)
        want = next((m, g) for top, m, g in table if top is None or top >= 10)
        assert (sol.stats["method"], sol.grid) == (want[0], "quadratic_t" if want[1] == "vp_or_logrho" else want[1])
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        default_method(10, dim=0)


@pytest.mark.parametrize(("label", "table"), [("unguided", "DEFAULTS_BY_NFE"), ("guided", "GUIDED_DEFAULTS_BY_NFE"),
                                             ("unguided-high", "DEFAULTS_BY_NFE_HIGH_DIM")])
def test_the_tables_are_the_rules_picks(label, table):
    """benchmarks/results/default.md states the rule's picks per group; the code's tables hold them (the guided one up
    to nfe=20, where its measurements end)."""
    line = next(ln for ln in DEFAULT_MD.read_text().splitlines() if ln.startswith(f"- {label}: "))
    picks = [(top, m, g) for top, m, g in ast.literal_eval(line.split(": ", 1)[1])]
    ours = [(top, m, g) for top, m, g in getattr(sampling, table)]
    if label == "guided":
        picks[-1] = (sampling.GUIDED_UP_TO_NFE, *picks[-1][1:])
    assert ours == picks


@pytest.mark.parametrize("nfe", [5, 10, 30, 60])
def test_sample_without_a_method_runs_the_default_for_its_nfe(nfe):
    model = PROBLEM.eps_model(SDE)
    x = PROBLEM.sample_marginal(SDE, SDE.t_max, 4, torch.Generator().manual_seed(0))
    sol = ei.solve(model, x, SDE, nfe=nfe)
    name, grid = default_method(nfe)
    assert sol.stats["method"] == name and sol.stats["grid"] == grid
    torch.testing.assert_close(sol.x, ei.sample(model, x, SDE, method=name, grid=grid, nfe=nfe), rtol=0, atol=0)


def test_an_explicit_grid_without_a_method_chooses_by_its_steps():
    model = PROBLEM.eps_model(SDE)
    x = PROBLEM.sample_marginal(SDE, SDE.t_max, 4, torch.Generator().manual_seed(0))
    grid = ei.time_grid(SDE, "karras", 30, SDE.t_max, SDE.t_min)
    sol = ei.solve(model, x, SDE, grid=grid)
    assert sol.stats["method"] == "x0-logrhoab2-unipc-bh1"
    torch.testing.assert_close(sol.x, ei.sample(model, x, SDE, method="x0-logrhoab2-unipc-bh1", grid=grid), rtol=0,
                               atol=0)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_a_bad_nfe_is_reported_by_name(bad):
    with pytest.raises((TypeError, ValueError), match="nfe"):
        default_method(bad)


@pytest.mark.parametrize(("scale", "nfe", "sde", "want"), [
    (4.0, 5, ei.DiscreteVP.linear(), ("euler", "quadratic_t")),
    (4.0, 10, ei.DiscreteVP.linear(), ("x0-logrhoab1-mid-lof", "quadratic_t")),
    (8.0, 20, SDE, ("x0-logrhoab1-mid-pc", "uniform_logrho")),
    (4.0, 10, ei.EDM(), ("x0-logrhoab1-mid-lof", "uniform_logrho")),  # t is a noise level: no time-quadratic grid
    (2.0, 10, SDE, ("x0-logrhoab1-mid-pc-lof", "quadratic_t")),  # mild guidance: the unguided default holds
    (8.0, 30, SDE, ("x0-logrhoab2-unipc-bh1", "uniform_logrho")),  # beyond the guided measurements: unguided
])
def test_default_method_under_guidance(scale, nfe, sde, want):
    assert default_method(nfe, guidance_scale=scale, sde=sde) == want


def test_a_guided_model_gets_the_guided_default():
    """classifier_free_guidance's model declares its scale; solve() without a method reads it."""
    sde = ei.DiscreteVP.linear()

    def conditional(x, t, c):  # a toy conditional eps model: its guided form is still an eps model
        return 0.1 * x + 0.01 * c[:, None].to(x.dtype)

    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.arange(4)
    for scale, want in ((5.0, ("x0-logrhoab1-mid-lof", "quadratic_t")), (1.0, default_method(10))):
        model = ei.diffusion.classifier_free_guidance(conditional, labels, torch.zeros(4, dtype=torch.long), scale)
        assert model.guidance_scale == scale
        sol = ei.solve(model, x, sde, nfe=10)
        assert (sol.stats["method"], sol.stats["grid"]) == want
        torch.testing.assert_close(sol.x, ei.sample(model, x, sde, method=want[0], grid=want[1], nfe=10), rtol=0,
                                   atol=0)


def test_a_bad_guidance_scale_is_reported_by_name():
    with pytest.raises(ValueError, match="guidance_scale"):
        default_method(10, guidance_scale=float("nan"))
