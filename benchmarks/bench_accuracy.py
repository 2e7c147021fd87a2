"""Accuracy per model evaluation against the exact ODE solution: every registered method of ours on every grid
against every peer configuration (``peers.py``: diffusers DPM-Solver++ 2M/3M/2S/3S and UniPC bh1/bh2 on the
official DPM-Solver grids and Karras sigmas, k-diffusion on Karras sigmas), on Gaussian mixtures (exact eps) of
several widths, down to near-degenerate ones, under each built-in SDE family.

Problem = (SDE, mixture). SDEs: DDPM linear and scaled-linear DiscreteVP (1000 steps, t = 999 -> 0), continuous
VP (1 -> 1e-3), cosine (0.9946 -> 1e-3), EDM (sigma 80 -> 0.002), VE (sigma 50 -> 0.01 at t = 1 -> 1e-5).
Mixtures: 8 components on a circle in 2-d (width 0.1), 5 in 16-d (0.15), 10 in 64-d (0.03), 10 in 256-d (0.02).
Every sampler runs from ``--n`` exact draws of x at t_max to t_min with a budget of NFE model evaluations; the
figure is the median over trajectories of the per-trajectory RMS error to the ODE solution (DOP853, rtol = atol =
1e-10, log-rho frame: :func:`ei_toolkit.testing.reference_solution`), cached on disk in benchmarks/.cache.
Ours: every deterministic, plan-based (not black-box), fixed-NFE method of ``ei.INTEGRATORS`` on every grid of
``ei.GRIDS`` (its default grid is one of them), so that newly registered methods appear without editing this file.

Writes benchmarks/results/accuracy.md, accuracy.png (best peer, best of ours, our default per problem) and
accuracy.json, {problem: {nfe: {config: median_error}}} with only the
configurations that used exactly NFE evaluations; our configurations are named "method / grid", the peers'
start with "diffusers " or "k-diffusion ".

Run: python benchmarks/bench_accuracy.py [--quick] [--n 64] [--nfe 5 10 20] [--sdes ...] [--mixtures ...]
(--quick: 16 trajectories, DDPM linear and EDM, the 2-d and 256-d mixtures, NFE 10; it writes
benchmarks/.cache/accuracy_quick.md/json). Needs the bench extra: bash scripts/setup.sh bench && pip install
--no-deps k-diffusion.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peers import available_peers

import ei_toolkit as ei
from ei_toolkit.integrators import Integrator
from ei_toolkit.testing import GaussianMixture

OUT = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache"
RTOL = 1e-10


def _scaled_linear() -> ei.DiscreteVP:
    """The scaled-linear DDPM schedule of latent diffusion (betas uniform in sqrt from 0.00085 to 0.012)."""
    return ei.DiscreteVP(np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)


SDES: dict[str, Callable[[], ei.LinearSDE]] = {
    "ddpm-linear": ei.DiscreteVP.linear,
    "ddpm-scaled": _scaled_linear,
    "vp": ei.VPSDE,
    "cosine": ei.CosineVPSDE,
    "edm": ei.EDM,
    "ve": ei.VESDE,
}


def _mixture(name: str, means: torch.Tensor, width: float, seed: int) -> GaussianMixture:
    k = means.shape[0]
    w = torch.rand(k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5
    return GaussianMixture(means=means, stds=torch.full((k,), width, dtype=torch.float64), weights=w / w.sum(),
                           name=name)


def _circle(k: int, radius: float) -> torch.Tensor:
    ang = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return radius * torch.stack([ang.cos(), ang.sin()], 1)


def _random(k: int, dim: int, scale: float, seed: int) -> torch.Tensor:
    return scale * torch.randn(k, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


MIXTURES: dict[str, Callable[[], GaussianMixture]] = {
    "2d-w0.1": lambda: _mixture("2d-w0.1", _circle(8, 0.7), 0.1, 1),
    "16d-w0.15": lambda: _mixture("16d-w0.15", _random(5, 16, 0.4, 16), 0.15, 17),
    "64d-w0.03": lambda: _mixture("64d-w0.03", _random(10, 64, 0.3, 64), 0.03, 65),
    "256d-w0.02": lambda: _mixture("256d-w0.02", _random(10, 256, 0.3, 256), 0.02, 257),
}


def our_methods() -> list[str]:
    """Every deterministic, plan-based, fixed-NFE method of the registry that runs on scalar SDEs."""
    return [n for n, m in ei.INTEGRATORS.items()
            if isinstance(m, Integrator) and not m.stochastic and not m.black_box
            and getattr(m, "evals_per_step", None) is not None]


def _key(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:24]


def start_and_reference(sde_name: str, sde: ei.LinearSDE, mix_name: str, mix: GaussianMixture, n: int,
                        seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n exact draws of x at sde.t_max, their ODE solution at sde.t_min), cached on disk by value."""
    x = mix.sample_marginal(sde, sde.t_max, n, torch.Generator().manual_seed(seed))
    key = _key(repr(sde.key), sde.t_max, sde.t_min, mix.means.numpy().tobytes(), mix.stds.numpy().tobytes(),
               mix.weights.numpy().tobytes(), x.numpy().tobytes(), RTOL)
    path = CACHE / f"ref_{sde_name}_{mix_name}_{n}_{key}.pt"
    if path.exists():
        return x, torch.load(path, weights_only=True)
    ref = mix.reference(sde, x, sde.t_max, sde.t_min, rtol=RTOL)
    CACHE.mkdir(exist_ok=True)
    torch.save(ref, path)
    return x, ref


