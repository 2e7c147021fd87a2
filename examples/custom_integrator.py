"""Adding an integrator takes one small file: here, two of them.

1. A Runge-Kutta method on dy/drho = eps is a tableau (validated against the order conditions) plus a name.
2. A multistep method is a plan: float64 coefficients psi_i and weights w_ij of
   x_{i+1} = psi_i x_i + sum_j w_ij eps_{i-j}, computed once per grid. Here: the two-step exponential
   Adams-Bashforth method in rho written out by hand (the linear interpolant of eps in rho, integrated
   exactly), which must agree with the built-in ``rhoab1``.

Run: python examples/custom_integrator.py
"""

import torch

import ei_toolkit as ei
from ei_toolkit.integrators import ButcherTableau, Integrator, MultistepPlan, RhoRungeKutta

# 1. Ralston's second-order method (minimum error bound among 2-stage explicit RK methods).
ralston = ButcherTableau(a=((), (2 / 3,)), b=(1 / 4, 3 / 4), c=(0.0, 2 / 3), order=2)
RALSTON = RhoRungeKutta("rhork-ralston", ralston)


# 2. AB2 in rho, by hand.
class RhoAB2ByHand(Integrator):
    """Exponential Adams-Bashforth, 2 points, in rho; order 2."""

    name = "rhoab2-by-hand"
    order = 2
    default_grid = "uniform_logrho"

    def plan(self, sde: ei.LinearSDE, grid: torch.Tensor) -> MultistepPlan:
        t = grid.double()
        rho, alpha = sde.rho(t), sde.alpha(t)
        h = rho[1:] - rho[:-1]  # negative: rho decreases
        weights = []
        for i in range(len(h)):
            a_h = (alpha[i + 1] * h[i]).item()
            if i == 0:
                weights.append((a_h,))  # warm start: DDIM
            else:
                r = (h[i] / (rho[i] - rho[i - 1])).item()  # this step over the last
                weights.append((a_h * (1 + r / 2), -a_h * r / 2))
        return MultistepPlan(grid=t, psi=tuple(sde.psi(t[1:], t[:-1]).tolist()), weights=tuple(weights),
                             eval_times=t[:-1].clone())


BY_HAND = RhoAB2ByHand()

if __name__ == "__main__":
    ei.register(RALSTON)
    ei.register(BY_HAND)
    sde = ei.VPSDE()
    from ei_toolkit.testing import get_problem

    problem = get_problem("gmm2d")
    model = problem.eps_model(sde)
    x = problem.sample_marginal(sde, sde.t_max, 256, torch.Generator().manual_seed(0))
    ref = problem.reference(sde, x, sde.t_max, sde.t_min)
    # the same grid for every method: only the integrator differs
    for method in ("rhork-ralston", "rhork-heun", "rhoab2-by-hand", "rhoab1"):
        out = ei.sample(model, x, sde, method=method, nfe=20, grid="uniform_logrho")
        print(f"{method:16s} NFE 20, uniform log-rho grid: RMS error {(out - ref).pow(2).mean().sqrt():.3e}")
    a = ei.sample(model, x, sde, method="rhoab2-by-hand", nfe=20, grid="uniform_logrho")
    b = ei.sample(model, x, sde, method="rhoab1", nfe=20, grid="uniform_logrho")
    print(f"rhoab2-by-hand vs built-in rhoab1: max difference {(a - b).abs().max():.1e} (the same method)")
