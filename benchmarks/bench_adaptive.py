"""Adaptive step-size control (method="adaptive") against torchdiffeq's DOPRI5 in its best frame.

For each mixture of benchmarks/bench_accuracy.py (2-d w0.1, 16-d w0.15, 64-d w0.03, 256-d w0.02) under the DDPM
linear schedule (t = 999 -> 0), 128 exact draws at t_max (seed 0) are solved as one batch, sweeping rtol = atol
over 1e-2 .. 1e-7 (half decades) for ours and 1e-2 .. 1e-8 for DOPRI5 in each frame (t, rho, log rho; through
``ei.odeint``, as ``method="torchdiffeq:dopri5"`` does). The figure is the median over trajectories of the
per-trajectory RMS error to the ODE solution (DOP853, rtol = atol = 1e-10, log-rho frame); the NFE needed to reach
1e-3 and 1e-4 is interpolated log-log between the bracketing runs of the sweep (the fewest over the sweep).

Run: python benchmarks/bench_adaptive.py [--mixtures ...] (writes benchmarks/results/adaptive.md).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from bench_accuracy import MIXTURES, SDES, median_error, start_and_reference
from bench_blackbox import nfe_to_reach

import ei_toolkit as ei

OUT = Path(__file__).parent / "results"
OURS = [10.0 ** (-k / 2) for k in range(4, 15)]  # 1e-2 .. 1e-7
DOPRI = [10.0 ** (-k / 2) for k in range(4, 17)]  # 1e-2 .. 1e-8
TARGETS = (1e-3, 1e-4)
CONFIGS = {  # label -> options besides rtol/atol
    "adaptive (default: order 4, x0, corrector)": {},
    "adaptive order 3": {"order": 3},
    "adaptive eps form": {"form": "eps"},
    "adaptive without corrector": {"corrector": False},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sde", default="ddpm-linear", choices=sorted(SDES))
    ap.add_argument("--mixtures", nargs="*", default=list(MIXTURES))
    ap.add_argument("--n", type=int, default=128)
    args = ap.parse_args()
    start = time.perf_counter()
    sde = SDES[args.sde]()
    table, sweeps = [], []
    for mname in args.mixtures:
        mix = MIXTURES[mname]()
        model = mix.eps_model(sde)
        x, ref = start_and_reference(args.sde, sde, mname, mix, args.n, 0)
        curves: dict[str, list[tuple[int, float]]] = {}
        stats: dict[str, list[str]] = {}
        for label, extra in CONFIGS.items():
            curves[label], stats[label] = [], []
            for tol in OURS:
                sol = ei.solve(model, x, sde, method="adaptive", options={"rtol": tol, "atol": tol, **extra})
                curves[label].append((sol.nfe, median_error(sol.x, ref)))
                stats[label].append(f"{tol:.0e}: {sol.nfe} ({sol.stats['rejected']} rej.)")
        for frame in ("t", "rho", "logrho"):
            label = f"DOPRI5 {frame}"
            curves[label], stats[label] = [], []
            for tol in DOPRI:
                try:
                    sol = ei.odeint(model, x, sde, method="dopri5", rtol=tol, atol=tol, frame=frame, max_nfe=20000)
                except ei.NFEBudgetExceeded:
                    break
                curves[label].append((sol.nfe, median_error(sol.x, ref)))
                stats[label].append(f"{tol:.0e}: {sol.nfe}")
        problem = f"{args.sde}/{mname}"
        for target in TARGETS:
            need = {k: nfe_to_reach(v, target) for k, v in curves.items()}
            frames = {f: need[f"DOPRI5 {f}"] for f in ("t", "rho", "logrho")}
            best_frame = min(frames, key=frames.__getitem__)
            ours = need["adaptive (default: order 4, x0, corrector)"]
            table.append((problem, target, need, best_frame, frames[best_frame], ours))
            print(f"{problem} {target:.0e}: adaptive {ours:.1f}, DOPRI5 {best_frame} {frames[best_frame]:.1f} "
                  f"({ours / frames[best_frame]:.2f}x)  [{time.perf_counter() - start:.0f} s]", flush=True)
        sweeps.append((problem, curves, stats))
    took = time.perf_counter() - start
    labels = list(CONFIGS)
    lines = [
        "# Adaptive step-size control against DOPRI5",
        "",
        f"{args.sde}, t = 999 -> 0, {args.n} exact draws at t_max solved as one batch; median over trajectories of "
        "the per-trajectory RMS error to the exact ODE solution (DOP853, rtol = atol = 1e-10). Sweeps: rtol = atol "
        "= 1e-2 .. 1e-7 for `method=\"adaptive\"`, 1e-2 .. 1e-8 for torchdiffeq's DOPRI5 in each frame (`ei.odeint`, "
        "as `method=\"torchdiffeq:dopri5\"` with `options={'frame': ...}`). NFE to reach a target: log-log "
        "interpolation between neighbouring runs of a sweep, fewest over the sweep ('-': not reached). "
        f"Command: `python benchmarks/bench_adaptive.py` ({took:.0f} s on this machine, a shared 2-core CPU).",
        "",
        "## NFE to reach a median error",
        "",
        "| problem | target | " + " | ".join(labels) + " | DOPRI5 t | DOPRI5 rho | DOPRI5 log rho | best DOPRI5 "
        "| default / best DOPRI5 |",
        "|---|---|" + "---|" * (len(labels) + 5),
    ]

    def fmt(v: float) -> str:
        return f"{v:.0f}" if math.isfinite(v) else "-"

    ratios = []
    for problem, target, need, best_frame, best, ours in table:
        ratio = ours / best if math.isfinite(best) and math.isfinite(ours) else math.nan
        ratios.append(ratio)
        lines.append(f"| {problem} | {target:.0e} | " + " | ".join(fmt(need[k]) for k in labels) + " | "
                     + " | ".join(fmt(need[f"DOPRI5 {f}"]) for f in ("t", "rho", "logrho"))
                     + f" | {best_frame}: {fmt(best)} | {ratio:.2f} |")
    ok = [r for r in ratios if math.isfinite(r)]
    if ok:
        lines += ["", f"Default adaptive / best DOPRI5 frame: median ratio {sorted(ok)[len(ok) // 2]:.2f}, worst "
                  f"{max(ok):.2f} over {len(ok)} (problem, target) pairs (target: <= 0.5)."]
    lines += ["", "## The sweeps (tolerance: NFE, rejected steps for ours)", ""]
    for problem, _, stats in sweeps:
        lines += [f"### {problem}", ""]
        for k, v in stats.items():
            lines.append(f"- {k}: " + ", ".join(v))
        lines.append("")
    lines += ["## Median error of each run", ""]
    for problem, curves, _ in sweeps:
        lines += [f"### {problem}", ""]
        for k, v in curves.items():
            lines.append(f"- {k}: " + ", ".join(f"{n}: {e:.1e}" for n, e in v))
        lines.append("")
    OUT.mkdir(exist_ok=True)
    (OUT / "adaptive.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:12 + len(table)]))


if __name__ == "__main__":
    main()
