"""x0-logrhoab{1,2}-unipc[-bh1] are diffusers' UniPCMultistepScheduler (bh2 / bh1, orders 2 / 3) step for step; and
x0-logrhoab1-unipc's one difference from
x0-logrhoab1-mid-pc-lof (the corrector's two-point rule and order after a lowered step) is real: the exact corrector
is a different method. The diffusers driver is benchmarks/peers.py's, which runs the scheduler on our grid."""

import sys
from pathlib import Path

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.integrators.exponential_adams import ExponentialAdams
from ei_toolkit.testing import get_problem

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # `import peers` as the benchmarks do

PROBLEM = get_problem("gmm2d")


@pytest.mark.parametrize("sde", [ei.DiscreteVP.linear(), ei.EDM()], ids=["ddpm", "edm"])
@pytest.mark.parametrize(("grid", "peer_grid"), [("quadratic_t", "time-quadratic"), ("uniform_logrho", "logSNR"),
                                                 ("karras", "karras")])
@pytest.mark.parametrize("nfe", [2, 3, 5, 10, 16])
@pytest.mark.parametrize(("method", "order", "bh"), [
    ("x0-logrhoab1-unipc", 2, "bh2"), ("x0-logrhoab1-unipc-bh1", 2, "bh1"),
    ("x0-logrhoab2-unipc", 3, "bh2"), ("x0-logrhoab2-unipc-bh1", 3, "bh1")])
def test_unipc_equals_diffusers_step_for_step(sde, grid, peer_grid, nfe, method, order, bh):
    """Both run in float64 on the same times: equal to round-off (each of the nfe steps adds a few ulps of the
    state, |x| ~ sigma_max, relative 1e-12 is 1e3 ulps)."""
    pytest.importorskip("diffusers")
    from peers import diffusers_peer

    x = PROBLEM.sample_marginal(sde, sde.t_max, 32, torch.Generator().manual_seed(0))
    model = PROBLEM.eps_model(sde)
    out, _, used = diffusers_peer("UniPCMultistepScheduler", peer_grid, order, solver_type=bh)(model, x, sde, nfe)
    ours = ei.sample(model, x, sde, method=method, nfe=nfe, grid=grid)
    assert used == nfe
    torch.testing.assert_close(ours, out, rtol=1e-11, atol=1e-11 * float(x.abs().max()))


def test_exact_corrector_is_another_method():
    """Same predictor and lowered final orders, exact corrector (x0-logrhoab1-mid-pc-lof): not the same result (a
    difference 1e5 times the identity's tolerance above; 9e-4 measured)."""
    sde = ei.DiscreteVP.linear()
    x = PROBLEM.sample_marginal(sde, sde.t_max, 32, torch.Generator().manual_seed(0))
    model = PROBLEM.eps_model(sde)
    a = ei.sample(model, x, sde, method="x0-logrhoab1-unipc", nfe=5, grid="quadratic_t")
    b = ei.sample(model, x, sde, method="x0-logrhoab1-mid-pc-lof", nfe=5, grid="quadratic_t")
    assert (a - b).abs().max() > 1e-6


def test_rules_are_checked():
    with pytest.raises(ValueError, match="corrector_rule"):
        ExponentialAdams("bad", 2, "logrho", "quadratic_t", corrector=True, corrector_rule="bh9")
    with pytest.raises(ValueError, match="data prediction in log rho"):
        ExponentialAdams("bad", 2, "logrho", "quadratic_t", target="eps", corrector=True, corrector_rule="bh1")
    with pytest.raises(ValueError, match="data prediction in log rho"):
        ExponentialAdams("bad", 2, "t", "quadratic_t", target="x0", rule="bh2")
