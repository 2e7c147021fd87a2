"""Per-step sampler overhead, measured side by side in one run (medians of interleaved repeats):

* ei_toolkit ``sample(method="tab3")`` with a trivial model (0.1 * x) on a 64x3x64x64 float32 batch;
* diffusers ``DEISMultistepScheduler`` (order 3) driving the same model;
* a bare loop doing the same tensor reads and writes as a tab3 step (x * psi + 4 weighted eps), with
  precomputed Python-float coefficients;
* the model calls alone, which are subtracted from each total.

Also the coefficient set-up of tab3 on a 1000-step grid (plan computation, uncached).
Run: python benchmarks/bench_overhead.py (writes benchmarks/results/overhead.md).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

import ei_toolkit as ei
from ei_toolkit.integrators import plan_for

STEPS = 20
REPEATS = 41


def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.1 * x


def main() -> None:
    torch.manual_seed(0)
    sde = ei.DiscreteVP.linear()
    x = torch.randn(64, 3, 64, 64)
    integ = ei.INTEGRATORS["tab3"]
    grid = ei.time_grid(sde, integ.default_grid, STEPS, sde.t_max, sde.t_min)
    plan = plan_for(integ, sde, grid)
    psi, weights = plan.psi, plan.weights
    tb = torch.zeros(64)

    def ours() -> None:
        ei.sample(model, x, sde, method="tab3", nfe=STEPS)

    def model_only() -> None:
        for _ in range(STEPS):
            model(x, tb)

    def bare() -> None:
        y, hist = x, []
        for i in range(STEPS):
            hist.append(model(y, tb))
            hist = hist[-4:]
            w = weights[i]
            out = y * psi[i]
            for j in range(len(w)):
                out.add_(hist[-1 - j], alpha=w[j])
            y = out

    try:
        from diffusers import DEISMultistepScheduler

        sched = DEISMultistepScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, solver_order=3)

        def diffusers_deis() -> None:
            sched.set_timesteps(STEPS)
            y = x
            for t in sched.timesteps:
                y = sched.step(model(y, tb), t, y).prev_sample
    except ImportError:
        diffusers_deis = None

    cases = {"ei_toolkit tab3": ours, "bare loop": bare, "model only": model_only}
    if diffusers_deis is not None:
        cases["diffusers DEISMultistep(3)"] = diffusers_deis
    for f in cases.values():  # warm up (plan cache, allocator)
        f()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(REPEATS):
        for k, f in cases.items():
            s = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - s)
    med = {k: statistics.median(v) for k, v in times.items()}
    per_step = {k: (med[k] - med["model only"]) / STEPS for k in cases if k != "model only"}

    setup = {}
    for name, s in (("DiscreteVP (1000 steps)", sde), ("VPSDE", ei.VPSDE())):
        g = ei.time_grid(s, "quadratic_t", 1000, s.t_max, s.t_min)
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            integ.plan(s, g)
            runs.append(time.perf_counter() - t0)
        setup[name] = statistics.median(runs)

    lines = ["# Sampler overhead", "",
             f"CPU, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads); batch "
             f"64x3x64x64 float32, {STEPS} steps, trivial model 0.1 * x; median of {REPEATS} interleaved repeats. "
             "Command: `python benchmarks/bench_overhead.py`.", "",
             "| sampler | total (ms) | per step outside the model (ms) |", "|---|---|---|"]
    for k in cases:
        extra = f"{1e3 * per_step[k]:.3f}" if k in per_step else "-"
        lines.append(f"| {k} | {1e3 * med[k]:.1f} | {extra} |")
    lines += ["", f"- ei_toolkit / bare loop, per step outside the model: "
              f"{per_step['ei_toolkit tab3'] / per_step['bare loop']:.2f}"]
    if "diffusers DEISMultistep(3)" in per_step:
        lines.append(f"- ei_toolkit / diffusers DEIS, per step outside the model: "
                     f"{per_step['ei_toolkit tab3'] / per_step['diffusers DEISMultistep(3)']:.2f}")
    lines += ["", "## Coefficient set-up of tab3 on a 1000-step grid (uncached, median of 5)", "",
              "| SDE | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in setup.items()]
    text = "\n".join(lines) + "\n"
    out = Path(__file__).parent / "results" / "overhead.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
