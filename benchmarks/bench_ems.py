"""EMS (ei.EMSAdams on ei.model_statistics, docs/math.md section 4.11) on the 24 mixture problems of
benchmarks/bench_accuracy.py, against the peers' figures in benchmarks/results/accuracy.json.

Per problem the statistics come from 256 draws of x at t_max (seed 99: the marginal there, nearly pure noise), 200
nodes, 2 probes; the methods (1-3 points, with the corrector) then run on the quadratic_t and uniform_logrho grids
from the same 64 draws (seed 0) as bench_accuracy.py (and "its default grid": the first for the VP schedules, the
second for VE and EDM, what EMSAdams takes without grid=), against the same cached reference; the figure is the
median per-trajectory RMS error divided by the best peer configuration's in accuracy.json, as in
benchmarks/choose_default.py. Also: the best of ours on each problem with and without the EMS configurations (the
issue's "best of ours" count). With calibrated grids (unless --no-calibration): per problem and NFE the grid of
the EMS configuration named in CALIBRATED is tuned by ei.optimize_grid on 16 other exact draws at t_max (seed 1;
at most --max-solves solves, their reference computed by optimize_grid itself) and evaluated on the 64 draws, the
issue's calibrated-grid protocol.

Run: python benchmarks/bench_ems.py [--nfe 5 10 20] (after bench_accuracy.py: it reads accuracy.json and the cached
references); writes benchmarks/results/ems.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from bench_accuracy import MIXTURES, SDES, default_config, geometric_mean, is_peer, median_error, start_and_reference

import ei_toolkit as ei
from ei_toolkit.grids import vp_or_logrho

OUT = Path(__file__).parent / "results"
GRIDS = ("uniform_logrho", "quadratic_t")
CALIBRATED = {5: (1, 2), 10: (2,), 20: (2, 3)}  # NFE -> EMS points whose grid is calibrated


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 20])
    ap.add_argument("--draws", type=int, default=256, help="calibration draws for the statistics (default 256)")
    ap.add_argument("--no-calibration", action="store_true", help="skip the calibrated grids")
    ap.add_argument("--max-solves", type=int, default=200, help="optimize_grid's budget of solves (default 200)")
    args = ap.parse_args()
    acc = json.loads((OUT / "accuracy.json").read_text())
    start = time.perf_counter()
    ratios: dict[str, dict[str, dict[str, float]]] = {}  # nfe -> config -> problem -> ratio
    best_ours: dict[str, dict[str, float]] = {}  # nfe -> problem -> best registered ratio
    stats_seconds: list[float] = []
    calib_seconds: list[float] = []
    for s_name, make in SDES.items():
        sde = make()
        for m_name, mk in MIXTURES.items():
            problem = f"{s_name}/{m_name}"
            if problem not in acc:
                continue
            mix = mk()
            model = mix.eps_model(sde)
            x, ref = start_and_reference(s_name, sde, m_name, mix, 64, 0)
            t0 = time.perf_counter()
            xs = mix.sample_marginal(sde, sde.t_max, args.draws, torch.Generator().manual_seed(99))
            stats = ei.model_statistics(model, xs, sde)
            stats_seconds.append(time.perf_counter() - t0)
            xc = mix.sample_marginal(sde, sde.t_max, 16, torch.Generator().manual_seed(1))
            for nfe in map(str, args.nfe):
                configs = acc[problem][nfe]
                peer = min(v for k, v in configs.items() if is_peer(k) and math.isfinite(v))
                best_ours.setdefault(nfe, {})[problem] = min(
                    v for k, v in configs.items() if not is_peer(k) and math.isfinite(v)) / peer
                ratios.setdefault(nfe, {}).setdefault("default: " + default_config(nfe), {})[problem] = (
                    configs[default_config(nfe)] / peer)
                for points in (1, 2, 3):
                    m = ei.EMSAdams(stats, points)
                    for g in GRIDS:
                        try:
                            err = median_error(ei.solve(model, x, sde, method=m, nfe=int(nfe), grid=g).x, ref)
                        except ei.NumericalError:  # a diverged run counts as infinitely bad, as in bench_accuracy
                            err = math.inf
                        ratios[nfe].setdefault(f"{m.name} / {g}", {})[problem] = err / peer
                    # without grid=: quadratic_t for the VP schedules, uniform_logrho for VE / EDM
                    ratios[nfe].setdefault(f"{m.name} / its default grid", {})[problem] = (
                        ratios[nfe][f"{m.name} / {vp_or_logrho(sde)}"][problem])
                    if args.no_calibration or points not in CALIBRATED.get(int(nfe), ()):
                        continue
                    t0 = time.perf_counter()
                    grid = ei.optimize_grid(model, xc, sde, method=m, nfe=int(nfe), max_solves=args.max_solves)
                    calib_seconds.append(time.perf_counter() - t0)
                    try:
                        err = median_error(ei.solve(model, x, sde, method=m, grid=grid).x, ref)
                    except ei.NumericalError:
                        err = math.inf
                    ratios[nfe].setdefault(f"{m.name} / calibrated grid", {})[problem] = err / peer
            print(problem, f"{time.perf_counter() - start:.0f} s", flush=True)
    took = time.perf_counter() - start
    lines = ["# EMS on the mixture problems", "",
             f"`python benchmarks/bench_ems.py` ({took:.0f} s on this machine, a shared 2-core CPU; statistics "
             f"{sum(stats_seconds) / len(stats_seconds):.1f} s per problem on average"
             + (f"; a calibrated grid {sum(calib_seconds) / len(calib_seconds):.1f} s on average, at most "
                f"{args.max_solves} solves of 16 draws" if calib_seconds else "") + "). Statistics per problem "
             f"from {args.draws} draws at t_max (seed 99; the marginal there, nearly pure noise), 200 nodes, "
             "2 probes; runs from the 64 draws of bench_accuracy.py. Ratio = median error / the best peer "
             "configuration's in accuracy.json (36-37 per problem); worst = max over the problems, gm = geometric "
             "mean.", ""]
    for nfe in map(str, args.nfe):
        rows = ratios[nfe]
        n = len(best_ours[nfe])
        lines += [f"## NFE {nfe} ({n} problems)", "", "| configuration | worst | <= 1.0 | <= 0.5 | gm |",
                  "|---|---|---|---|---|"]
        for name, per in sorted(rows.items(), key=lambda kv: (not kv[0].startswith("default"), geometric_mean(list(
                kv[1].values())))):
            v = list(per.values())
            lines.append(f"| {name} | {max(v):.2f} | {sum(x <= 1 for x in v)}/{n} | {sum(x <= 0.5 for x in v)}/{n} | "
                         f"{geometric_mean(v):.2f} |")
        ems_best = {p: min(per[p] for k, per in rows.items() if not k.startswith("default")) for p in best_ours[nfe]}
        both = [min(best_ours[nfe][p], ems_best[p]) for p in best_ours[nfe]]
        reg = list(best_ours[nfe].values())
        lines += ["", f"Best of ours per problem: registered methods <= 0.5 on {sum(x <= 0.5 for x in reg)}/{n} "
                  f"(<= 1.0 on {sum(x <= 1 for x in reg)}/{n}); with the EMS configurations <= 0.5 on "
                  f"{sum(x <= 0.5 for x in both)}/{n} (<= 1.0 on {sum(x <= 1 for x in both)}/{n}), worst "
                  f"{max(both):.2f}.", ""]
    OUT.mkdir(exist_ok=True)
    (OUT / "ems.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
