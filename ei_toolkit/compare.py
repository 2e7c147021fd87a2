"""Accuracy per model evaluation, against the exact ODE solution, for our integrators and optional peers.

For each Gaussian-mixture problem (exact eps), trajectories start from exact samples of x at t_start and
are integrated to t_end with a budget of NFE model evaluations; the error is measured against the
probability-flow ODE solved by dopri5 at tolerance 1e-10 (in log rho) to the time each sampler ends at.
Two figures per run: the RMS over all trajectories, and the median over trajectories of each trajectory's
RMS error (robust to the rare trajectory that sits on a boundary between modes and flips).

Peers (other libraries' samplers) are passed in by the caller; this module imports none. A :data:`Peer` is
a callable ``peer(model, x, sde, nfe) -> (x_end, t_end, nfe_used)``:

* ``model(x, t) -> eps`` is the problem's exact noise prediction, ``t`` a batch of times of ``sde``;
* ``x`` holds the trajectories at ``sde.t_max``; the peer integrates them towards ``sde.t_min`` with a
  budget of ``nfe`` model evaluations (peers run only over that full range);
* it returns the trajectories where it stops, the time ``t_end`` it stops at (read off its final noise
  level, so that it is compared with the exact solution at that very time), and the number of model
  evaluations it made (rows where that differs from ``nfe`` are tabulated but never ranked best).

The diffusers and k-diffusion drivers live outside the package, in ``benchmarks/peers.py``; the comparison
with them is ``python benchmarks/compare.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .grids import GRIDS
from .integrators import INTEGRATORS, Integrator
from .sampling import solve
from .sde import DiscreteVP, LinearSDE
from .testing import get_problem

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Peer = Callable[[Model, torch.Tensor, LinearSDE, int], tuple[torch.Tensor, float, int]]
"""``peer(model, x, sde, nfe) -> (x_end, t_end, nfe_used)``: see the module docstring."""


@dataclass
class Row:
    problem: str
    sampler: str  # "method / grid" for ours, the peer's name otherwise
    ours: bool
    nfe: int  # requested budget
    nfe_used: int
    rms: float
    median: float
    t_end: float
    seconds: float


def _errors(x: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    d = (x.double() - ref).reshape(len(x), -1)
    per = d.pow(2).mean(1).sqrt()
    return float(d.pow(2).mean().sqrt()), float(per.median())


def run_comparison(
    problems: Sequence[str] = ("gmm2d",),
    sde: LinearSDE | None = None,
    methods: Sequence[str] | None = None,
    grids: Sequence[str] | None = None,
    nfes: Sequence[int] = (5, 10, 15, 20, 50),
    n: int = 1000,
    peers: Mapping[str, Peer] | None = None,
    seed: int = 0,
    t_start: float | None = None,
    t_end: float | None = None,
    log: bool = False,
    pairs: Sequence[tuple[str, str]] | None = None,
) -> list[Row]:
    """Every (method, grid) of ours (``pairs``, or all of ``methods`` x ``grids``) and every one of ``peers``
    (name -> :data:`Peer`) at every NFE on every problem.

    Raises ValueError if peers are given with ``t_start`` / ``t_end`` other than ``sde.t_max`` / ``sde.t_min``.
    """
    sde = sde or DiscreteVP.linear()
    t_start = sde.t_max if t_start is None else t_start
    t_end = sde.t_min if t_end is None else t_end
    if pairs is None:
        planned = [n for n, m in INTEGRATORS.items() if isinstance(m, Integrator)]
        pairs = [(m, g) for m in (methods or planned) for g in (grids or GRIDS)]
    adaptive = [m for m, _ in pairs if getattr(INTEGRATORS[m], "evals_per_step", None) is None]
    if adaptive:
        raise ValueError(f"the comparison runs fixed-NFE methods; {', '.join(sorted(set(adaptive)))} are adaptive")
    peer_fns = dict(peers or {})
    if peer_fns and (t_start != sde.t_max or t_end != sde.t_min):
        raise ValueError(f"peers integrate from sde.t_max = {sde.t_max} to sde.t_min = {sde.t_min}; "
                         f"got t_start = {t_start}, t_end = {t_end}")
    rows: list[Row] = []
    for pname in problems:
        problem = get_problem(pname)
        model = problem.eps_model(sde)
        x = problem.sample_marginal(sde, t_start, n, torch.Generator().manual_seed(seed))
        refs: dict[float, torch.Tensor] = {}

        def reference(t: float, problem=problem, x=x, refs=refs) -> torch.Tensor:
            key = round(t, 9)
            if key not in refs:
                refs[key] = problem.reference(sde, x, t_start, t) if t < t_start else x
            return refs[key]

        reference(t_end)
        for nfe in nfes:
            for m, g in pairs:
                if not INTEGRATORS[m].accepts_nfe(nfe):
                    continue
                start = time.perf_counter()
                sol = solve(model, x, sde, method=m, nfe=nfe, grid=g, t_start=t_start, t_end=t_end)
                rms, med = _errors(sol.x, reference(t_end))
                rows.append(Row(pname, f"{m} / {g}", True, nfe, sol.nfe, rms, med, t_end,
                                time.perf_counter() - start))
            for name, peer in peer_fns.items():
                start = time.perf_counter()
                out, te, used = peer(model, x, sde, nfe)
                rms, med = _errors(out, reference(te))
                rows.append(Row(pname, name, False, nfe, used, rms, med, te, time.perf_counter() - start))
            if log:
                best = min((r for r in rows if r.problem == pname and r.nfe == nfe), key=lambda r: r.median)
                print(f"  {pname} NFE {nfe}: best {best.sampler} median {best.median:.2e}", flush=True)
    return rows


def best(rows: Sequence[Row], problem: str, nfe: int, ours: bool) -> Row | None:
    cands = [r for r in rows if r.problem == problem and r.nfe == nfe and r.ours == ours and r.nfe_used == nfe
             and math.isfinite(r.median)]
    return min(cands, key=lambda r: r.median) if cands else None


def summary_table(rows: Sequence[Row]) -> str:
    """Per problem and NFE: the best of ours against the best peer, and the ratio of median errors."""
    lines = ["| problem | NFE | best ei_toolkit (median / RMS) | best peer (median / RMS) | median ratio |",
             "|---|---|---|---|---|"]
    for p in dict.fromkeys(r.problem for r in rows):
        for nfe in sorted({r.nfe for r in rows if r.problem == p}):
            a, b = best(rows, p, nfe, True), best(rows, p, nfe, False)
            if a is None:
                continue
            peer = f"{b.sampler}: {b.median:.2e} / {b.rms:.2e}" if b else "n/a"
            ratio = f"{a.median / b.median:.2f}" if b else "n/a"
            lines.append(f"| {p} | {nfe} | {a.sampler}: {a.median:.2e} / {a.rms:.2e} | {peer} | {ratio} |")
    return "\n".join(lines)


def full_table(rows: Sequence[Row], problem: str, metric: str = "median") -> str:
    """Every sampler's error at every NFE for one problem (rows sorted by the error at the middle NFE)."""
    nfes = sorted({r.nfe for r in rows if r.problem == problem})
    samplers = list(dict.fromkeys(r.sampler for r in rows if r.problem == problem))
    val = {(r.sampler, r.nfe): r for r in rows if r.problem == problem}
    mid = nfes[len(nfes) // 2]
    samplers.sort(key=lambda s: val[(s, mid)].median if (s, mid) in val else math.inf)
    head = "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    lines = [head, "|---" * (len(nfes) + 1) + "|"]
    for s in samplers:
        cells = []
        for n in nfes:
            r = val.get((s, n))
            if r is None:
                cells.append("-")
            else:
                v = getattr(r, metric)
                cells.append(f"{v:.2e}" + (f" ({r.nfe_used})" if r.nfe_used != n else ""))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[Row], path: str | Path, highlight: Sequence[str] = ()) -> Path:
    """Median error vs NFE: our best (envelope), our highlighted methods, and every peer; one panel per
    problem."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = list(dict.fromkeys(r.problem for r in rows))
    cols = min(2, len(problems))
    nrows = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.5 * cols, 4.2 * nrows + 1.6), squeeze=False)
    for ax in axes.flat[len(problems):]:
        ax.set_visible(False)
    for ax, p in zip(axes.flat, problems, strict=False):
        nfes = sorted({r.nfe for r in rows if r.problem == p})
        env = [(n, best(rows, p, n, True)) for n in nfes]
        ax.plot([n for n, r in env if r], [r.median for n, r in env if r], "k-", lw=2.5, label="ei_toolkit best")
        penv = [(n, best(rows, p, n, False)) for n in nfes]
        if any(r for _, r in penv):
            ax.plot([n for n, r in penv if r], [r.median for n, r in penv if r], "k--", lw=2.5, label="best peer")
        for s in highlight:
            pts = [(r.nfe, r.median) for r in rows if r.problem == p and r.sampler == s and r.nfe_used == r.nfe]
            if pts:
                ax.plot(*zip(*pts, strict=True), "-o", ms=3, label=s)
        for s in dict.fromkeys(r.sampler for r in rows if r.problem == p and not r.ours):
            pts = [(r.nfe_used, r.median) for r in rows if r.problem == p and r.sampler == s]
            ax.plot(*zip(*pts, strict=True), ":", lw=1, label=s)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("median trajectory RMS error")
        ax.set_title(p)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 1.4 / (4.2 * nrows + 1.6), 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
