"""Define your own linear SDE, inspect what was derived, and check that the transformed ODE
dy/drho = eps and the original probability-flow ODE reach the same point (torchdiffeq, dopri5).

Run: python examples/custom_sde.py
"""

import torch
import torchdiffeq

import ei_toolkit as ei

sde = ei.LinearSDE(drift="-(a + b*t**2) / 2", diffusion="sqrt(a + b*t**2)", t_max=1.0, a=0.5, b=15.0)
print(sde.describe())

# Gaussian data N(m, s^2) has an exact eps: x_t ~ N(alpha m, alpha^2 s^2 + sigma^2), eps = -sigma * score.
m, s = 1.0, 0.2


def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a, sig = sde.alpha(t).view(-1, 1), sde.sigma(t).view(-1, 1)
    return sig * (x - a * m) / (a**2 * s**2 + sig**2)


x_T = torch.randn(4, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * sde.sigma(sde.t_max)
ts = torch.tensor([sde.t_max, sde.t_min], dtype=torch.float64)
opts = dict(rtol=1e-10, atol=1e-10, method="dopri5")
x_t = torchdiffeq.odeint(ei.FlowODE(eps, sde, frame="t"), x_T, ts, options={"step_t": ts}, **opts)[-1]
rhos = sde.rho(ts)
rho_ode = ei.FlowODE(eps, sde, frame="rho")
y = torchdiffeq.odeint(rho_ode, rho_ode.encode(x_T, ts[0]), rhos, options={"step_t": rhos}, **opts)[-1]
print("x(t_min) from the t-ODE:  ", x_t.flatten().tolist())
print("x(t_min) from the rho-ODE:", (sde.alpha(ts[1]) * y).flatten().tolist())
