"""Your own non-isotropic diffusion: a coupled two-channel process with a time-dependent coupling, defined in
sympy, derived numerically (Psi by ODE, since F varies with t), and sampled with gDDIM / matrix tAB.

Channel 0 carries the data, channel 1 an auxiliary variable started from N(0, 0.1) that feeds back into it:
    F(t) = [[-a/2, b t], [-b t, -c]],   G = diag(sqrt(a), sqrt(2 c)).
Run: python examples/custom_matrix_sde.py
"""

import torch

import ei_toolkit as ei
from ei_toolkit.testing import GaussianMixture, get_problem

sde = ei.MatrixLinearSDE(drift=[["-a/2", "b*t"], ["-b*t", "-c"]], diffusion=[["sqrt(a)", "0"], ["0", "sqrt(2*c)"]],
                         sigma_init=[[0.0, 0.0], [0.0, 0.1]], t_max=1.0, t_min=1e-2, a=12.0, b=3.0, c=2.0)
print(sde.how)
print("Sigma(1) =", sde.sigma_matrix(1.0).round(4).tolist())

gmm = get_problem("gmm2d")  # the data: a 2-D Gaussian mixture (widened) in channel 0
problem = GaussianMixture(means=gmm.means, stds=gmm.stds * 3, weights=gmm.weights)
model = problem.eps_model(sde)  # its exact eps = -R^T score
u1 = problem.sample_marginal(sde, 1.0, 64, torch.Generator().manual_seed(0))  # exact samples of u_1
exact = problem.reference(sde, u1, 1.0, sde.t_min, rtol=1e-10)
for method in ("ddim", "tab1", "tab2", "tab3"):
    for nfe in (10, 20, 40):
        out = ei.sample(model, u1, sde, method=method, nfe=nfe)
        print(f"{method:5s} NFE {nfe:3d}: max error {(out - exact).abs().max():.2e}")
