"""DOPRI5 on the original ODE and on the transformed ODE, against a 10-step exponential integrator.

Run: python examples/compare_dopri5.py
"""

import torch
import torchdiffeq

import ei_toolkit as ei
from ei_toolkit.testing import get_problem

sde = ei.VPSDE()
problem = get_problem("gmm16")  # a 16-d Gaussian mixture: its eps is exact
model = problem.eps_model(sde)
x = problem.sample_marginal(sde, sde.t_max, 256, torch.Generator().manual_seed(0))
exact = problem.reference(sde, x, sde.t_max, sde.t_min, rtol=1e-12, atol=1e-12)


def rms(a: torch.Tensor) -> float:
    return (a - exact).pow(2).mean().sqrt().item()


# 1. One call: any torchdiffeq method, in any frame; the NFE is counted.
for frame in ("t", "rho", "logrho"):
    sol = ei.odeint(model, x, sde, method="dopri5", rtol=1e-4, atol=1e-4, frame=frame)
    print(f"dopri5, {frame:>6} frame: NFE {sol.nfe:4d}, RMS error {rms(sol.x):.1e}")

# 2. The raw torchdiffeq-style function, for your own torchdiffeq calls (odeint_adjoint works too).
func = ei.FlowODE(model, sde, frame="logrho")
taus = func.tau(torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64))
y = torchdiffeq.odeint(func, func.encode(x, sde.t_max), taus, method="dopri5", rtol=1e-4, atol=1e-4,
                       options={"step_t": taus})[-1]
print(f"torchdiffeq.odeint(FlowODE): NFE {func.nfe:4d}, RMS error {rms(func.decode(y, sde.t_min)):.1e}")

# 3. The exponential integrators at a fixed budget.
for method in ("tab3", "logrhoab2"):
    print(f"{method:>9}, NFE   10: RMS error {rms(ei.sample(model, x, sde, method=method, nfe=10)):.1e}")
