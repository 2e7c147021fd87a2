"""Convergence order of every registered deterministic method, parametrized from its declared order, through the
public helper ``ei_toolkit.testing.convergence_order`` (docs/math.md section 8): a 2-D Gaussian mixture (exact eps)
under the VP SDE from t = 1 to t = 0.1 against a DOP853 solution at tolerance 1e-13, multistep methods from exact
history. The fitted slope must reach the declared order (within 0.3) and stay below order + 1. Matrix-capable
methods are also checked on CLD (gDDIM)."""

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.integrators import ExponentialAdams, Integrator
from ei_toolkit.testing import convergence_order

ORDERED = [n for n, m in ei.INTEGRATORS.items() if isinstance(m, Integrator) and not m.stochastic]
MATRIX = [n for n in ORDERED if ei.INTEGRATORS[n].matrix]


@pytest.mark.parametrize("name", ORDERED)
def test_declared_order_is_reached(name):
    convergence_order(name).check()


@pytest.mark.parametrize("name", ["torchdiffeq:midpoint", "torchdiffeq:rk4"])
def test_black_box_fixed_grid_methods_reach_their_order(name):
    convergence_order(name, steps=(32, 64, 128, 256)).check()


@pytest.mark.parametrize("name", MATRIX)
def test_matrix_methods_reach_their_order_on_cld(name):
    convergence_order(name, sde=ei.CLD()).check()


@pytest.mark.parametrize("name", ["tab2", "rhoab3", "logrhoab2"])
def test_lower_order_warm_start_still_converges(name):
    """Without exact history the first steps use fewer points: the error still falls at least quadratically (the
    order-1 first step costs a local O(h^2))."""
    r = convergence_order(name, exact_start=False, steps=(64, 128, 256))
    assert r.fitted >= 1.9, r


def test_a_user_integrator_is_checked_without_editing_the_package():
    """A method that declares a wrong order fails with a message naming declared and fitted order."""

    class Overclaimed(ExponentialAdams):
        pass

    wrong = Overclaimed("overclaimed-ab2", 2, "rho", "uniform_logrho")
    wrong.order = 3
    with pytest.raises(AssertionError, match=r"declared order 3, fitted order \d\.\d\d"):
        convergence_order(wrong).check()
    assert torch.isfinite(torch.tensor(convergence_order(Overclaimed("ab1", 1, "rho", "quadratic_t")).fitted))
