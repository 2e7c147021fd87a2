"""Calibrated grids (ei.optimize_grid) against the method's default grid and the best peer configuration.

For each mixture of benchmarks/bench_accuracy.py (2-d w0.1, 16-d w0.15, 64-d w0.03, 256-d w0.02) under the DDPM
linear schedule (t = 999 -> 0) and NFE 5 and 10: the grid of each method is calibrated on 16 exact draws at t_max
(seed 1) and evaluated on 128 other draws (seed 0), with the benchmarks' figure: the median over trajectories of
the per-trajectory RMS error to the ODE solution (DOP853, rtol = atol = 1e-10, log-rho frame). The peers of
benchmarks/peers.py (diffusers DPM-Solver++ / UniPC on their own grids, k-diffusion on Karras sigmas) run on the
same 128 draws; the best one that used exactly NFE evaluations is the comparison. The best peer figure of
benchmarks/results/accuracy.json (its own draws) is quoted too where that file has one. Then the shipped digits
model (NFE 5, 10, 20; skipped with --no-digits): calibrated on 16 noise draws, evaluated on the 2000 draws of
benchmarks/bench_digits.py against their near-exact solution, the peers on the same draws.

Run: python benchmarks/bench_grid_opt.py [--methods logrhoab2 ...] [--max-solves 200]
(writes benchmarks/results/grid_opt.md).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from bench_accuracy import MIXTURES, SDES, is_peer, median_error, start_and_reference
from peers import available_peers

import ei_toolkit as ei
from ei_toolkit.sampling import DEFAULT_METHOD, GUIDED_METHOD

OUT = Path(__file__).parent / "results"
DIGITS_N = 2000  # as bench_digits.py


def accuracy_json_peer(problem: str, nfe: int) -> tuple[str, float] | None:
    """The best peer figure for (problem, nfe) in results/accuracy.json ({problem: {nfe: {config: median}}})."""
    path = OUT / "accuracy.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None  # an older format without per-problem peers
    r = data.get(problem, {}).get(str(nfe), {})
    peers = {c: v for c, v in r.items() if is_peer(c)}
    if not peers:
        return None
    best = min(peers, key=peers.__getitem__)
    return best, peers[best]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="*", default=None, help=f"methods to calibrate (default: {DEFAULT_METHOD} "
                    "and x0-logrhoab2 where registered)")
    ap.add_argument("--sde", default="ddpm-linear", choices=sorted(SDES))
    ap.add_argument("--mixtures", nargs="*", default=list(MIXTURES))
    ap.add_argument("--nfe", nargs="*", type=int, default=[5, 10])
    ap.add_argument("--max-solves", type=int, default=200)
    ap.add_argument("--calibration", type=int, default=16)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--no-digits", dest="digits", action="store_false", help="skip the shipped digits model")
    ap.add_argument("--stats-draws", type=int, default=256, help="noise draws for the digits model's EMS statistics")
    args = ap.parse_args()
    stats_cost = None
    methods = args.methods or [m for m in (DEFAULT_METHOD, "x0-logrhoab2") if m in ei.INTEGRATORS]
    start = time.perf_counter()
    sde = SDES[args.sde]()
    peers = available_peers()
    rows, cost = [], []
    def calibrate(problem: str, model, x: torch.Tensor, ref: torch.Tensor, xc: torch.Tensor,
                  reference: torch.Tensor, nfe_ref: int, nfes: list[int], methods: list) -> None:
        for nfe in nfes:
            peer_err = {}
            for name, peer in peers.items():
                out, _, used = peer(model, x, sde, nfe)
                if used == nfe:
                    peer_err[name] = median_error(out, ref)
            best_peer = min(peer_err, key=peer_err.__getitem__) if peer_err else None
            for meth in methods:
                label = getattr(meth, "name", meth)
                t0 = time.perf_counter()
                grid, info = ei.optimize_grid(model, xc, sde, method=meth, nfe=nfe, reference=reference,
                                              max_solves=args.max_solves, return_info=True)
                took = time.perf_counter() - t0
                default = median_error(ei.sample(model, x, sde, method=meth, nfe=nfe), ref)
                tuned = median_error(ei.sample(model, x, sde, method=meth, nfe=nfe, grid=grid), ref)
                rows.append(dict(problem=problem, nfe=nfe, method=label, default=default, tuned=tuned,
                                 peer=best_peer, peer_err=peer_err.get(best_peer, math.nan),
                                 json_peer=accuracy_json_peer(problem, nfe), start=info["start"]))
                cost.append(dict(problem=problem, nfe=nfe, method=label, solves=info["solves"],
                                 nfe_opt=info["nfe_optimiser"], nfe_ref=nfe_ref, seconds=took))
                r = rows[-1]
                print(f"{problem} NFE {nfe} {label}: default {default:.2e} calibrated {tuned:.2e} "
                      f"({tuned / default:.2f}x); best peer {best_peer} {r['peer_err']:.2e} "
                      f"({tuned / r['peer_err']:.2f}x)  [{took:.0f} s]", flush=True)

    for mname in args.mixtures:
        mix = MIXTURES[mname]()
        model = mix.eps_model(sde)
        x, ref = start_and_reference(args.sde, sde, mname, mix, args.n, 0)
        xc = mix.sample_marginal(sde, sde.t_max, args.calibration, torch.Generator().manual_seed(1))
        # the calibration batch's reference, computed once per problem as optimize_grid would (adaptive, rtol 1e-7)
        ref_sol = ei.solve(model, xc, sde, method="adaptive", options={"rtol": 1e-7, "atol": 1e-7})
        calibrate(f"{args.sde}/{mname}", model, x, ref, xc, ref_sol.x, ref_sol.nfe, args.nfe, methods)
    if args.digits and args.sde == "ddpm-linear":
        # the shipped digits model (DDPM linear): the draws and near-exact reference of bench_digits.py
        from ei_toolkit.models import load_digits_model

        model = load_digits_model()
        with torch.no_grad():
            x = torch.randn(DIGITS_N, 1, 8, 8, generator=torch.Generator().manual_seed(1))
            ref = ei.odeint(model, x, sde, rtol=1e-6, atol=1e-6, frame="logrho").x.double()
            xc = torch.randn(args.calibration, 1, 8, 8, generator=torch.Generator().manual_seed(12345))
            ref_sol = ei.solve(model, xc, sde, method="adaptive", options={"rtol": 1e-7, "atol": 1e-7})
            # EMS (docs/math.md 4.11): statistics from their own calibration draws, then the grid as for the others
            t0 = time.perf_counter()
            xs = torch.randn(args.stats_draws, 1, 8, 8, generator=torch.Generator().manual_seed(2024))
            nodes, probes = 200, 2
            stats = ei.model_statistics(model, xs, sde, nodes=nodes, probes=probes)
            stats_cost = (time.perf_counter() - t0, nodes + (nodes + 1) * (1 + 2 * probes))  # model_statistics' cost
            ems = [ei.EMSAdams(stats, p, True) for p in (1, 2, 3)]
            calibrate("digits model", model, x, ref, xc, ref_sol.x, ref_sol.nfe, sorted({*args.nfe, 20}),
                      list(dict.fromkeys([*methods, GUIDED_METHOD])) + ems)
    took = time.perf_counter() - start
    lines = [
        "# Calibrated grids: `ei.optimize_grid`",
        "",
        f"DDPM linear schedule ({args.sde}), t = 999 -> 0. Each grid is calibrated on {args.calibration} exact draws "
        f"(seed 1) and evaluated on {args.n} others (seed 0): median over trajectories of the per-trajectory RMS "
        "error to the exact ODE solution (DOP853, rtol = atol = 1e-10). The shipped digits model: calibrated on "
        f"{args.calibration} noise draws (seed 12345), evaluated on the {DIGITS_N} of bench_digits.py (seed 1) "
        f"against their near-exact solution (dopri5, tol 1e-6); {GUIDED_METHOD} (the default under guidance) is "
        "calibrated too, and the EMS methods (`ei.EMSAdams`, docs/math.md 4.11) on statistics from "
        f"`ei.model_statistics` on {args.stats_draws} further noise draws (seed 2024; 'default grid' is then "
        "EMSAdams' quadratic_t). "
        "Optimiser (`ei.optimize_grid`): from the best of the method's default grid, uniform_logrho, quadratic_t "
        "and karras, Nelder-Mead first on the shape of the log-rho increments (2 parameters, a quarter of the "
        f"budget), then on every increment; at most {args.max_solves} solves. Peers (benchmarks/peers.py) on the same "
        f"{args.n} draws; 'accuracy.json peer' is the best peer figure of benchmarks/results/accuracy.json (its "
        "own draws) where present. Command: `python benchmarks/bench_grid_opt.py` "
        f"({took:.0f} s on this machine, a shared 2-core CPU).",
        "",
        "| problem | NFE | method | default grid | calibrated | calibrated / default | best peer (same draws) "
        "| error | calibrated / peer | accuracy.json peer | calibrated / that |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        jp = r["json_peer"]
        jcell = f"{jp[0]}: {jp[1]:.2e} | {r['tuned'] / jp[1]:.2f}" if jp else "n/a | n/a"
        lines.append(f"| {r['problem']} | {r['nfe']} | {r['method']} | {r['default']:.2e} | {r['tuned']:.2e} | "
                     f"{r['tuned'] / r['default']:.2f} | {r['peer']} | {r['peer_err']:.2e} | "
                     f"{r['tuned'] / r['peer_err']:.2f} | {jcell} |")
    lines += ["", "## Cost of the calibration (model evaluations on the 16-draw batch)", "",
              "| problem | NFE | method | reference NFE (adaptive, rtol 1e-7; once per problem) | optimiser solves "
              "| optimiser NFE | seconds |", "|---|---|---|---|---|---|---|"]
    for c in cost:
        lines.append(f"| {c['problem']} | {c['nfe']} | {c['method']} | {c['nfe_ref']} | {c['solves']} | "
                     f"{c['nfe_opt']} | {c['seconds']:.1f} |")
    if stats_cost is not None:
        lines += ["", f"EMS statistics for the digits model: {stats_cost[1]} evaluations of the "
                  f"{args.stats_draws}-draw batch, {stats_cost[0]:.1f} s."]
    OUT.mkdir(exist_ok=True)
    (OUT / "grid_opt.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
