"""Rectified flow (issue 21): the default grid for flow models, chosen by measurement, and its error against diffusers'
flow schedulers.

Problems: the four Gaussian mixtures of ``ei_toolkit.testing.problems`` under :class:`ei_toolkit.RectifiedFlow`, with
the exact velocity (``GaussianMixture.flow_model``: v = eps - E[x0 | x_t]). Each sampler starts from z ~ N(0, I)
(float64, 256 draws, seed 0) at its own first sigma and runs to the data (sigma = 0); its error is the relative RMS
distance to the exact ODE solution from that start (DOP853 on dx/dt = v at rtol 1e-11,
``GaussianMixture.flow_reference``): ||x - x_ref|| / ||x_ref|| over the batch.

Peers (diffusers, driven step by step as a pipeline drives them, the model called at the scheduler's own sigma, model
calls counted by a wrapper; a peer whose smallest run exceeds the budget is left out at that NFE):
FlowMatchEulerDiscreteScheduler (shift 1, 3), FlowMatchHeunDiscreteScheduler (shift 1, 3; the largest step count within
the budget), DPMSolverMultistepScheduler and UniPCMultistepScheduler with use_flow_sigmas=True,
prediction_type="flow_prediction", flow_shift 1 or 3, orders 2 and 3 (UniPC bh1 and bh2). The ``flow_matching``
package (Lipman et al. 2024, "Flow Matching Guide and Code"): its ``ODESolver.sample`` with the fixed-step torchdiffeq
methods its documentation names (euler, midpoint, heun3) and rk4, on its uniform time grid (its time runs from noise,
0, to data, 1: sigma = 1 - t and its velocity is minus ours), the most steps within the budget.

Ours: from t = 1 (pure noise, the exact first step of ei_toolkit.diffusion.zero_snr) to t = 0, every combination of
the candidate methods and grids below. The rule: per NFE, among our (method, grid) within 1.5x of the best peer
configuration on every one of the four problems (issue 21's bound), the one with the lowest geometric-mean ratio,
switching at the geometric midpoints of the measured budgets, is the mixture-only rule. RectifiedFlow.DEFAULTS_BY_NFE
(what ``ei.sample`` uses for a flow model when no method is given, below ``grids.HIGH_DIM`` elements per sample, as
every mixture here is) is chosen over these mixtures and the trained flow models below that size together (issue 26:
``benchmarks/choose_default.py --flow-raw`` on this script's ``--raw`` JSON); the script reports both, and the code
default's ratios here and on two held-out mixtures the rules do not see.

Run: ``python benchmarks/bench_flow.py [--out benchmarks/results/flow.md]`` (about three minutes on one core).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from bench_accuracy import switch_rule
from choose_default import every_budget

import ei_toolkit as ei
from ei_toolkit.diffusion.scheduler import FLOW_METHOD
from ei_toolkit.sampling import default_method
from ei_toolkit.testing.problems import GaussianMixture, get_problem

PROBLEMS = ("gmm2d", "gmm2d-sharp", "gmm16", "gmm64-sharp")
HELD_OUT = ("gmm8-heldout", "gmm32-heldout")  # other means, widths and dimensions; not seen by the rule
WORST = 1.5  # issue 21's target: never above 1.5x the best peer
NFES = (5, 8, 10, 15, 20, 30)
BATCH = 256
GRIDS = ("uniform_sigma", "sd3_shift", "quadratic_t", "uniform_t", "uniform_logrho", "karras")
SCHEDULER_METHODS = ("ddim", "logrhoab1", "logrhoab1-pc", "logrhoab2-pc", "logrhoab1-mid", "logrhoab2",
                     "x0-logrhoab1-mid-pc", "logrhoab3")  # EIScheduler's candidates on FlowMatchEuler's own sigmas
METHODS = ("ddim", "logrhoab1-mid", "logrhoab2", "logrhoab3", "x0-logrhoab1", "x0-logrhoab2", "x0-logrhoab3",
           "x0-logrhoab1-mid", "x0-logrhoab1-mid-pc", "logrhoab1-pc", "x0-logrhoab1-pc", "logrhoab2-pc",
           "x0-logrhoab2-pc", "ipndm", "logrhoss2", "logrhoss3", "x0-logrhoss2", "x0-logrhoss3", "tab1", "tab2", "tab3",
           "x0-tab1", "x0-tab2", "x0-tab3", "x0-tss2", "x0-tss3")
"""Our candidates: the multistep family in log rho and in t (tAB-DEIS, on eps and on x0), iPNDM and the singlestep
methods with stages in log rho and in t (the flow_matching peers' Runge-Kutta steps on uniform time are strong from
NFE 15 on)."""


def held_out(name: str) -> GaussianMixture:
    """Mixtures the rule does not see: 6 components in 8 dimensions (std 0.08) and 12 in 32 (std 0.05)."""
    k, dim, std, seed = (6, 8, 0.08, 808) if name == "gmm8-heldout" else (12, 32, 0.05, 3232)
    g = torch.Generator().manual_seed(seed)
    means = 0.5 * torch.randn(k, dim, generator=g, dtype=torch.float64)
    w = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    return GaussianMixture(means=means, stds=torch.full((k,), std, dtype=torch.float64), weights=w / w.sum(),
                           name=name)


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


class Counted:
    """The exact velocity, counting calls."""

    def __init__(self, v):
        self.v, self.calls = v, 0

    def __call__(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        self.calls += 1
        return self.v(x, torch.full((x.shape[0],), float(sigma), dtype=torch.float64))


def run_scheduler(sched, steps: int, v, z: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """(x at sigma = 0, the first sigma, model calls) of a diffusers flow scheduler driven as a pipeline does."""
    sched.set_timesteps(steps)
    model = Counted(v)
    x = z.clone()
    sigmas = sched.sigmas.to(torch.float64)
    for i, t in enumerate(sched.timesteps):
        # the sigma the scheduler is at (Heun repeats timesteps: its own index says which)
        k = sched.step_index if getattr(sched, "step_index", None) is not None else i
        x = sched.step(model(x, float(sigmas[k])), t, x).prev_sample
    return x, float(sigmas[0]), model.calls


def peers() -> dict[str, tuple[object, bool]]:
    """name -> (factory, steps are evaluations)."""
    import diffusers as d

    out: dict[str, tuple[object, bool]] = {}
    for shift in (1.0, 3.0):
        out[f"FlowMatchEuler shift {shift:g}"] = (lambda s=shift: d.FlowMatchEulerDiscreteScheduler(shift=s), True)
        out[f"FlowMatchHeun shift {shift:g}"] = (lambda s=shift: d.FlowMatchHeunDiscreteScheduler(shift=s), False)
        for order in (2, 3):
            out[f"DPM++ {order}M flow shift {shift:g}"] = (
                lambda s=shift, o=order: d.DPMSolverMultistepScheduler(
                    use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=s, solver_order=o), True)
            for kind in ("bh1", "bh2"):
                out[f"UniPC-{order} {kind} flow shift {shift:g}"] = (
                    lambda s=shift, o=order, k=kind: d.UniPCMultistepScheduler(
                        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=s, solver_order=o,
                        solver_type=k), True)
    return out


FM_METHODS = {"euler": 1, "midpoint": 2, "heun3": 3, "rk4": 4}  # flow_matching ODESolver method -> evaluations a step


def run_flow_matching(method: str, steps: int, v, z: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """(x at sigma = 0, the first sigma, model calls) of the flow_matching package's ODESolver on ``steps`` uniform
    steps of its time t = 1 - sigma (noise at 0, data at 1; its velocity dx/dt is -v)."""
    from flow_matching.solver import ODESolver

    model = Counted(v)

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -model(x, 1.0 - float(t))

    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    x = ODESolver(velocity_model=velocity).sample(x_init=z.clone(), step_size=None, method=method, time_grid=grid)
    return x, 1.0, model.calls


def flow_matching_peers() -> dict[str, str]:
    """peer name -> torchdiffeq method of the flow_matching package's ODESolver, or none if the package is not
    installed (pip install flow_matching; it needs only torch, numpy and torchdiffeq)."""
    try:
        import flow_matching.solver  # noqa: F401
    except ImportError:
        print("flow_matching is not installed: its ODESolver is left out of the peers", flush=True)
        return {}
    return {f"flow_matching ODESolver {m}": m for m in FM_METHODS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "flow.md"))
    ap.add_argument("--raw", default=None, help="also write every error as JSON to this file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    flow = ei.RectifiedFlow()
    ours: dict[tuple[str, str, int], list[float]] = {}
    theirs: dict[tuple[str, int], list[float]] = {}
    used: dict[tuple[str, int], int] = {}
    peer_list = peers()
    fm_list = flow_matching_peers()
    on_sched: dict[tuple[str, float, int], list[float]] = {}
    import diffusers as d

    from ei_toolkit.diffusion import EIScheduler
    for name in PROBLEMS + HELD_OUT:
        mix = get_problem(name) if name in PROBLEMS else held_out(name)
        v = mix.flow_model(flow)
        z = torch.randn(BATCH, mix.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        refs: dict[float, torch.Tensor] = {1.0: mix.flow_reference(z, 1.0, 0.0)}
        for shift in (1.0, 3.0):  # EIScheduler's default: methods on FlowMatchEulerDiscreteScheduler's sigmas
            for steps in (10, 28):
                sched = EIScheduler.from_config(d.FlowMatchEulerDiscreteScheduler(shift=shift).config)
                sched.set_timesteps(steps)
                for method in SCHEDULER_METHODS:
                    x = ei.sample(v, z, flow, method=method, grid=torch.as_tensor(sched._grid), prediction="flow")
                    on_sched.setdefault((method, shift, steps), []).append(rel_error(x, refs[1.0]))
        for nfe in NFES:
            for method in METHODS:
                for grid in GRIDS:
                    x = ei.sample(v, z, flow, method=method, grid=grid, nfe=nfe, prediction="flow", t_end=0.0)
                    ours.setdefault((method, grid, nfe), []).append(rel_error(x, refs[1.0]))
            for peer, (make, steps_are_evals) in peer_list.items():
                best = None
                for steps in ([nfe] if steps_are_evals else range(nfe, 0, -1)):
                    x, s0, calls = run_scheduler(make(), steps, v, z)
                    if calls <= nfe:
                        best = (x, s0, calls)
                        break
                if best is None:
                    continue
                x, s0, calls = best
                if s0 not in refs:
                    refs[s0] = mix.flow_reference(z, s0, 0.0)
                theirs.setdefault((peer, nfe), []).append(rel_error(x, refs[s0]))
                used[(peer, nfe)] = calls
            for peer, fm_method in fm_list.items():  # the most steps whose evaluations fit the budget
                steps = nfe // FM_METHODS[fm_method]
                if steps < 1:
                    continue
                x, s0, calls = run_flow_matching(fm_method, steps, v, z)
                theirs.setdefault((peer, nfe), []).append(rel_error(x, refs[s0]))
                used[(peer, nfe)] = calls

    if args.raw:
        Path(args.raw).write_text(json.dumps({"ours": [[*k, v] for k, v in ours.items()],
                                              "theirs": [[*k, v] for k, v in theirs.items()]}))

    def gmean(v: list[float]) -> float:
        return float(np.exp(np.mean(np.log(v)))) if all(map(math.isfinite, v)) else math.nan

    k = len(PROBLEMS)  # the rule's problems come first in every list of errors; the held-out ones after

    def best_peer(nfe: int, table: dict) -> str:
        cands = {p: e[:k] for (p, n), e in table.items() if n == nfe and all(map(math.isfinite, e))}
        return min(cands, key=lambda p: gmean(cands[p]))

    def ratios(mine: list[float], peer: list[float]) -> list[float]:
        return [a / b for a, b in zip(mine, peer, strict=True)]

    # The rule: per NFE, among our (method, grid) whose error is within WORST of the best peer configuration's on
    # every problem, the lowest geometric-mean ratio (none within: the lowest worst ratio); switch at the geometric
    # midpoints of the measured budgets.
    picks = {}
    for nfe in NFES:
        peer = theirs[(best_peer(nfe, theirs), nfe)][:k]
        scored = [(gmean(ratios(e[:k], peer)), max(ratios(e[:k], peer)), m, g) for (m, g, n), e in ours.items()
                  if n == nfe and every_budget(m)]
        within = [c for c in scored if c[1] <= WORST]
        picks[nfe] = (min(within) if within else min(scored, key=lambda c: c[1]))[2:]
    rule = [(top, *pick) for top, pick in switch_rule(picks)]
    flow_default = {nfe: flow.default_method(nfe) for nfe in NFES}
    sampling_default = {nfe: default_method(nfe) for nfe in NFES}  # (method, grid): the VP-chosen default
    agrees = all(flow_default[n] == picks[n] for n in NFES)
    lines = ["# Rectified flow: the default for flow models and diffusers' flow schedulers", "",
             f"`python benchmarks/bench_flow.py` ({time.perf_counter() - start:.0f} s, one thread). "
             f"{len(PROBLEMS)} mixtures ({', '.join(PROBLEMS)}) under ei.RectifiedFlow with the exact velocity, "
             f"{BATCH} draws of z, float64, sampled from pure noise to sigma = 0; error = relative RMS distance to "
             "the exact ODE solution from each sampler's own start (DOP853, rtol 1e-11). Held out (not used by the "
             f"rule): {', '.join(HELD_OUT)}. See the script's docstring.", "",
             "## The rule and the default", "",
             f"Per NFE, among our (method, grid) spending one evaluation per step (so that a pick holds between the "
             f"measured budgets) within {WORST:g}x of the best peer configuration on every problem, "
             "the lowest geometric-mean ratio; switching at the geometric midpoints of the measured budgets: "
             + ", ".join(f"{m} on {g} up to {top}" if top is not None else f"{m} on {g} beyond" for top, m, g in rule)
             + ". RectifiedFlow.DEFAULTS_BY_NFE in the code, chosen over these mixtures and the trained flow models "
             "below grids.HIGH_DIM elements per sample (choose_default.py --flow-raw, benchmarks/results/"
             "default.md): "
             + ", ".join(f"{n}: {m} on {g}" for n, (m, g) in flow_default.items())
             + (" (the same as the mixture-only rule)." if agrees else " (differs from the mixture-only rule where "
                "the trained flow models disagree with the mixtures)."), "",
             "This is an in-sample choice over four problems; the held-out columns below test it on mixtures the "
             "rule did not see.", "",
             "## sample()'s default for flow models vs the best peer, per NFE", "",
             "Ratio = our error / the best peer configuration's (the peer with the lowest geometric mean over the "
             "rule's problems at that NFE), per problem and in geometric mean; the general default (the VP-chosen "
             "method and grid per NFE; nan where this script does not run it) for comparison.", "",
             "| NFE | ours | best peer | " + " | ".join(PROBLEMS + HELD_OUT)
             + " | geometric mean ratio (rule's problems) | worst ratio | held out: geometric mean / worst "
             "| general default's ratio |",
             "|---|---|---|" + "---|" * len(PROBLEMS + HELD_OUT) + "---|---|---|---|"]
    summary = []
    for nfe in NFES:
        m, g = flow_default[nfe]
        mine = ours[(m, g, nfe)]
        bp = best_peer(nfe, theirs)
        r = ratios(mine, theirs[(bp, nfe)])
        gm_, gg_ = sampling_default[nfe]
        general = (gmean(ratios(ours[(gm_, gg_, nfe)][:k], theirs[(bp, nfe)][:k])) if (gm_, gg_, nfe) in ours
                   else math.nan)  # nan: not among this script's candidates
        summary.append((nfe, gmean(r[:k]), max(r[:k]), gmean(r[k:]), max(r[k:])))
        lines.append(f"| {nfe} | {m} on {g} {gmean(mine[:k]):.3g} | {bp} ({used[(bp, nfe)]} evals) "
                     f"{gmean(theirs[(bp, nfe)][:k]):.3g} | " + " | ".join(f"{x:.2f}" for x in r)
                     + f" | {gmean(r[:k]):.2f} | {max(r[:k]):.2f} | {gmean(r[k:]):.2f} / {max(r[k:]):.2f} "
                     f"| {' on '.join(sampling_default[nfe])} {general:.2f} |")
    lines += ["", "## How far the peers are from each other", "",
              "The target 'never above 1.5x the best peer configuration on a mixture' measured on the peers "
              "themselves: the best peer configuration's worst ratio to the per-mixture best of all peer "
              "configurations, and the runner-up peer configuration's worst and geometric-mean ratio to the best one "
              "(the rule's problems). Errors on the sharp mixtures are dominated by the draws that settle on "
              "another component than the exact solution's, so a ratio jumps between budgets and methods.", "",
              "| NFE | best peer configuration | its worst ratio to the per-mixture best peer | runner-up | its worst "
              "ratio | its gm ratio | ours (default): worst ratio |", "|---|---|---|---|---|---|---|"]
    for nfe, _, worst_ours, _, _ in summary:
        bp = best_peer(nfe, theirs)
        finite = {p: e[:k] for (p, n), e in theirs.items() if n == nfe and all(map(math.isfinite, e))}
        oracle = [min(e[i] for e in finite.values()) for i in range(k)]
        runner = min((p for p in finite if p != bp), key=lambda p: gmean(finite[p]))
        r = ratios(finite[runner], finite[bp])
        lines.append(f"| {nfe} | {bp} | {max(ratios(finite[bp], oracle)):.2f} | {runner} | {max(r):.2f} | "
                     f"{gmean(r):.2f} | {worst_ours:.2f} |")
    lines += ["", "## Every peer (geometric mean error over the rule's problems; model calls used)", "",
              "UniPC bh1 with use_flow_sigmas returns NaN (nan below): its last step, into sigma = 0, has h = inf and "
              "bh1's B(h) = -h.", "",
              "| peer | " + " | ".join(f"NFE {n}" for n in NFES) + " |", "|---|" + "---|" * len(NFES)]
    for peer in [*peer_list, *fm_list]:
        cells = [f"{gmean(theirs[(peer, n)][:k]):.3g} ({used[(peer, n)]})" if (peer, n) in theirs else "-"
                 for n in NFES]
        lines.append(f"| {peer} | " + " | ".join(cells) + " |")
    lines += ["", "## Ours: the eight best (method, grid) per NFE (geometric mean error over the rule's problems)", ""]
    for nfe in NFES:
        ranked = sorted(((gmean(e[:k]), m, g) for (m, g, n), e in ours.items() if n == nfe))[:8]
        lines.append(f"- NFE {nfe}: " + "; ".join(f"{m} on {g} {e:.3g}" for e, m, g in ranked))
    lines += ["", "## Ours: each grid with the best method on it, per NFE (geometric mean error, rule's problems)", "",
              "| grid | " + " | ".join(f"NFE {n}" for n in NFES) + " |", "|---|" + "---|" * len(NFES)]
    for g in GRIDS:
        lines.append(f"| {g} | " + " | ".join(
            "{:.3g} ({})".format(*min((gmean(ours[(m, g, n)][:k]), m) for m in METHODS)) for n in NFES) + " |")
    lines += ["", "## EIScheduler's default method on FlowMatchEulerDiscreteScheduler's own sigmas", "",
              "A flow pipeline with EIScheduler keeps FlowMatchEuler's schedule (its shift included); per method the "
              "geometric mean error over the rule's problems (ddim is FlowMatchEuler's Euler step):", "",
              "| method | shift 1, 10 steps | shift 1, 28 steps | shift 3, 10 steps | shift 3, 28 steps |",
              "|---|---|---|---|---|"]
    for m in SCHEDULER_METHODS:
        lines.append(f"| {m}{' (FLOW_METHOD)' if m == FLOW_METHOD else ''} | " + " | ".join(
            f"{gmean(on_sched[(m, sh, n)][:k]):.3g}" for sh in (1.0, 3.0) for n in (10, 28)) + " |")
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)
    print("summary (nfe, gm ratio, worst ratio, held-out gm, held-out worst):",
          [(n, *(round(v, 3) for v in rest)) for n, *rest in summary])


if __name__ == "__main__":
    main()
