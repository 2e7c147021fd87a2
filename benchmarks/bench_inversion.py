"""Inversion (data -> noise along the probability-flow ODE): our deterministic methods against diffusers' inverse
schedulers, on Gaussian mixtures with exact eps; chooses ei_toolkit.sampling.INVERSION_DEFAULTS_BY_NFE.

Problems: the mixtures gmm2d, gmm16 and gmm64-sharp (ei_toolkit.testing.problems) under the DDPM linear schedule
(ei.DiscreteVP.linear(), t in model timesteps, data drawn from the exact marginal at t = 0) and under EDM (data drawn
from the marginal at sigma = 0.002). Each run encodes ``--n`` draws x0; the figures are

* encoding error: max over draws of max_i |x_end - exact|_i / max_i |exact|_i, exact = the DOP853 solution of the
  probability-flow ODE (rtol = atol = 1e-12) from the run's own start time and state to the run's own end time;
* round trip: max over draws of |sample(invert(x0)) - x0|_2 / |x0|_2, the sampler being the same method, nfe and
  grid (for the peers: the matching forward diffusers scheduler, see below).

Ours: the candidates of CANDIDATES on uniform_logrho (all problems) and quadratic_t (DDPM only: t is a noise level
under EDM), from t_min up to t_max with exactly nfe evaluations (logrhoss3, three evaluations a step: 9/18/48).

Peers (DDPM only), driven as a pipeline drives an inverse scheduler (set_timesteps(n); for t in timesteps:
x = step(model(x, t), t, x).prev_sample), in float64: the schedulers' float32 alphas/sigmas are replaced after
set_timesteps by the float64 values of the same schedule (our DiscreteVP.linear()), so integrator error, not
round-off, is measured. Where each starts and ends is written into the results file (START_END).

Run: OMP_NUM_THREADS=1 python benchmarks/bench_inversion.py [--n 32] [--nfe 10 20 50]; writes
benchmarks/results/inversion.md. Needs diffusers (the bench extra).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from bench_accuracy import switch_rule

import ei_toolkit as ei
from ei_toolkit.sampling import INVERSION_DEFAULTS_BY_NFE, INVERSION_GRID
from ei_toolkit.testing.problems import get_problem

OUT = Path(__file__).parent / "results" / "inversion.md"
RTOL = 1e-12
MIXTURES = ("gmm2d", "gmm16", "gmm64-sharp")
SDES: dict[str, Callable[[], ei.LinearSDE]] = {"ddpm-linear": ei.DiscreteVP.linear, "edm": ei.EDM,
                                                "flow": ei.RectifiedFlow}
CANDIDATES = ("ddim", "logrhoab1", "logrhoab2", "logrhoab3", "x0-logrhoab1", "x0-logrhoab2", "x0-logrhoab3",
              "logrhoab1-pc", "logrhoab2-pc", "x0-logrhoab1-pc", "x0-logrhoab2-pc", "logrhoab1-mid",
              "x0-logrhoab1-mid", "logrhoss3")
GRIDS = ("uniform_logrho", "quadratic_t")
PEERS = ("DDIMInverse alpha1", "DDIMInverse", "DPMInverse++ o1", "DPMInverse++ o2", "DPMInverse++ o3",
         "DPMInverse o1", "DPMInverse o2", "DPMInverse o3")
START_END = {
    "DDIMInverse alpha1": "DDIMInverseScheduler(clip_sample=False, set_alpha_to_one=True), timestep_spacing "
    "'leading': timesteps 0, r, ..., 1000 - r (r = 1000 // n). Its first step runs from alpha = 1 to timestep 0; "
    "it is fed our data drawn at timestep 0 (alpha^2 = 1 - beta_0), so it treats that state as clean data (a "
    "mismatch of one beta_0 = 1e-4 in alpha^2, rho 0 instead of 0.01). Step t - r -> t reads the model at t (the "
    "scheduler's one-step lag). Ends at timestep 1000 - r (900 / 950 / 980 at n = 10 / 20 / 50), not 999. "
    "Exact: the ODE from timestep 0 (the drawn state) to 1000 - r. Round trip: DDIMScheduler(clip_sample=False, "
    "set_alpha_to_one=True), n steps from 1000 - r down to alpha = 1.",
    "DDIMInverse": "as above with set_alpha_to_one=False: the first step runs from alpha_cumprod[0] to timestep 0, "
    "a no-op that costs one evaluation (n - 1 effective steps); starts at timestep 0 exactly (no mismatch), ends at "
    "1000 - r. Round trip: DDIMScheduler(set_alpha_to_one=False), ending at timestep 0.",
    "DPMInverse": "DPMSolverMultistepInverseScheduler(solver_order=k, algorithm_type='dpmsolver++' or "
    "'dpmsolver', defaults otherwise: timestep_spacing 'linspace', lower_order_final): timesteps "
    "round(linspace(0, 999, n + 1))[:-1], sigmas at them plus sigma(999); starts at timestep 0 (our draw, no "
    "mismatch), ends at timestep 999 = our t_max; the model is read at each step's start. Exact: the ODE from 0 to "
    "999. Round trip: DPMSolverMultistepScheduler with the same order/algorithm and final_sigmas_type='sigma_min' "
    "(from 999 down to timestep 0); its step casts the state to float32 for the update (round-off ~1e-7 a step).",
}


def our_nfe(method: str, nfe: int) -> int:
    per = ei.INTEGRATORS[method].evals_per_step
    return nfe - nfe % per


def counted(model: Callable) -> tuple[Callable, list[int]]:
    calls = [0]

    def f(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        calls[0] += 1
        if not torch.is_tensor(t) or t.ndim == 0:
            t = torch.full((x.shape[0],), float(t), dtype=torch.float64)
        return model(x, t.to(torch.float64))

    return f, calls


def enc_error(out: torch.Tensor, exact: torch.Tensor) -> float:
    if not torch.isfinite(out).all():
        return math.inf
    return float(((out - exact).abs().amax(1) / exact.abs().amax(1)).max())


def rt_error(back: torch.Tensor, x0: torch.Tensor) -> float:
    if not torch.isfinite(back).all():
        return math.inf
    return float(((back - x0).norm(dim=1) / x0.norm(dim=1)).max())


def geometric_mean(r: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in r) / len(r)) if all(0 < v < math.inf for v in r) else math.inf


def _f64_alphas(s, sde: ei.DiscreteVP) -> None:
    s.alphas_cumprod = sde.alphas_cumprod.to(torch.float64).clone()


def run_ddim(model, x0, sde, n, alpha1):
    import diffusers

    inv = diffusers.DDIMInverseScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=alpha1)
    inv.set_timesteps(n)
    _f64_alphas(inv, sde)
    inv.initial_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if alpha1 else inv.alphas_cumprod[0]
    f, calls = counted(model)
    x = x0.clone()
    for t in inv.timesteps:
        x = inv.step(f(x, t), t, x).prev_sample
    fwd = diffusers.DDIMScheduler(beta_schedule="linear", clip_sample=False, set_alpha_to_one=alpha1)
    fwd.set_timesteps(n)
    _f64_alphas(fwd, sde)
    fwd.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64) if alpha1 else fwd.alphas_cumprod[0]
    y = x.clone()
    for t in fwd.timesteps:
        y = fwd.step(f(y, t), t, y).prev_sample
    return x, float(inv.timesteps[-1]), calls[0] // 2, y


def run_dpm(model, x0, sde, n, order, algo):
    import diffusers

    inv = diffusers.DPMSolverMultistepInverseScheduler(beta_schedule="linear", solver_order=order,
                                                       algorithm_type=algo)
    inv.set_timesteps(n)
    ts = inv.timesteps.to(torch.float64)
    inv.sigmas = sde.rho(torch.cat([ts, torch.tensor([float(inv.noisiest_timestep)], dtype=torch.float64)]))
    f, calls = counted(model)
    x = x0.clone()
    for t in inv.timesteps:
        x = inv.step(f(x, t), t, x).prev_sample
    nfe = calls[0]
    fwd = diffusers.DPMSolverMultistepScheduler(beta_schedule="linear", solver_order=order, algorithm_type=algo,
                                                final_sigmas_type="sigma_min")
    fwd.set_timesteps(n)
    tf = fwd.timesteps.to(torch.float64)
    fwd.sigmas = sde.rho(torch.cat([tf, torch.tensor([0.0], dtype=torch.float64)]))
    y = x.clone()
    for t in fwd.timesteps:
        y = fwd.step(f(y, t), t, y).prev_sample
    return x, float(inv.noisiest_timestep), nfe, y


def peer_run(name, model, x0, sde, n):
    if name.startswith("DDIM"):
        return run_ddim(model, x0, sde, n, alpha1=name.endswith("alpha1"))
    algo = "dpmsolver++" if "++" in name else "dpmsolver"
    return run_dpm(model, x0, sde, n, int(name[-1]), algo)


def ddim_end(n: int) -> float:
    return float(1000 - 1000 // n)


def measure(args) -> tuple[dict, dict]:
    """results[(problem, nfe)][config] = (enc, rt, nfe_used); timings per problem."""
    res: dict = {}
    timing: dict = {}
    for sde_name, make in SDES.items():
        sde = make()
        for mix_name in MIXTURES:
            prob = f"{sde_name}/{mix_name}"
            t0 = time.perf_counter()
            mix = get_problem(mix_name)
            flow = sde_name == "flow"  # a velocity model, as flow-matching models are (issue 21)
            model = mix.flow_model(sde) if flow else mix.eps_model(sde)
            pred = "flow" if flow else "eps"
            x0 = mix.sample_marginal(sde, sde.t_min, args.n, torch.Generator().manual_seed(args.seed))
            ddpm = sde_name.startswith("ddpm")
            ends = sorted({sde.t_max} | ({ddim_end(n) for n in args.nfe} if ddpm else set()))
            refs = mix.reference(sde, x0, sde.t_min, ends, rtol=RTOL, atol=RTOL)
            exact = {e: refs[i] for i, e in enumerate(ends)}
            t_ref = time.perf_counter() - t0
            for n in args.nfe:
                row = res.setdefault((prob, n), {})
                for grid in GRIDS if ddpm else GRIDS[:1]:
                    for m in CANDIDATES:
                        k = our_nfe(m, n)
                        sol = ei.invert(model, x0, sde, method=m, nfe=k, grid=grid, solution=True, prediction=pred)
                        back = ei.sample(model, sol.x, sde, method=m, nfe=k, grid=grid, t_start=sde.t_max,
                                         t_end=sde.t_min, prediction=pred)
                        row[f"{m} / {grid}"] = (enc_error(sol.x, exact[sde.t_max]), rt_error(back, x0), sol.nfe)
                if ddpm:
                    for p in PEERS:
                        x, end, used, back = peer_run(p, model, x0, sde, n)
                        row[p] = (enc_error(x, exact[end]), rt_error(back, x0), used)
            timing[prob] = (t_ref, time.perf_counter() - t0)
            print(f"{prob}: reference {t_ref:.1f} s, total {timing[prob][1]:.1f} s", flush=True)
    return res, timing


def fmt(v: float) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.2e}"


def choose(res: dict, nfes: list[int]) -> tuple[dict, dict]:
    """Per nfe: the method on uniform_logrho (the one grid measured on every problem) with the lowest geometric
    mean of the relative encoding error over all problems; methods that need nfe to be a multiple of their stage
    count (logrhoss3) are not eligible (they cannot serve every nfe)."""
    probs = sorted({p for p, _ in res})
    winner, ranking = {}, {}
    for n in nfes:
        scores = {}
        for m in CANDIDATES:
            if ei.INTEGRATORS[m].evals_per_step != 1:
                continue
            scores[m] = geometric_mean([res[(p, n)][f"{m} / uniform_logrho"][0] for p in probs])
        ranking[n] = sorted(scores.items(), key=lambda kv: kv[1])
        winner[n] = ranking[n][0][0]
    return winner, ranking


def rule_from(winner: dict, nfes: list[int]) -> tuple[tuple[int | None, str], ...]:
    """(largest nfe, method) with the switch at the geometric midpoint between measured budgets."""
    return tuple(switch_rule({n: winner[n] for n in nfes}))


def method_for(rule, n: int) -> str:
    return next(name for top, name in rule if top is None or n <= top)


def write(res: dict, timing: dict, args, wall: float, command: str) -> list[str]:
    nfes = args.nfe
    probs = sorted({p for p, _ in res})
    winner, ranking = choose(res, nfes)
    rule = rule_from(winner, nfes)
    L = ["# Inversion: encoding data to noise along the probability-flow ODE", "",
         f"Command: `{command}` — wall time {wall:.0f} s on the shared 2-core machine (OMP_NUM_THREADS=1), "
         f"{args.n} draws per problem, seed {args.seed}. Generated by benchmarks/bench_inversion.py; see its "
         "docstring for the definitions.", "",
         "Encoding error = max over draws of max|x_end - exact| / max|exact| (exact: DOP853, rtol = atol = 1e-12, "
         "from the run's own start time and state to its own end time). Round trip = max over draws of "
         "|sample(invert(x0)) - x0| / |x0| (2-norms), same method, nfe and grid. Data: exact draws of the "
         "marginal at t_min (DDPM: timestep 0; EDM: sigma 0.002; rectified flow: t = 0.001, a velocity model, "
         "prediction=\"flow\"). All in float64.", "",
         "## What each peer run starts and ends at", ""]
    L += [f"* **{k}**: {v}" for k, v in START_END.items()]
    L += ["", "Our runs: t_min -> t_max (DDPM timestep 0 -> 999, EDM sigma 0.002 -> 80, flow t 0.001 -> 0.9999), "
          "exactly the stated nfe (logrhoss3: 9 / 18 / 48).", "",
          f"## Rule: INVERSION_DEFAULTS_BY_NFE = {rule!r}, INVERSION_GRID = 'uniform_logrho'", "",
          "Per NFE, the method with the lowest geometric mean over all nine problems of the relative encoding "
          "error on uniform_logrho (the one grid measured on every problem: quadratic_t is a time-quadratic grid "
          "for variance-preserving schedules and is not laid under EDM); methods that need a multiple of three "
          "evaluations (logrhoss3) are not eligible. The switch between measured budgets is at their geometric "
          "midpoint.", ""]
    L += ["| NFE | chosen | geo-mean enc. error | runner-up | geo-mean | default in sampling.py when run (" +
          method_for(INVERSION_DEFAULTS_BY_NFE, 10) + f" / {INVERSION_GRID}) |", "|---|---|---|---|---|---|"]
    prev = {n: method_for(INVERSION_DEFAULTS_BY_NFE, n) for n in nfes}
    for n in nfes:
        rk = dict(ranking[n])
        L.append(f"| {n} | {winner[n]} | {fmt(ranking[n][0][1])} | {ranking[n][1][0]} | {fmt(ranking[n][1][1])} "
                 f"| {fmt(rk.get(prev[n], math.inf))} |")
    summary = []
    L += ["", "## Chosen default against the best peer (DDPM problems)", "",
          "| NFE | default | worst ratio to best peer | geo-mean ratio | worst round-trip ratio | geo-mean "
          "round-trip ratio |", "|---|---|---|---|---|---|"]
    for n in nfes:
        d = f"{winner[n]} / uniform_logrho"
        er, rr = [], []
        for p in probs:
            row = res[(p, n)]
            peers = [row[q] for q in PEERS if q in row]
            if not peers:
                continue
            er.append(row[d][0] / min(v[0] for v in peers))
            rr.append(row[d][1] / min(v[1] for v in peers))
        line = f"| {n} | {winner[n]} | {max(er):.2e} | {geometric_mean(er):.2e} | {max(rr):.2e} | " \
               f"{geometric_mean(rr):.2e} |"
        L.append(line)
        summary.append(line)
    for n in nfes:
        d = f"{winner[n]} / uniform_logrho"
        L += ["", f"## NFE {n}", "",
              "Encoding error (round trip in brackets); ratio = encoding error / best peer's on that problem.", "",
              "| problem | best of ours | default " + winner[n] + " / uniform_logrho | ratio | best peer | " +
              " | ".join(PEERS) + " |", "|" + "---|" * (5 + len(PEERS))]
        for p in probs:
            row = res[(p, n)]
            ours = {k: v for k, v in row.items() if " / " in k}
            best = min(ours, key=lambda k: ours[k][0])
            peers = {q: row[q] for q in PEERS if q in row}
            bp = min(peers, key=lambda q: peers[q][0]) if peers else None
            bpe = peers[bp][0] if bp else math.nan
            cells = [p, f"{best}: {fmt(ours[best][0])} ({fmt(ours[best][1])})",
                     f"{fmt(row[d][0])} ({fmt(row[d][1])})", f"{row[d][0] / bpe:.2e}" if bp else "–",
                     f"{bp}: {fmt(bpe)}" if bp else "–"]
            cells += [f"{fmt(peers[q][0])} ({fmt(peers[q][1])}) [{peers[q][0] / bpe:.1f}x]" if q in peers else "–"
                      for q in PEERS]
            L.append("| " + " | ".join(cells) + " |")
        L += ["", f"All of ours at NFE {n}: geometric mean over problems of the encoding error (round trip), "
              "uniform_logrho over nine problems, quadratic_t over the three DDPM ones (uniform_logrho on the same "
              "three in the last column).", "", "| method | uniform_logrho | quadratic_t (DDPM) | uniform_logrho "
              "(DDPM) |", "|---|---|---|---|"]
        ddpm = [p for p in probs if p.startswith("ddpm")]
        for m in CANDIDATES:
            u = [res[(p, n)][f"{m} / uniform_logrho"] for p in probs]
            q = [res[(p, n)][f"{m} / quadratic_t"] for p in ddpm]
            ud = [res[(p, n)][f"{m} / uniform_logrho"] for p in ddpm]
            g = [f"{fmt(geometric_mean([v[0] for v in s]))} ({fmt(geometric_mean([v[1] for v in s]))})"
                 for s in (u, q, ud)]
            L.append(f"| {m} | " + " | ".join(g) + " |")
    L += ["", "## Timings", "", "| problem | reference (s) | total (s) |", "|---|---|---|"]
    L += [f"| {p} | {a:.1f} | {b:.1f} |" for p, (a, b) in timing.items()]
    OUT.write_text("\n".join(L) + "\n")
    print(f"rule: {rule!r}")
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res, timing = measure(args)
    wall = time.perf_counter() - start
    command = "OMP_NUM_THREADS=1 python benchmarks/bench_inversion.py " + " ".join(sys.argv[1:])
    for line in write(res, timing, args, wall, command.strip()):
        print(line)
    print(f"wall time {wall:.1f} s; wrote {OUT}")


if __name__ == "__main__":
    main()
