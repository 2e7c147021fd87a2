"""Benchmark of the symbolic linear-SDE layer (issue: foundation).

* cold build of each built-in SDE, each in a fresh process (import excluded, reported apart);
* cached build (the same SDE again in the same process);
* cold build of a custom LinearSDE that sympy integrates;
* evaluating alpha / sigma / rho on 10^6 times against hand-written torch expressions of the same closed
  forms, measured side by side in one run (median of repeats, interleaved).

Run: ``python benchmarks/bench_sde.py`` (writes benchmarks/results/sde.md).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

BUILTINS = {
    "VPSDE": "ei.VPSDE()",
    "SubVPSDE": "ei.SubVPSDE()",
    "CosineVPSDE": "ei.CosineVPSDE()",
    "VESDE": "ei.VESDE()",
    "EDM": "ei.EDM()",
    "DiscreteVP (1000 steps)": "ei.DiscreteVP.linear()",
    "custom: LinearSDE polynomial beta": (
        "ei.LinearSDE(drift='-(a + b*t + c*t**2)/2', diffusion='sqrt(a + b*t + c*t**2)', t_max=1.0, "
        "a=0.1, b=10.0, c=3.0)"
    ),
    "custom: LinearSDE OU with ramped noise": (
        "ei.LinearSDE(drift='-a', diffusion='b*(1 + t)', t_max=1.0, a=1.5, b=2.0)"
    ),
}

CHILD = r"""
import time, json, sys
t0 = time.perf_counter()
import ei_toolkit as ei
t1 = time.perf_counter()
sde = {expr}
t2 = time.perf_counter()
for _ in range(20):
    {expr}
t3 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "cold": t2 - t1, "cached": (t3 - t2) / 20, "how": dict(sde.how)}}))
"""


def build_times() -> dict[str, dict]:
    out = {}
    for name, expr in BUILTINS.items():
        runs = []
        for _ in range(3):
            res = subprocess.run([sys.executable, "-c", CHILD.format(expr=expr)], capture_output=True, text=True,
                                 check=True)
            runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
        out[name] = {
            "import_s": statistics.median(r["import"] for r in runs),
            "cold_s": statistics.median(r["cold"] for r in runs),
            "cached_ms": 1e3 * statistics.median(r["cached"] for r in runs),
            "how": runs[0]["how"],
        }
    return out


def eval_times(n: int = 10**6, repeats: int = 21) -> list[tuple[str, str, float, float]]:
    import ei_toolkit as ei

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    rows = []
    b0, b1 = 0.1, 20.0
    s = 0.008
    smin, smax = 0.01, 50.0

    def vp_alpha(t):
        return torch.exp(-0.25 * t**2 * (b1 - b0) - 0.5 * t * b0)

    def vp_sigma(t):
        return torch.sqrt(-torch.expm1(-0.5 * t**2 * (b1 - b0) - t * b0))

    def vp_rho(t):
        return torch.sqrt(torch.expm1(0.5 * t**2 * (b1 - b0) + t * b0))

    c0 = torch.cos(torch.tensor(s / (1 + s) * torch.pi / 2)).item()

    def cos_alpha(t):
        return torch.cos((t + s) / (1 + s) * (torch.pi / 2)) / c0

    def cos_sigma(t):
        return torch.sqrt(1 - cos_alpha(t) ** 2)

    def cos_rho(t):
        a = cos_alpha(t)
        return torch.sqrt(1 - a**2) / a

    def ve_sigma(t):
        return smin * (smax / smin) ** t

    cases = [
        ("VPSDE", ei.VPSDE(), {"alpha": vp_alpha, "sigma": vp_sigma, "rho": vp_rho}),
        ("CosineVPSDE", ei.CosineVPSDE(), {"alpha": cos_alpha, "sigma": cos_sigma, "rho": cos_rho}),
        ("VESDE", ei.VESDE(), {"sigma": ve_sigma, "rho": ve_sigma}),
    ]
    for dtype in (torch.float32, torch.float64):
        for name, sde, hand in cases:
            t = (sde.t_min + torch.rand(n, generator=g, dtype=torch.float64) * (sde.t_max - sde.t_min)).to(dtype)
            for fname, ref in hand.items():
                ours = getattr(sde, fname)
                ta, tb = [], []
                for _ in range(repeats):  # interleaved, so that machine noise hits both alike
                    s0 = time.perf_counter()
                    ours(t)
                    s1 = time.perf_counter()
                    ref(t)
                    s2 = time.perf_counter()
                    ta.append(s1 - s0)
                    tb.append(s2 - s1)
                rows.append((f"{name}.{fname}", str(dtype).replace("torch.", ""), statistics.median(ta),
                             statistics.median(tb)))
    return rows


def main() -> None:
    builds = build_times()
    evals = eval_times()
    lines = ["# Linear-SDE layer benchmark", "",
             f"Machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, Python {sys.version.split()[0]}. "
             "Evaluation runs with 1 torch thread.", "",
             "## Building an SDE (fresh process per SDE; median of 3 processes)", "",
             "| SDE | import ei_toolkit (s) | cold build (s) | cached build (ms) | derived by |",
             "|---|---|---|---|---|"]
    for name, r in builds.items():
        how = "; ".join(f"{k}: {v.split(' (')[0]}" for k, v in r["how"].items())
        lines.append(f"| {name} | {r['import_s']:.2f} | {r['cold_s']:.3f} | {r['cached_ms']:.2f} | {how} |")
    lines += ["", "## Evaluating on 10^6 times (median of 21 interleaved repeats)", "",
              "| function | dtype | ei_toolkit (ms) | hand-written torch (ms) | ratio |", "|---|---|---|---|---|"]
    for fn, dt, a, b in evals:
        lines.append(f"| {fn} | {dt} | {1e3 * a:.2f} | {1e3 * b:.2f} | {a / b:.2f} |")
    text = "\n".join(lines) + "\n"
    out = Path(__file__).parent / "results" / "sde.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
