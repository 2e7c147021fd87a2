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
    lines += ["", "median ratio: best ei_toolkit / best peer (below 1: ours is more accurate); only samplers that made "
              "exactly NFE model evaluations are ranked" + ("; n/a: no peer ran" if "n/a" in "".join(lines) else "")]
    return "\n".join(lines)


def full_table(rows: Sequence[Row], problem: str, metric: str = "median") -> str:
    """Every sampler's error at every NFE for one problem (rows sorted by the error at the middle NFE), with a
    footnote that explains the ``(k)`` and ``-`` cells when there are any."""
    nfes = sorted({r.nfe for r in rows if r.problem == problem})
    samplers = list(dict.fromkeys(r.sampler for r in rows if r.problem == problem))
    val = {(r.sampler, r.nfe): r for r in rows if r.problem == problem}
    mid = nfes[len(nfes) // 2]
    samplers.sort(key=lambda s: val[(s, mid)].median if (s, mid) in val else math.inf)
    head = "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    lines = [head, "|---" * (len(nfes) + 1) + "|"]
    other = missing = False
    for s in samplers:
        cells = []
        for n in nfes:
            r = val.get((s, n))
            if r is None:
                cells.append("-")
                missing = True
            else:
                v = getattr(r, metric)
                cells.append(f"{v:.2e}" + (f" ({r.nfe_used})" if r.nfe_used != n else ""))
                other = other or r.nfe_used != n
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    notes = []
    if other:
        notes.append("(k): the sampler made k model evaluations instead of the column's NFE (it cannot hit that "
                     "budget exactly); such cells are never ranked best")
    if missing:
        notes.append("-: the method cannot run with exactly that NFE (e.g. a 3-stage Runge-Kutta method needs a "
                     "multiple of 3)")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def peer_families(names: Sequence[str]) -> str:
    """The libraries of peer names such as ``"diffusers DPM++2M / karras"`` (their first words), comma-separated."""
    return ", ".join(dict.fromkeys(n.split()[0] for n in names if n.split()))


PEER_COLOUR = "0.55"  # the grey of the peer family
MARKERS = "osD^v<>pXh*"


def figure(rows: Sequence[Row], highlight: Sequence[str] | None = None):  # returns a matplotlib Figure
    """Median error vs NFE, one panel per problem: our samplers (``highlight``, default all of ours; distinct
    colours and markers), every peer as one faint grey family, and two bold envelopes, the best of ours and the
    best peer at each NFE, with the ratio of the two written at each NFE. One legend, outside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    problems = list(dict.fromkeys(r.problem for r in rows))
    ours = list(dict.fromkeys(r.sampler for r in rows if r.ours)) if highlight is None else list(highlight)
    peer_names = list(dict.fromkeys(r.sampler for r in rows if not r.ours))
    cols = min(2, len(problems))
    nrows = math.ceil(len(problems) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.6 * cols + 3.4, 4.8 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(problems):]:
        ax.set_visible(False)
    colours = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 7]  # no grey: that is the peers'
    handles: dict[str, Line2D] = {}
    for ax, p in zip(axes.flat, problems, strict=False):
        nfes = sorted({r.nfe for r in rows if r.problem == p})
        for s in peer_names:  # the family: faint, unlabelled one by one
            pts = sorted((r.nfe_used, r.median) for r in rows if r.problem == p and r.sampler == s)
            if pts:
                ax.plot(*zip(*pts, strict=True), "-", color=PEER_COLOUR, lw=0.8, alpha=0.35, zorder=1)
        if peer_names:
            handles["peers"] = Line2D([], [], color=PEER_COLOUR, lw=0.8, alpha=0.6,
                                      label=f"each peer ({len(peer_names)}: {peer_families(peer_names)})")
        for i, s in enumerate(ours):
            pts = [(r.nfe, r.median) for r in rows if r.problem == p and r.sampler == s and r.nfe_used == r.nfe]
            if pts:
                (line,) = ax.plot(*zip(*pts, strict=True), "-", marker=MARKERS[i % len(MARKERS)], ms=4, lw=1.2,
                                  color=colours[i % len(colours)], alpha=0.85, zorder=6, label=s)
                handles.setdefault(s, line)
        env = [(n, best(rows, p, n, True)) for n in nfes]
        penv = [(n, best(rows, p, n, False)) for n in nfes]
        if any(r for _, r in penv):
            (line,) = ax.plot([n for n, r in penv if r], [r.median for n, r in penv if r], "--", color="#b2182b",
                              lw=3, zorder=4, label="best peer at each NFE")
            handles["best peer"] = line
        (line,) = ax.plot([n for n, r in env if r], [r.median for n, r in env if r], "-", color="black", lw=3.2,
                          zorder=5, label="ei_toolkit best at each NFE")
        handles["ours best"] = line
        for (n, a), (_, b) in zip(env, penv, strict=True):
            if a and b:
                ax.annotate(f"{a.median / b.median:.2f}x", (n, min(a.median, b.median)), xytext=(0, -11),
                            textcoords="offset points", ha="center", va="top", fontsize=7.5, zorder=7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(nfes, [str(n) for n in nfes])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("NFE (model evaluations)")
        ax.set_ylabel("median trajectory RMS error")
        ax.set_title(f"{p}: median error vs NFE (lower is better)", fontsize=10)
        lo = min((r.median for r in rows if r.problem == p and math.isfinite(r.median) and r.median > 0),
                 default=None)
        if lo is not None:
            ax.set_ylim(bottom=lo / 3)  # room for the ratios under the lowest line
        ax.grid(True, which="major", alpha=0.3)
    if "best peer" in handles:
        handles["ratio"] = Line2D([], [], ls="none", label="0.50x (under the lines): ours best / best peer")
    order = ["ours best", "best peer", "ratio", *ours, "peers"]
    legend = [handles[k] for k in order if k in handles]
    fig.legend(handles=legend, loc="outside right center", fontsize=8, frameon=False)
    return fig


def plot(rows: Sequence[Row], path: str | Path, highlight: Sequence[str] | None = None) -> Path:
    """Write :func:`figure` of ``rows`` to ``path`` (PNG; its directory is created)."""
    import matplotlib.pyplot as plt

    fig = figure(rows, highlight)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
