"""Your own non-isotropic diffusion: a coupled two-channel process with a time-dependent coupling, defined in
sympy, derived numerically (Psi by ODE, since F varies with t), and sampled with gDDIM / matrix tAB.

Channel 0 carries the data, channel 1 an auxiliary variable started from N(0, 0.1) that feeds back into it:
    F(t) = [[-a/2, b t], [-b t, -c]],   G = diag(sqrt(a), sqrt(2 c)).
Run: python examples/custom_matrix_sde.py
"""

import numpy as np
import torch

import ei_toolkit as ei
from ei_toolkit.sde.matrix import mixture_eps, reference_flow
from ei_toolkit.testing import get_problem

sde = ei.MatrixLinearSDE(drift=[["-a/2", "b*t"], ["-b*t", "-c"]], diffusion=[["sqrt(a)", "0"], ["0", "sqrt(2*c)"]],
                         sigma_init=[[0.0, 0.0], [0.0, 0.1]], t_max=1.0, t_min=1e-2, a=12.0, b=3.0, c=2.0)
print(sde.how)
print("Sigma(1) =", sde.sigma_matrix(1.0).round(4).tolist())

problem = get_problem("gmm2d")  # the data: a 2-D Gaussian mixture in channel 0
model = mixture_eps(sde, problem.means, problem.stds * 3, problem.weights)  # its exact eps = -R^T score
z = torch.randn(64, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
u1 = torch.einsum("ab,nbd->nad", torch.as_tensor(np.linalg.cholesky(sde.sigma_matrix(1.0))), z)  # ~ p_1
exact = reference_flow(sde, model, u1, 1.0, sde.t_min, rtol=1e-10)
for method in ("ddim", "tab1", "tab2", "tab3"):
    for nfe in (10, 20, 40):
        out = ei.sample(model, u1, sde, method=method, nfe=nfe)
        print(f"{method:5s} NFE {nfe:3d}: max error {(out - exact).abs().max():.2e}")
