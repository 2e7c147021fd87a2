"""EMS on trained models (issue 26 item 3): integrator error against a near-exact ODE solution (method "adaptive",
rtol 1e-7) at NFE 5, 10, 20 for the base registered method EMS modifies (x0-logrhoab<points - 1>-pc on its
default grid), EMS on its default grid with statistics from 64 draws before (shrink=None) and after the shrinkage
of ei.model_statistics, the shrunk EMS against its base method on EMS's own default grid (EMS changes the method,
not the grid), ei.check_statistics' verdict on the evaluation draws (EMS on its default grid against the base method
on the base's default grid; "fell back": the base method is used), and EMS on a grid calibrated by
ei.optimize_grid (16 other draws, checked on the 64 held-out evaluation draws of the table:
ei_toolkit.grid_opt.heldout_check). Figure: the median over the 64 draws of each trajectory's RMS error; the best
peer's figure is the lowest peer configuration's median error in
benchmarks/results/trained.json (bench_trained.py: 256 other draws, the same near-exact reference rule).

Models: every name of ei_toolkit.models.registry.model_names() (eps and flow models; "--models" to choose). Every
solve runs under torch.no_grad: with autograd on, the reference's thousands of steps each kept their graph.
Run: python benchmarks/bench_ems_trained.py [--draws 64] [--max-solves 60] [--models ...]; writes
benchmarks/results/ems_trained.md, replacing only the sections of the models it ran (each section says its run's
seconds), so that one model can be rerun without the hour the patch UNets take.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import torch

import ei_toolkit as ei
from ei_toolkit.grid_opt import heldout_check
from ei_toolkit.models.registry import model_names, shipped_model
from ei_toolkit.statistics import check_statistics

sys.path.insert(0, str(Path(__file__).parent))
from bench_accuracy import is_peer

OUT = Path(__file__).parent / "results"
POINTS = {5: 1, 10: 2, 20: 2}  # NFE -> EMS points (with the corrector), as in benchmarks/results/grid_opt.md
TRAINED = OUT / "trained.json"  # bench_trained.py: {model: {nfe: {config: median error}}}


def median_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref).reshape(len(ref), -1).pow(2).mean(1).sqrt().median())


def best_peers(name: str) -> dict[int, float]:
    """The best peer configuration's median error per NFE for a model in trained.json (empty if not measured)."""
    if not TRAINED.exists():
        return {}
    table = json.loads(TRAINED.read_text()).get(name, {})
    return {int(nfe): min(v for k, v in configs.items() if is_peer(k) and math.isfinite(v))
            for nfe, configs in table.items() if any(is_peer(k) for k in configs)}


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--draws", type=int, default=64, help="calibration draws for the statistics (default 64)")
    ap.add_argument("--max-solves", type=int, default=60, help="optimize_grid's budget of solves (default 60)")
    ap.add_argument("--models", nargs="+", default=model_names(), choices=model_names(), help="default: all")
    args = ap.parse_args()
    start = time.perf_counter()
    lines = ["# EMS on trained models", "",
             f"`python benchmarks/bench_ems_trained.py --draws {args.draws} --max-solves {args.max_solves}` "
             "(a shared 2-core CPU). Median over 64 evaluation draws (seed 0) of the per-trajectory RMS error "
             "against method adaptive at rtol 1e-7; statistics from "
             f"{args.draws} other draws (seed 99), 200 nodes, 2 probes, 32 bootstrap resamples; grid calibrated on 16 "
             "more (seed 1). Ratios in brackets: to the base method / to the best peer of trained.json.", ""]
    head = len(lines)
    sections: dict[str, list[str]] = {}
    for name in args.models:
        first, t_model = len(lines), time.perf_counter()
        spec = shipped_model(name)
        pred = spec.prediction
        try:
            model, sde = spec.load("cpu"), spec.sde()
        except FileNotFoundError as e:  # registered, weights not trained yet
            lines += [f"## {name}", "", f"Skipped: {e}", ""]
            continue
        x = torch.randn(64, *spec.shape, generator=torch.Generator().manual_seed(0))
        t0 = time.perf_counter()
        ref = ei.solve(model, x.double(), sde, method="adaptive", prediction=pred,
                       options={"rtol": 1e-7, "atol": 1e-7, "max_nfe": 20000})
        ref_s = time.perf_counter() - t0
        xs = torch.randn(args.draws, *spec.shape, generator=torch.Generator().manual_seed(99))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t0 = time.perf_counter()
            raw = ei.model_statistics(model, xs, sde, shrink=None, prediction=pred)
            shrunk = ei.model_statistics(model, xs, sde, prediction=pred)
            stats_s = (time.perf_counter() - t0) / 2
        xc = torch.randn(16, *spec.shape, generator=torch.Generator().manual_seed(1))
        lines += [f"## {name}", "", f"Reference: {ref.nfe} evaluations of the 64 draws, {ref_s:.0f} s. Statistics: "
                  f"{stats_s:.1f} s, {200 + 201 * 5} batch evaluations of {args.draws} draws; relative bootstrap "
                  f"error {shrunk.error:.3f}; kept (weight 1) l {float(shrunk.weights[0].mean()):.2f}, s "
                  f"{float(shrunk.weights[1].mean()):.2f}, b at {float(shrunk.weights[2].mean()):.2f} of the nodes"
                  + (f"; warnings: {'; '.join(str(w.message) for w in caught)}" if caught else "") + ".", "",
                  "| NFE | base method | its error | EMS raw, default grid | EMS shrunk, default grid | "
                  "EMS shrunk / base on EMS's grid | check_statistics | "
                  "EMS + calibrated grid | best peer (trained.json) | calibration: evaluations, s | held-out check |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        peer = best_peers(name)
        for nfe, points in POINTS.items():
            ems_raw, ems = ei.EMSAdams(raw, points), ei.EMSAdams(shrunk, points)
            base = median_error(ei.solve(model, x, sde, method=ems.base_method, nfe=nfe, prediction=pred).x, ref.x)
            e_raw = median_error(ei.solve(model, x, sde, method=ems_raw, nfe=nfe, prediction=pred).x, ref.x)
            shr = ei.solve(model, x, sde, method=ems, nfe=nfe, prediction=pred)
            e_shr = median_error(shr.x, ref.x)
            same = median_error(ei.solve(model, x, sde, method=ems.base_method, nfe=nfe, grid=shr.grid,
                                         prediction=pred).x, ref.x)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                _, stats_check = check_statistics(model, ems, x, sde, nfe=nfe, points=points, reference=ref.x,
                                                  on_failure="fallback", prediction=pred)
            verdict = "passed" if stats_check.passed else "fell back"
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                grid, info = ei.optimize_grid(model, xc, sde, method=ems, nfe=nfe, max_solves=args.max_solves,
                                              prediction=pred, return_info=True)
            cal_s = time.perf_counter() - t0
            e_cal = median_error(ei.solve(model, x, sde, method=ems, grid=grid, prediction=pred).x, ref.x)
            check = heldout_check(model, x, sde, method=ems, nfe=nfe, grid=grid, reference=ref.x, prediction=pred)
            p = peer.get(nfe)

            def fmt(e: float, base: float = base, p: float | None = p) -> str:
                return f"{e:.2e} ({e / base:.2f} / {e / p:.2f})" if p else f"{e:.2e} ({e / base:.2f})"
            lines.append(f"| {nfe} | {ems.base_method} | {fmt(base)} | {fmt(e_raw)} | {fmt(e_shr)} | "
                         f"{e_shr / same:.2f} ({shr.grid}) | {verdict} ({stats_check.ratio:.2f}) | {fmt(e_cal)} | "
                         f"{f'{p:.2e}' if p else '-'} | {info['nfe_reference']} + {info['nfe_optimiser']} of 16 draws, "
                         f"{cal_s:.0f} s | {'passed' if check.passed else 'FAILED'} ({check.ratio:.2f}) |")
            print(lines[-1], flush=True)
        lines += ["", f"This model's run: {time.perf_counter() - t_model:.0f} s.", ""]
        sections[name] = lines[first:]
        write(lines[:head], sections)  # after each model: a long run that is stopped keeps what it measured
    print(f"Total {time.perf_counter() - start:.0f} s.")


def write(header: list[str], sections: dict[str, list[str]]) -> None:
    """The header and every model's section: those run now, the others as the file had them (in registry order)."""
    OUT.mkdir(exist_ok=True)
    path = OUT / "ems_trained.md"
    kept: dict[str, list[str]] = {}
    if path.exists():
        name = None
        for line in path.read_text().splitlines():
            if line.startswith("## "):
                name = line[3:].strip()
                kept[name] = []
            if name is not None and not line.startswith("Total "):
                kept[name].append(line)
    kept.update(sections)
    order = [n for n in model_names() if n in kept] + [n for n in kept if n not in model_names()]
    body = [line for n in order for line in kept[n]]
    path.write_text("\n".join(header + body).rstrip("\n") + "\n")


if __name__ == "__main__":
    main()
