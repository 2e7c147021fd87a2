"""Black-box solvers on the transformed equations, and stochastic sampling quality.

A. DOPRI5 (torchdiffeq) in the t, rho and log-rho frames: tolerance sweep, NFE against RMS error to the
   exact ODE solution (Gaussian mixtures, exact eps); the NFE needed to reach RMS 1e-3 and 1e-4 in each
   frame, next to our multistep integrators (tab3 as in DEIS, and logrhoab2) at the same error.
B. Stochastic samplers: sliced Wasserstein distance to fresh data samples against NFE, for stochastic DDIM
   at several lambda and eta = 1, and diffusers DDIMScheduler (eta > 0) and DPMSolverMultistepScheduler
   (algorithm_type="sde-dpmsolver++"), all ending at the data (sigma = 0).

Run: python benchmarks/bench_blackbox.py (writes benchmarks/results/blackbox.md and blackbox.png).
"""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import torch

import ei_toolkit as ei
from ei_toolkit.testing import get_problem
from ei_toolkit.testing import sliced_wasserstein as _sliced_wasserstein

OUT = Path(__file__).parent / "results"
TOLS = [10.0 ** (-k / 2) for k in range(4, 21)]  # 1e-2 .. 1e-10
NFES = [5, 8, 10, 15, 20, 30, 40, 60, 80, 120, 160, 240]


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def nfe_to_reach(points: list[tuple[int, float]], target: float) -> float:
    """Smallest NFE reaching the target, interpolated in log-log between the bracketing runs."""
    pts = sorted(points)
    best = math.inf
    for (n0, e0), (n1, e1) in itertools.pairwise(pts):
        if e0 <= target:
            best = min(best, n0)
        elif e1 <= target and e1 < e0:
            f = (math.log(e0) - math.log(target)) / (math.log(e0) - math.log(e1))
            best = min(best, math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0))))
    if pts and pts[-1][1] <= target:
        best = min(best, pts[-1][0])
    return best


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor) -> float:
    return _sliced_wasserstein(a, b, n_proj=512)


def part_a(sdes: dict, problems: list[str], n: int = 256) -> tuple[list[str], dict]:
    lines = ["## A. NFE to reach an RMS error (DOPRI5 per frame vs our integrators)", "",
             "| SDE | problem | target RMS | DOPRI5 t | DOPRI5 rho | DOPRI5 log-rho | best frame / t | tab3 "
             "| logrhoab2 |",
             "|---|---|---|---|---|---|---|---|---|"]
    curves = {}
    for sname, sde in sdes.items():
        for pname in problems:
            prob = get_problem(pname)
            model = prob.eps_model(sde)
            x = prob.sample_marginal(sde, sde.t_max, n, torch.Generator().manual_seed(0))
            ref = prob.reference(sde, x, sde.t_max, sde.t_min, rtol=1e-12, atol=1e-12)
            res = {}
            for frame in ("t", "rho", "logrho"):
                pts = []
                for tol in TOLS:
                    try:
                        sol = ei.odeint(model, x, sde, rtol=tol, atol=tol, frame=frame, max_nfe=20000)
                        pts.append((sol.nfe, rms(sol.x, ref)))
                    except ei.adapters.NFEBudgetExceeded:
                        break
                res[f"DOPRI5 {frame}"] = pts
            for m in ("tab3", "logrhoab2"):
                res[m] = [(k, rms(ei.sample(model, x, sde, method=m, nfe=k), ref)) for k in NFES]
            curves[(sname, pname)] = res
            for target in (1e-3, 1e-4):
                need = {k: nfe_to_reach(v, target) for k, v in res.items()}
                frames = [need[f"DOPRI5 {f}"] for f in ("t", "rho", "logrho")]
                ratio = min(frames) / frames[0] if math.isfinite(frames[0]) else float("nan")
                fmt = lambda v: f"{v:.0f}" if math.isfinite(v) else "> budget"  # noqa: E731
                lines.append(f"| {sname} | {pname} | {target:.0e} | " + " | ".join(fmt(v) for v in frames)
                             + f" | {ratio:.2f} | {fmt(need['tab3'])} | {fmt(need['logrhoab2'])} |")
    return lines, curves


def diffusers_sample(kind: str, model, x: torch.Tensor, nfe: int, seed: int, **kw) -> torch.Tensor:
    import diffusers

    base = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02}
    if kind == "ddim":
        sched = diffusers.DDIMScheduler(**base, set_alpha_to_one=True, timestep_spacing="trailing")
    else:
        sched = diffusers.DPMSolverMultistepScheduler(**base, algorithm_type="sde-dpmsolver++",
                                                      final_sigmas_type="zero", **kw)
    sched.set_timesteps(nfe)
    g = torch.Generator().manual_seed(seed)
    y = x.float()
    for t in sched.timesteps:
        out = model(y, torch.full((len(y),), float(t)))
        y = sched.step(out, t, y, generator=g, **({"eta": kw["eta"]} if kind == "ddim" else {})).prev_sample
    return y.double()


