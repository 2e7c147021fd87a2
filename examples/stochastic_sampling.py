"""Stochastic DDIM (lambda > 0) and the torchsde adapter on one Brownian path.

Run: python examples/stochastic_sampling.py
"""

import torch

import ei_toolkit as ei
from ei_toolkit.testing import get_problem

sde = ei.DiscreteVP.linear()
problem = get_problem("gmm2d")
model = problem.eps_model(sde)
x = problem.sample_marginal(sde, 999.0, 2000, torch.Generator().manual_seed(0))
data = problem.sample_data(2000, torch.Generator().manual_seed(1))

# lambda = 0 is DDIM; lambda = 1 is the DDPM posterior; eta= is DDIM's spelling. To the data (t0 = -1).
for kw in ({"lam": 0.0}, {"lam": 1.0}, {"eta": 1.0}, {"lam": 2.0}):
    out = ei.sample(model, x, sde, method="sddim", nfe=100, t_end=-1.0, generator=torch.Generator().manual_seed(2),
                    **kw)
    print(f"sddim {kw}: sample mean {out.mean(0).tolist()}, std {out.std(0).tolist()}")
print(f"data:                  mean {data.mean(0).tolist()}, std {data.std(0).tolist()}")

# One Brownian path drives both a torchsde solve and stochastic DDIM (over s = -rho).
vp = ei.VPSDE()
model = problem.eps_model(vp)
x = problem.sample_marginal(vp, 0.5, 8, torch.Generator().manual_seed(3))
bm = ei.brownian_motion(x, vp, 0.5, 0.05, entropy=4)
fine = ei.sdeint(model, x, vp, lam=1.0, method="srk", steps=800, t_start=0.5, t_end=0.05, bm=bm)  # 8000 evaluations
for steps in (25, 100, 400):
    out = ei.sample(model, x, vp, method="sddim", lam=1.0, nfe=steps, t_start=0.5, t_end=0.05, brownian=bm)
    err = (out - fine.x).pow(2).mean().sqrt()
    print(f"sddim with {steps:3d} steps vs torchsde srk on the same path: RMS {err:.1e}")
