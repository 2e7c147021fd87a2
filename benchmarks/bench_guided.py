"""Guided sampling: the shipped class-conditional digits model (``ei_toolkit.models.digits_cond_model``) with
classifier-free guidance at scales 1, 2, 4, 8, sampled with NFE 5, 10 and 20 by our default (``ei.sample``'s, which
switches to ``sampling.GUIDED_METHOD`` on ``grids.vp_or_logrho(sde)`` above scale 2), our data-prediction (x0)
methods in log rho (each on its default grid, uniform log rho and quadratic t), diffusers' DPM-Solver++(2M)
(multistep, data prediction) and UniPC (bh1 and bh2, order 2, the UniPC paper's setting for guided sampling) on
their own grids (``peers.py``).

Figures, from the same noise and labels (``--n`` samples, balanced over the 10 classes), DDPM linear schedule,
t = 999 -> 0:
* ODE error: median over samples of the RMS distance to the guided model's near-exact ODE solution (DOP853 at
  rtol = atol = 1e-7 in the log-rho frame, :func:`ei_toolkit.testing.reference_solution`; its own error is
  estimated against a solve at 1e-8 on the first 64 samples and reported), the integrator's error alone. Every
  sampler and the reference evaluate the model in float64 (``digits_cond_model().double()``: the float32 model's
  rounding, ~1e-7, would otherwise make a tolerance below ~1e-6 unreachable for DOP853, 20 000 evaluations at
  1e-7);
* accuracy: the fraction of samples the shipped digits classifier assigns to the intended class;
* FD: Frechet distance to the 360 held-out digits in that classifier's features (``ei_toolkit.metrics``).
References are cached on disk in benchmarks/.cache.
Run: python benchmarks/bench_guided.py [--n 300] (writes benchmarks/results/guided.md and guided.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import torch
from peers import available_peers

import ei_toolkit as ei
from ei_toolkit.metrics import digits_frechet_distance
from ei_toolkit.models import digits_cond_model, guided_digits_model
from ei_toolkit.models.classifier import load_digits_classifier
from ei_toolkit.models.digits_cond import WEIGHTS
from ei_toolkit.sampling import default_method
from ei_toolkit.testing import reference_solution

OUT = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache"
SCALES = [1.0, 2.0, 4.0, 8.0]
NFES = [5, 10, 20]
PEER_FILTER = ("DPM++2M /", "UniPC-bh2-2 /", "UniPC-bh1-2 /")
RTOL = 1e-7
OUR_GRIDS = ("uniform_logrho", "quadratic_t")  # besides each method's default grid
CAL_POINTS = {5: 1, 10: 2, 20: 2}  # EMS points with the corrector on a calibrated grid, as bench_ems_trained.py
CAL_SOLVES = 60


def reference(model, x: torch.Tensor, sde: ei.LinearSDE, scale: float, rtol: float) -> torch.Tensor:
    digest = hashlib.sha256(WEIGHTS.read_bytes() + x.numpy().tobytes() + repr((scale, rtol)).encode()).hexdigest()
    path = CACHE / f"guided_ref_{scale:g}_{len(x)}_{digest[:20]}.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    with torch.no_grad():
        ref = reference_solution(model, sde, x, sde.t_max, sde.t_min, rtol=rtol)
    CACHE.mkdir(exist_ok=True)
    torch.save(ref, path)
    return ref


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300, help="samples (balanced over the classes)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    sde = ei.DiscreteVP.linear()
    net = digits_cond_model().double()
    clf = load_digits_classifier()
    labels = torch.arange(args.n) % 10
    x = torch.randn(args.n, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = [default_method(k, guidance_scale=s, sde=sde)[0] for k in NFES for s in SCALES] + [
        "logrhoab1", "logrhoab1-mid"] + [
        m for m in ei.INTEGRATORS if m.startswith("x0-") and not m.endswith("pc") and "logrho" in m] + [
        m for m in ei.INTEGRATORS if m.startswith("x0-") and m.endswith("pc")]
    ours = list(dict.fromkeys(m for m in ours if m in ei.INTEGRATORS))
    peers = available_peers(lambda name: any(f in name for f in PEER_FILTER))
    rows: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    floors: dict[str, dict[str, float]] = {}

    def quality(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
        if not bool(torch.isfinite(out).all()):
            return {"error": math.inf, "accuracy": math.nan, "fd": math.nan}
        err = float((out.double() - ref).reshape(len(out), -1).pow(2).mean(1).sqrt().median())
        with torch.no_grad():
            acc = float((clf(out.float()).argmax(1) == labels).float().mean())
        return {"error": err, "accuracy": acc, "fd": digits_frechet_distance(out.float())}

    for scale in SCALES:
        key = f"{scale:g}"
        model = guided_digits_model(net, labels, scale)
        ref = reference(model, x, sde, scale, RTOL)
        tight = reference(guided_digits_model(net, labels[:64], scale), x[:64], sde, scale, RTOL / 10)
        floor = quality(ref, ref)
        floor["error"] = float((ref[:64] - tight).reshape(64, -1).pow(2).mean(1).sqrt().median())
        floors[key] = floor
        rows[key] = {}
        with torch.no_grad():
            for m in ours:
                default_grid = ei.INTEGRATORS[m].default_grid
                for grid in dict.fromkeys([default_grid, *OUR_GRIDS]):
                    name = f"ours {m} / {grid}"
                    rows[key][name] = {}
                    for k in NFES:
                        sol = ei.solve(model, x, sde, method=m, nfe=k, grid=grid)
                        assert sol.nfe == k
                        rows[key][name][str(k)] = quality(sol.x, ref)
            # EMS (docs/math.md 4.11): statistics of the guided model on 256 further draws (labels balanced)
            stats = ei.model_statistics(guided_digits_model(net, torch.arange(256) % 10, scale),
                                        torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(99),
                                                    dtype=torch.float64), sde)
            for points in (1, 2):
                for grid in ("quadratic_t", "uniform_logrho"):
                    m = ei.EMSAdams(stats, points)
                    name = f"ems {m.name} / {grid}"
                    rows[key][name] = {str(k): quality(ei.solve(model, x, sde, method=m, nfe=k, grid=grid).x, ref)
                                       for k in NFES}
            # EMS on a grid calibrated to the guided model (issue 26's target): ei.optimize_grid on 16 other draws
            # (seed 1, labels balanced), the points per NFE of bench_ems_trained.py, max_solves CAL_SOLVES
            cal_model = guided_digits_model(net, torch.arange(16) % 10, scale)
            xc = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
            name = "ems+cal EMS / calibrated grid"
            rows[key][name] = {}
            for k in NFES:
                m = ei.EMSAdams(stats, CAL_POINTS[k])
                t0 = time.perf_counter()
                grid, info = ei.optimize_grid(cal_model, xc, sde, method=m, nfe=k, max_solves=CAL_SOLVES,
                                              return_info=True)
                cost = {"method": m.name, "evaluations": info["nfe_reference"] + info["nfe_optimiser"],
                        "seconds": time.perf_counter() - t0}
                rows[key][name][str(k)] = {**quality(ei.solve(model, x, sde, method=m, grid=grid).x, ref), **cost}
            for name, peer in peers.items():
                rows[key][name] = {}
                for k in NFES:
                    out, t_end, used = peer(model, x, sde, k)
                    assert used == k and t_end == sde.t_min, (name, used, t_end)
                    rows[key][name][str(k)] = quality(out, ref)
        print(f"scale {key} done ({time.perf_counter() - start:.0f} s)", flush=True)
    took = time.perf_counter() - start
    OUT.mkdir(exist_ok=True)
    (OUT / "guided.json").write_text(json.dumps({"samplers": rows, "reference": floors}, indent=1) + "\n")
    lines = [
        "# Guided sampling: classifier-free guidance on the class-conditional digits model",
        "",
        f"Shipped model `ei_toolkit/models/digits_cond_eps.pt` (trained by `python examples/train_digits_cond.py`), "
        f"DDPM linear schedule, t = 999 -> 0, {args.n} samples from the same noise, labels balanced over the 10 "
        "classes. ODE error = median over samples of the RMS distance to the guided model's near-exact ODE solution "
        f"(DOP853, rtol = atol = {RTOL:g}, log-rho frame); accuracy = the shipped digits classifier's agreement with "
        "the intended class; FD = Frechet distance to the held-out digits in its features. Peers: diffusers "
        "DPM-Solver++(2M) and UniPC (bh1, bh2; order 2), each on the official DPM-Solver grids and Karras sigmas. "
        "EMS rows (`ems ...`): `ei.EMSAdams` on statistics of the guided model from `ei.model_statistics` on 256 "
        "further noise draws (seed 99, labels balanced), per scale; 'best of ours' is over the registered methods. "
        "EMS + calibrated grid: `ei.optimize_grid` for that EMS method (1 point at NFE 5, 2 beyond, with the "
        f"corrector) on 16 other draws (seed 1, labels balanced), max_solves {CAL_SOLVES}; its cost is the "
        "reference's and the optimiser's model evaluations on those 16 draws. "
        f"Command: `python benchmarks/bench_guided.py --n {args.n}` ({took:.0f} s).",
        "",
        "## Our default against the best peer (ODE error)",
        "",
        "| scale | NFE | our default | error | best peer | error | ratio | best of ours | error | best EMS "
        "(statistics) | error | EMS / best peer | EMS + calibrated grid | / best peer | calibration: evaluations, s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, by in rows.items():
        for k in map(str, NFES):
            peer_names = [n for n in by if not n.startswith(("ours ", "ems ", "ems+cal "))]
            our_names = [n for n in by if n.startswith("ours ")]
            ems_names = [n for n in by if n.startswith("ems ")]
            cal = by["ems+cal EMS / calibrated grid"][k]
            be = min(ems_names, key=lambda n: by[n][k]["error"])
            bp = min(peer_names, key=lambda n: by[n][k]["error"])
            bo = min(our_names, key=lambda n: by[n][k]["error"])
            default = "ours " + " / ".join(default_method(int(k), guidance_scale=float(key), sde=sde))
            d = by[default][k]["error"]
            lines.append(f"| {key} | {k} | {default.removeprefix('ours ')} | {d:.2e} | {bp} | "
                         f"{by[bp][k]['error']:.2e} | {d / by[bp][k]['error']:.2f} | {bo.removeprefix('ours ')} | "
                         f"{by[bo][k]['error']:.2e} | {be.removeprefix('ems ')} | {by[be][k]['error']:.2e} | "
                         f"{by[be][k]['error'] / by[bp][k]['error']:.2f} | {cal['method']}: {cal['error']:.2e} | "
                         f"{cal['error'] / by[bp][k]['error']:.2f} | {cal['evaluations']}, {cal['seconds']:.0f} s |")
    lines += ["", "The near-exact solution itself (the model's limit; its ODE error is its distance to a solve at "
              f"rtol {RTOL / 10:g} on 64 samples):", "", "| scale | ODE error | accuracy | FD |", "|---|---|---|---|"]
    for key, f in floors.items():
        lines.append(f"| {key} | {f['error']:.1e} | {f['accuracy']:.3f} | {f['fd']:.2f} |")
    for key, by in rows.items():
        lines += ["", f"## Guidance scale {key}", "",
                  "| sampler | " + " | ".join(f"ODE error @ {k}" for k in NFES) + " | "
                  + " | ".join(f"accuracy @ {k}" for k in NFES) + " | " + " | ".join(f"FD @ {k}" for k in NFES) + " |",
                  "|---" * (3 * len(NFES) + 1) + "|"]
        for name in sorted(by, key=lambda n: by[n][str(NFES[1])]["error"]):
            r = by[name]
            lines.append(f"| {name} | " + " | ".join(f"{r[str(k)]['error']:.2e}" for k in NFES) + " | "
                         + " | ".join(f"{r[str(k)]['accuracy']:.3f}" for k in NFES) + " | "
                         + " | ".join(f"{r[str(k)]['fd']:.2f}" for k in NFES) + " |")
    text = "\n".join(lines) + "\n"
    (OUT / "guided.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
