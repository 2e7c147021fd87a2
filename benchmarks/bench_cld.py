"""CLD (critically-damped Langevin diffusion) with a 2-D Gaussian mixture in x (exact score): error against a
DOP853 solution (rtol 1e-10) of the probability-flow ODE from t = 1 to t = 0.1 (and to t_min = 1e-3) against
NFE, for gDDIM and the matrix tAB methods, the naive Euler method on the original ODE, and DOPRI5
(torchdiffeq) in the original and the transformed frame.

Run: python benchmarks/bench_cld.py (writes benchmarks/results/cld.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # see tests/conftest.py: BLAS/OpenMP oversubscription

import itertools
import time
from pathlib import Path

import numpy as np
import torch
import torchdiffeq

import ei_toolkit as ei
from ei_toolkit.sde.matrix import apply_block
from ei_toolkit.testing import GaussianMixture, get_problem

NFES = [10, 20, 40, 80, 160]


def euler_original(model, u: torch.Tensor, sde, nfe: int, t_end: float) -> torch.Tensor:
    g = ei.time_grid(sde, "quadratic_t", nfe, sde.t_max, t_end).tolist()
    for a, b in itertools.pairwise(g):
        eps = model(u, torch.full((len(u),), a, dtype=u.dtype))
        kernel = 0.5 * sde.GGt(a) @ np.linalg.inv(sde.factor(a)).T
        u = u + (b - a) * (apply_block(sde.F(a), u) + apply_block(kernel, eps))
    return u


def main() -> None:
    start = time.perf_counter()
    sde = ei.CLD()
    prob = get_problem("gmm2d")
    lines = ["# CLD: error against NFE", "",
             "Critically-damped Langevin diffusion (beta 4, M 0.25, gamma 0.04), 2-D Gaussian mixture (the gmm2d "
             "means, stds x3) in x, exact eps; 32 trajectories from exact samples of u_1; max-abs error against "
             "DOP853 at rtol 1e-10. Grid quadratic in t. Command: `python benchmarks/bench_cld.py`.", ""]
    for t_end in (0.1, sde.t_min):
        mix = GaussianMixture(means=prob.means, stds=prob.stds * 3, weights=prob.weights)
        model = mix.eps_model(sde)
        u1 = mix.sample_marginal(sde, 1.0, 32, torch.Generator().manual_seed(0))
        ref = mix.reference(sde, u1, 1.0, t_end, rtol=1e-10)
        rows = {}
        for name in ("ddim", "tab1", "tab2", "tab3"):
            rows[f"{name} (gDDIM{' + ' + name if name != 'ddim' else ''})"] = [
                (n, (ei.sample(model, u1, sde, method=name, nfe=n, t_end=t_end) - ref).abs().max().item())
                for n in NFES]
        rows["Euler, original ODE"] = [(n, (euler_original(model, u1, sde, n, t_end) - ref).abs().max().item())
                                       for n in NFES]
        for frame in ("t", "y"):
            pts = []
            for tol in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
                f = ei.FlowODE(model, sde, frame)
                ts = torch.tensor([1.0, t_end], dtype=torch.float64)
                y = torchdiffeq.odeint(f, f.encode(u1, 1.0), ts, rtol=tol, atol=tol, options={"step_t": ts})[-1]
                pts.append((f.nfe, (f.decode(y, t_end) - ref).abs().max().item()))
            rows[f"DOPRI5, {'original' if frame == 't' else 'transformed (y = Psi(0,t) u)'} frame"] = pts
        lines += [f"## t from 1 to {t_end:g}", "", "| method | (NFE, max error) ... |", "|---|---|"]
        for k, v in rows.items():
            lines.append(f"| {k} | " + ", ".join(f"({n}, {e:.1e})" for n, e in v) + " |")
        lines.append("")
    lines.append(f"Run time {time.perf_counter() - start:.0f} s.")
    text = "\n".join(lines) + "\n"
    out = Path(__file__).parent / "results" / "cld.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