def switch_rule(picks: dict[int, Any]) -> list[tuple[int | None, Any]]:
    """A default per budget from the picks at the measured budgets: (largest nfe, pick) per run of equal picks,
    switching at the geometric midpoint int(sqrt(n * next)) of the two budgets either side of a change; the last
    entry has no bound (None)."""
    nfes = sorted(picks)
    rule: list[tuple[int | None, Any]] = []
    for nfe, nxt in zip(nfes, [*nfes[1:], None], strict=True):
        if nxt is not None and picks[nxt] == picks[nfe]:
            continue
        rule.append((None if nxt is None else int(math.sqrt(nfe * nxt)), picks[nfe]))
    return rule


def geometric_mean(r: list[float]) -> float:
    """The geometric mean of positive ratios (inf if one is not finite and positive)."""
    return math.exp(sum(math.log(v) for v in r) / len(r)) if all(0 < v < math.inf for v in r) else math.inf


def median_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Median over trajectories of the per-trajectory RMS error (inf if the output is not finite)."""
    if not bool(torch.isfinite(out).all()):
        return math.inf
    return float((out.double() - ref).reshape(len(ref), -1).pow(2).mean(1).sqrt().median())


def run(sdes: list[str], mixtures: list[str], nfes: list[int], n: int, seed: int = 0, log: bool = True
        ) -> tuple[dict, dict, list[str]]:
    """({problem: {nfe: {config: median}}} over configurations that used exactly nfe evaluations,
    {problem: {nfe: {config: nfe_used}}} for those that did not, notes)."""
    peers = available_peers()
    methods = our_methods()
    results: dict[str, dict[int, dict[str, float]]] = {}
    mismatched: dict[str, dict[int, dict[str, int]]] = {}
    notes: list[str] = []
    for s in sdes:
        sde = SDES[s]()
        data = {m: start_and_reference(s, sde, m, MIXTURES[m](), n, seed) for m in mixtures}
        models = {m: MIXTURES[m]().eps_model(sde) for m in mixtures}
        for m in mixtures:
            results[f"{s}/{m}"] = {k: {} for k in nfes}
            mismatched[f"{s}/{m}"] = {k: {} for k in nfes}
        start = time.perf_counter()
        for k in nfes:
            for meth in methods:
                for g in ei.GRIDS:
                    for m in mixtures:  # the plan (method, SDE, grid) is built once and reused across mixtures
                        x, ref = data[m]
                        try:
                            sol = ei.solve(models[m], x, sde, method=meth, nfe=k, grid=g)
                        except ValueError as e:  # e.g. an NFE this method cannot take
                            if m == mixtures[0] and g == "uniform_t":
                                notes.append(f"{s}, {meth}, NFE {k}: skipped ({e})")
                            break
                        except ei.NumericalError as e:
                            notes.append(f"{s}/{m}, {meth} / {g}, NFE {k}: numerical error ({e})")
                            continue
                        if sol.nfe != k:
                            mismatched[f"{s}/{m}"][k][f"{meth} / {g}"] = sol.nfe
                            continue
                        results[f"{s}/{m}"][k][f"{meth} / {g}"] = median_error(sol.x, ref)
            for name, peer in peers.items():
                for m in mixtures:
                    x, ref = data[m]
                    out, t_end, used = peer(models[m], x, sde, k)
                    if abs(t_end - sde.t_min) > 1e-9 * max(1.0, abs(sde.t_min)):
                        raise AssertionError(f"{name} ended at t = {t_end}, not at t_min = {sde.t_min}")
                    if used != k:
                        mismatched[f"{s}/{m}"][k][name] = used
                        continue
                    results[f"{s}/{m}"][k][name] = median_error(out, ref)
            if log:
                for m in mixtures:
                    r = results[f"{s}/{m}"][k]
                    ours = min((c for c in r if not is_peer(c)), key=r.__getitem__)
                    peer = min((c for c in r if is_peer(c)), key=r.__getitem__, default=None)
                    pv = f"{peer} {r[peer]:.2e}" if peer else "no peer"
                    print(f"{s}/{m} NFE {k}: ours {ours} {r[ours]:.2e}; {pv}  ({time.perf_counter() - start:.0f} s)",
                          flush=True)
    return results, mismatched, notes


def is_peer(config: str) -> bool:
    """A peer's configuration (every benchmark names them so): diffusers', k-diffusion's, the flow_matching
    package's."""
    return config.startswith(("diffusers ", "k-diffusion ", "flow_matching "))