def part_b(problems: list[str], n: int = 4000) -> tuple[list[str], dict]:
    sde = ei.DiscreteVP.linear()
    nfes = [10, 20, 50, 100, 200]
    lines = ["## B. Stochastic sampling: sliced Wasserstein distance to fresh data (lower is better)", "",
             f"{n} samples from exact x_999, sampled to the data (sigma = 0); 512 random projections. The floor "
             "is the distance between two fresh data sets of the same size.", ""]
    curves = {}
    for pname in problems:
        prob = get_problem(pname)
        model = prob.eps_model(sde)
        x = prob.sample_marginal(sde, 999.0, n, torch.Generator().manual_seed(1))
        data = prob.sample_data(n, torch.Generator().manual_seed(2))
        floor = sliced_wasserstein(prob.sample_data(n, torch.Generator().manual_seed(3)), data)
        res = {}
        for lam in (0.5, 1.0, 2.0):
            res[f"ei sddim lam={lam:g}"] = [sliced_wasserstein(ei.sample(
                model, x, sde, method="sddim", lam=lam, nfe=k, t_end=-1.0,
                generator=torch.Generator().manual_seed(4)), data) for k in nfes]
        res["ei sddim eta=1"] = [sliced_wasserstein(ei.sample(
            model, x, sde, method="sddim", eta=1.0, nfe=k, t_end=-1.0, generator=torch.Generator().manual_seed(4)),
            data) for k in nfes]
        res["ei logrhoab2 (ODE)"] = [sliced_wasserstein(ei.sample(model, x, sde, nfe=k, t_end=-1.0), data)
                                     for k in nfes]
        try:
            for eta in (0.5, 1.0):
                res[f"diffusers DDIM eta={eta:g}"] = [sliced_wasserstein(
                    diffusers_sample("ddim", model, x, k, 4, eta=eta), data) for k in nfes]
            for order in (1, 2):
                res[f"diffusers SDE-DPM++ order {order}"] = [sliced_wasserstein(
                    diffusers_sample("dpm", model, x, k, 4, solver_order=order), data) for k in nfes]
        except ImportError:
            pass
        curves[pname] = (nfes, res, floor)
        lines += [f"### {pname} (floor {floor:.4f})", "", "| sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                  "|---" * (len(nfes) + 1) + "|"]
        for k, v in res.items():
            lines.append(f"| {k} | " + " | ".join(f"{e:.4f}" for e in v) + " |")
        lines.append("")
    return lines, curves


def plot(curves_a: dict, curves_b: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    na, nb = len(curves_a), len(curves_b)
    fig, axes = plt.subplots(1, na + nb, figsize=(5 * (na + nb), 4.3), squeeze=False)
    for ax, ((sname, pname), res) in zip(axes[0], curves_a.items(), strict=False):
        for k, pts in res.items():
            if pts:
                ax.plot(*zip(*sorted(pts), strict=True), "-o" if "DOPRI5" in k else "-s", ms=3, label=k)
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="RMS error", title=f"{pname}, {sname}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    for ax, (pname, (nfes, res, floor)) in zip(axes[0][na:], curves_b.items(), strict=False):
        for k, v in res.items():
            ax.plot(nfes, v, "-o" if k.startswith("ei") else "--", ms=3, label=k)
        ax.axhline(floor, color="k", lw=0.8, ls=":", label="data-vs-data floor")
        ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="sliced Wasserstein", title=f"stochastic, {pname}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    start = time.perf_counter()
    sdes = {"VPSDE": ei.VPSDE(), "DDPM": ei.DiscreteVP.linear()}
    lines_a, ca = part_a(sdes, ["gmm2d", "gmm16"])
    lines_b, cb = part_b(["gmm2d", "gmm16"])
    text = "\n".join(["# Black-box solvers on the transformed ODE; stochastic sampling", "",
                      f"Command: `python benchmarks/bench_blackbox.py` ({time.perf_counter() - start:.0f} s). "
                      "DOPRI5 tolerance sweep rtol = atol = 1e-2 .. 1e-10; NFE to reach a target interpolated "
                      "log-log between the bracketing runs; 256 trajectories, error against dopri5 at 1e-12.", "",
                      *lines_a, "", *lines_b])
    OUT.mkdir(exist_ok=True)
    (OUT / "blackbox.md").write_text(text + "\n")
    plot(ca, cb, OUT / "blackbox.png")
    print(text)


if __name__ == "__main__":
    main()
