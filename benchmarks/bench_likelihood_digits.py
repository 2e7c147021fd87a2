"""Bits per dimension of held-out digits under the shipped digits models (issue 23): against NFE, and converged.

Models: ``digits`` (DDPM, eps) and ``digits-flow`` (rectified flow, velocity). Data: ``--n`` held-out digits (seed 0),
dequantised as ``ei-toolkit likelihood`` does (uniform noise over each of the data's levels' bins, the same draw for
every run), 64 dimensions, exact divergence, float64. Ours: ``ei.log_likelihood`` with its default method per NFE
(Lagrange quadrature) and, for comparison, the divergence carried as a channel of the plan (``quadrature="plan"``,
the default method). Converged value: ``method="torchdiffeq:dopri5"`` at rtol = atol = 1e-8, checked against 1e-7.
Columns: the mean bits per dimension over the digits, and the largest per-digit distance to the converged value.
Each model's default window: ``digits`` from t_min, ``digits-flow`` from the data itself (t = 0, no truncation;
ei_toolkit/data_start.py).

Run: OMP_NUM_THREADS=1 python benchmarks/bench_likelihood_digits.py [--n 64]; writes
benchmarks/results/likelihood_digits.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import ei_toolkit as ei
from ei_toolkit.cli.common import held_out, load_model, shipped

NFES = (8, 12, 16, 24, 32, 48, 64, 96, 128)
MODELS = ("digits", "digits-flow")


def bits(model, x0: torch.Tensor, sde, entry, **kw) -> tuple[torch.Tensor, int]:
    """(bits per dimension per digit, evaluations) of ``ei.log_likelihood`` with ``kw``."""
    r = ei.log_likelihood(model, x0, sde, prediction=entry.prediction, **kw)
    return r.bits_per_dim(levels=entry.levels, data_range=2.0), r.nfe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="held-out digits (default 64)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "likelihood_digits.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    text = ["# Bits per dimension of held-out digits against NFE", "",
            f"Command: `OMP_NUM_THREADS=1 python benchmarks/bench_likelihood_digits.py --n {args.n}`. Method and "
            "definitions: the script's docstring. bpd = mean bits per dimension over the digits (dequantised, offset "
            "log2(levels / 2)); max per-digit abs diff = the largest per-digit distance to the converged value (bits "
            "per dimension).", ""]
    for name in MODELS:
        entry = shipped(name)
        gen = torch.Generator().manual_seed(0)
        held = held_out(entry, args.n, gen)
        x0 = held.double() + (torch.rand(held.shape, generator=gen, dtype=torch.float64) - 0.5) * (2 / entry.levels)
        run = (load_model(entry).double(), x0, entry.sde(), entry)
        conv, conv_nfe = bits(*run, method="torchdiffeq:dopri5", options={"rtol": 1e-8, "atol": 1e-8})
        check, check_nfe = bits(*run, method="torchdiffeq:dopri5", options={"rtol": 1e-7, "atol": 1e-7})
        text += [f"## {name}", "",
                 f"Converged: {float(conv.mean()):.5f} bits per dimension (dopri5 at 1e-8, {conv_nfe} evaluations; "
                 f"at 1e-7, {check_nfe} evaluations, the largest per-digit difference is "
                 f"{float((check - conv).abs().max()):.1e}).", "",
                 "| NFE | default method | bpd | max per-digit abs diff | channel (quadrature='plan'): bpd | "
                 "max per-digit abs diff |", "|---|---|---|---|---|---|"]
        for nfe in NFES:
            ours, _ = bits(*run, nfe=nfe)
            plan, _ = bits(*run, nfe=nfe, quadrature="plan")
            text.append(f"| {nfe} | {ei.likelihood.default_method(nfe)} | {float(ours.mean()):.5f} | "
                        f"{float((ours - conv).abs().max()):.1e} | {float(plan.mean()):.5f} | "
                        f"{float((plan - conv).abs().max()):.1e} |")
        text.append("")
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    text.append(f"Wall time {time.perf_counter() - start:.0f} s (one thread, shared 2-core CPU).")
    Path(args.out).write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