def problem_sde(problem: str) -> ei.LinearSDE:
    """The SDE of a problem named "sde / mixture" (the keys of the results)."""
    return SDES[problem.split("/")[0]]()


def model_dim(name: str) -> int:
    """Elements per sample of a trained model of bench_trained.py (the guided digits ``digits-guided-<scale>``: the
    digits model's)."""
    from ei_toolkit.models.registry import shipped_model

    return math.prod(shipped_model("digits" if name.startswith("digits-guided-") else name).shape)


def problem_dim(problem: str) -> int:
    """The data dimension of a problem named "sde / <dim>d-w<width>" (the keys of the results)."""
    return int(problem.split("/", 1)[1].split("d-", 1)[0])


def default_config(nfe: int | str, problem: str | None = None) -> str:
    """``ei.sample``'s default configuration at ``nfe`` on ``problem``'s SDE and dimension (None: a variance-preserving
    one, low-dimensional), named as in the results ("method / grid")."""
    from ei_toolkit.sampling import default_method

    if problem is None:
        return " / ".join(default_method(int(nfe)))
    return " / ".join(default_method(int(nfe), sde=problem_sde(problem), dim=problem_dim(problem)))


def add_vp_or_logrho(results: dict) -> dict:
    """Add "method / vp_or_logrho" to every problem and NFE: the method on quadratic_t where the problem's SDE is
    variance preserving, on uniform_logrho where it is not (``grids.vp_or_logrho``: the grid a default entry
    VP_OR_LOGRHO resolves to)."""
    from ei_toolkit.grids import vp_or_logrho

    for problem, by_nfe in results.items():
        grid = vp_or_logrho(problem_sde(problem))
        for configs in by_nfe.values():
            for config in [c for c in configs if c.endswith(" / quadratic_t") and not is_peer(c)]:
                method = config.rsplit(" / ", 1)[0]
                if f"{method} / {grid}" in configs:
                    configs[f"{method} / vp_or_logrho"] = configs[f"{method} / {grid}"]
    return results


def _dagger(by_nfe: dict, config: str, nfe: int) -> str:
    """"†" if ``config`` has a larger error at some larger NFE (an error cancellation at ``nfe``)."""
    v = by_nfe[nfe][config]
    return "†" if any(k > nfe and by_nfe[k].get(config, 0.0) > v for k in by_nfe) else ""


def _fmt(v: float) -> str:
    return f"{v:.2e}" if math.isfinite(v) else "inf"


def report(results: dict, mismatched: dict, notes: list[str], args: argparse.Namespace, took: float) -> str:
    methods = our_methods()
    nfes = sorted({k for p in results.values() for k in p})
    peers = sorted({c for p in results.values() for r in p.values() for c in r if is_peer(c)})
    cmd = "python benchmarks/bench_accuracy.py" + (" --quick" if args.quick else "")
    lines = [
        "# Accuracy per model evaluation: ei_toolkit against DPM-Solver++, UniPC and k-diffusion",
        "",
        f"Median over {args.n} trajectories of the per-trajectory RMS error to the exact ODE solution (DOP853, "
        f"rtol = atol = {RTOL:g}, log-rho frame), from exact draws at t_max to t_min. Problems: SDE / mixture "
        "(see the docstring of `benchmarks/bench_accuracy.py`). Ours: every deterministic plan-based method of "
        f"the registry ({len(methods)}: {', '.join(methods)}) on every grid ({', '.join(ei.GRIDS)}); the "
        "default `ei.sample` configuration depends on NFE: "
        f"{', '.join(f'`{default_config(k)}` at {k}' for k in nfes)}. Peers ({len(peers)}): {', '.join(peers)}. Only "
        "configurations that used exactly NFE model evaluations are ranked. "
        f"Command: `{cmd}` ({took:.0f} s on this machine). Machine-readable: "
        f"`{'accuracy_quick' if args.quick else 'accuracy'}.json` = {{problem: {{nfe: {{config: median error}}}}}}.",
        "",
        "## Best peer configuration against ours, per problem and NFE",
        "",
        "| problem | NFE | best peer | error | best of ours | error | ratio | default | ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios_best: dict[int, list[float]] = {k: [] for k in nfes}
    ratios_default: dict[int, list[float]] = {k: [] for k in nfes}
    for p, by_nfe in results.items():
        for k in nfes:
            r = by_nfe.get(k, {})
            ours = [c for c in r if not is_peer(c)]
            theirs = [c for c in r if is_peer(c)]
            if not ours or not theirs:
                continue
            bo, bp = min(ours, key=r.__getitem__), min(theirs, key=r.__getitem__)
            d = r.get(default_config(k, p), math.inf)
            ratios_best[k].append(r[bo] / r[bp])
            ratios_default[k].append(d / r[bp])
            lines.append(f"| {p} | {k} | {bp}{_dagger(by_nfe, bp, k)} | {_fmt(r[bp])} | {bo}{_dagger(by_nfe, bo, k)} | "
                         f"{_fmt(r[bo])} | {r[bo] / r[bp]:.2f} | {_fmt(d)} | {d / r[bp]:.2f} |")
    lines += ["", "† the configuration's error at a larger NFE is larger: a cancellation of errors at this NFE, not a "
              "trend.", "", "Ratios to the best peer over all problems (geometric mean / worst):", "",
              "| NFE | best of ours: geo. mean | worst | default: geo. mean | worst |", "|---|---|---|---|---|"]
    for k in nfes:
        if ratios_best[k]:
            gb, gd = np.exp(np.mean(np.log(ratios_best[k]))), np.exp(np.mean(np.log(ratios_default[k])))
            lines.append(f"| {k} | {gb:.2f} | {max(ratios_best[k]):.2f} | {gd:.2f} | {max(ratios_default[k]):.2f} |")
    lines += ["", "## Each of our methods (on its default grid, and on its best grid per problem) against the best "
              "peer", "",
              "Ratio of the method's median error to the best peer configuration's on the same problem and NFE "
              "(< 1: ours is more accurate); geometric mean and worst over the problems, then per problem.", ""]
    for k in nfes:
        lines += [f"### NFE {k}", "",
                  "| method / default grid | geo. mean | worst | best grid: geo. mean | worst |",
                  "|---|---|---|---|---|"]
        for meth in methods:
            dcfg = f"{meth} / {ei.INTEGRATORS[meth].default_grid}"
            rd, rb = [], []
            for by_nfe in results.values():
                r = by_nfe.get(k, {})
                theirs = [r[c] for c in r if is_peer(c)]
                mine = [r[c] for c in r if c.startswith(f"{meth} / ")]
                if not theirs or not mine:
                    continue
                rd.append(r.get(dcfg, math.inf) / min(theirs))
                rb.append(min(mine) / min(theirs))
            if rd:
                g = lambda v: np.exp(np.mean(np.log(v))) if all(map(math.isfinite, v)) else math.inf  # noqa: E731
                lines.append(f"| {dcfg} | {g(rd):.2f} | {max(rd):.2f} | {g(rb):.2f} | {max(rb):.2f} |")
        probs = list(results)
        lines += ["", f"Per problem, NFE {k}, default grid (columns: " + ", ".join(
            f"{i + 1} = {p}" for i, p in enumerate(probs)) + ")", "",
            "| method | " + " | ".join(str(i + 1) for i in range(len(probs))) + " |",
            "|---" * (len(probs) + 1) + "|"]
        for meth in methods:
            dcfg = f"{meth} / {ei.INTEGRATORS[meth].default_grid}"
            cells = []
            for p in probs:
                r = results[p].get(k, {})
                theirs = [r[c] for c in r if is_peer(c)]
                cells.append(f"{r[dcfg] / min(theirs):.2f}" if dcfg in r and theirs else "-")
            lines.append(f"| {meth} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Every configuration, per problem (median error; sorted by the error at the middle NFE)", ""]
    for p, by_nfe in results.items():
        configs = sorted({c for r in by_nfe.values() for c in r})
        mid = nfes[len(nfes) // 2]
        configs.sort(key=lambda c: by_nfe.get(mid, {}).get(c, math.inf))
        lines += [f"### {p}", "", "| config | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                  "|---" * (len(nfes) + 1) + "|"]
        for c in configs:
            lines.append(f"| {c} | " + " | ".join(_fmt(by_nfe[k][c]) if c in by_nfe.get(k, {}) else "-"
                                                  for k in nfes) + " |")
        lines.append("")
    odd = sorted({(c, k, u) for by in mismatched.values() for k, r in by.items() for c, u in r.items()})
    if odd:
        lines += ["Not ranked (used a different number of evaluations than the budget): "
                  + "; ".join(f"{c} at NFE {k} used {u}" for c, k, u in odd) + ".", ""]
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in sorted(set(notes))] + [""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path:
    """Median error against NFE, one panel per problem: the best peer configuration, the best of ours (each an
    envelope over configurations) and our default."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = list(results)
    cols = 4
    rows = math.ceil(len(probs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.7 * rows + 0.6), squeeze=False)
    for ax in axes.flat[len(probs):]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, probs, strict=False):
        by = results[p]
        nfes = sorted(by, key=int)
        curves = {
            "best peer": [min((v for c, v in by[k].items() if is_peer(c)), default=math.nan) for k in nfes],
            "best of ours": [min((v for c, v in by[k].items() if not is_peer(c)), default=math.nan) for k in nfes],
            "default (by NFE)": [by[k].get(default_config(k, p), math.nan) for k in nfes],
        }
        for (label, ys), style in zip(curves.items(), ["k--", "C0-", "C1:"], strict=True):
            ax.plot([int(k) for k in nfes], ys, style, marker="o", ms=3, label=label)
        ax.set(xscale="log", yscale="log", title=p)
        ax.set_xticks([int(k) for k in nfes], [str(k) for k in nfes])
        ax.minorticks_off()
        ax.title.set_fontsize(8)
        ax.tick_params(labelsize=7)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.supxlabel("NFE", fontsize=8)
    fig.supylabel("median trajectory RMS error", fontsize=8)
    fig.tight_layout(rect=(0.02, 0.5 / (2.7 * rows + 0.6), 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small run (see the module docstring)")
    ap.add_argument("--n", type=int, default=None, help="trajectories per problem (default 64; quick 16)")
    ap.add_argument("--nfe", nargs="+", type=int, default=None)
    ap.add_argument("--sdes", nargs="+", default=None, choices=list(SDES))
    ap.add_argument("--mixtures", nargs="+", default=None, choices=list(MIXTURES))
    ap.add_argument("--plot-only", action="store_true", help="redraw accuracy.png from results/accuracy.json")
    ap.add_argument("--report-only", action="store_true", help="rewrite accuracy.md and .png from results/"
                    "accuracy.json (after a change of the default: the figures stay, the default's columns follow)")
    args = ap.parse_args(argv)
    if args.plot_only:
        plot(json.loads((OUT / "accuracy.json").read_text()), OUT / "accuracy.png")
        return
    if args.report_only:
        saved = json.loads((OUT / "accuracy.json").read_text())
        results = {p: {int(k): r for k, r in by.items()} for p, by in saved.items()}
        old = (OUT / "accuracy.md").read_text()
        took = float(old.split("` (", 1)[1].split(" s on this machine")[0]) if " s on this machine" in old else 0.0
        args.n = args.n or 64
        text = report(results, {p: {k: {} for k in by} for p, by in results.items()},
                      ["report rewritten from accuracy.json by --report-only (runs that used another NFE are not "
                       "listed)"], args, took)
        (OUT / "accuracy.md").write_text(text + "\n")
        plot(saved, OUT / "accuracy.png")
        return
    if args.quick:
        args.n = args.n or 16
        args.nfe = args.nfe or [10]
        args.sdes = args.sdes or ["ddpm-linear", "edm"]
        args.mixtures = args.mixtures or ["2d-w0.1", "256d-w0.02"]
    args.n = args.n or 64
    args.nfe = args.nfe or [5, 10, 20]
    args.sdes = args.sdes or list(SDES)
    args.mixtures = args.mixtures or list(MIXTURES)
    torch.set_num_threads(1)
    start = time.perf_counter()
    results, mismatched, notes = run(args.sdes, args.mixtures, args.nfe, args.n)
    took = time.perf_counter() - start
    out, stem = (CACHE, "accuracy_quick") if args.quick else (OUT, "accuracy")
    out.mkdir(exist_ok=True)
    finite = {p: {str(k): {c: v for c, v in r.items() if math.isfinite(v)} for k, r in by.items()}
              for p, by in results.items()}
    (out / f"{stem}.json").write_text(json.dumps(finite, indent=1) + "\n")
    text = report(results, mismatched, notes, args, took)
    (out / f"{stem}.md").write_text(text + "\n")
    plot(finite, out / f"{stem}.png")
    print(text.split("## Each of our methods")[0])


if __name__ == "__main__":
    main()
