"""Command line: ``ei-toolkit`` / ``python -m ei_toolkit``.

``compare`` (the default) measures accuracy per model evaluation on a Gaussian-mixture problem against the
exact ODE solution, for our integrators, prints the tables and writes a plot; the same comparison against
diffusers and k-diffusion is the benchmark script ``python benchmarks/compare.py`` (same options).
``describe`` derives a built-in or user SDE and prints its closed forms, how each was obtained, and a
numerical self-check.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ei_toolkit.compare import Peer

BUILTIN_SDES = ("vp", "subvp", "cosine", "ve", "edm", "ddpm")


def make_sde(name: str):  # returns a LinearSDE
    import ei_toolkit as ei

    table = {
        "vp": ei.VPSDE,
        "subvp": ei.SubVPSDE,
        "cosine": ei.CosineVPSDE,
        "ve": ei.VESDE,
        "edm": ei.EDM,
        "ddpm": ei.DiscreteVP.linear,
    }
    if name not in table:
        raise SystemExit(f"unknown SDE {name!r}; choose one of {', '.join(table)}")
    return table[name]()


def describe(args: argparse.Namespace) -> int:
    import ei_toolkit as ei

    start = time.perf_counter()
    if args.drift is not None or args.diffusion is not None:
        if args.drift is None or args.diffusion is None:
            raise SystemExit("give both --drift and --diffusion for a custom SDE")
        params = dict(kv.split("=", 1) for kv in args.param)
        sde = ei.LinearSDE(drift=args.drift, diffusion=args.diffusion, t_max=args.t_max,
                           **{k: float(v) for k, v in params.items()})
    else:
        sde = make_sde(args.sde)
    built = time.perf_counter() - start
    print(sde.describe())
    t = torch.linspace(sde.t_min, sde.t_max, 10001, dtype=torch.float64)
    err = (sde.t_of_rho(sde.rho(t)) - t).abs().max().item()
    print(f"  built in {built:.3f} s; rho range [{sde.rho_min:.6g}, {sde.rho_max:.6g}]; "
          f"max |t(rho(t)) - t| on 10001 points = {err:.1e}")
    return 0


DEFAULT_COMPARE_METHODS = ("ddim", "tab3", "rhoab3", "logrhoab2", "logrhoab3", "ipndm", "rhork-kutta3", "euler")


PEER_COMPARISON = "python benchmarks/compare.py"


def add_compare_options(c: argparse.ArgumentParser) -> None:
    """The options of ``compare``, shared with ``benchmarks/compare.py`` (which adds ``--no-peers``)."""
    c.add_argument("--problem", default="gmm2d", help="gmm2d, gmm2d-sharp, gmm16, gmm64-sharp (default gmm2d)")
    c.add_argument("--sde", default="ddpm", help=f"{', '.join(BUILTIN_SDES)} (default ddpm: peers need it)")
    c.add_argument("--methods", nargs="+", default=list(DEFAULT_COMPARE_METHODS), help="method names, or 'all'")
    c.add_argument("--grids", nargs="+", default=None,
                   help="grid names, or 'all' (default: each method's recommended grid)")
    c.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 15, 20, 50])
    c.add_argument("--n", type=int, default=1000, help="number of trajectories")
    c.add_argument("--out", default="ei_toolkit_compare.png", help="where to write the plot")


def compare_command(args: argparse.Namespace, peers: Mapping[str, Peer] | None = None) -> int:
    """Run the comparison for parsed ``compare`` options: our integrators, and ``peers`` if given (``None``:
    ours only, with a pointer to the peer comparison)."""
    from pathlib import Path

    from ei_toolkit import GRIDS, INTEGRATORS, Integrator, compare

    planned = [n for n, m in INTEGRATORS.items() if isinstance(m, Integrator)]
    methods = planned if args.methods == ["all"] else args.methods
    for m in methods:
        if m not in INTEGRATORS:
            raise SystemExit(f"unknown method {m!r}; valid methods: {', '.join(INTEGRATORS)}")
    grids = list(GRIDS) if args.grids == ["all"] else args.grids
    for g in grids or []:
        if g not in GRIDS:
            raise SystemExit(f"unknown grid {g!r}; valid grids: {', '.join(GRIDS)}")
    sde = make_sde(args.sde)
    if peers is None:
        note = f"none here (against diffusers and k-diffusion: {PEER_COMPARISON})"
    else:
        note = ", ".join(peers) or "none"
    print(f"Comparing on {args.problem} ({args.n} trajectories), {sde!r}, NFE {args.nfe}; peers: {note}")
    pairs = [(m, g or INTEGRATORS[m].default_grid) for g in (grids or [None]) for m in methods]
    rows = compare.run_comparison(problems=[args.problem], sde=sde, nfes=args.nfe, n=args.n, peers=peers,
                                  pairs=pairs)
    print()
    print(compare.summary_table(rows))
    print()
    print(compare.full_table(rows, args.problem))
    out = compare.plot(rows, Path(args.out), highlight=[f"{m} / {INTEGRATORS[m].default_grid}" for m in methods[:4]])
    print(f"\nplot written to {out}")
    if peers is None:
        print(f"against diffusers and k-diffusion (from a source checkout, bench extra): {PEER_COMPARISON}")
    return 0


def sample_command(args: argparse.Namespace) -> int:
    import ei_toolkit as ei
    from ei_toolkit.models import load_digits_model
    from ei_toolkit.png import image_grid, write_png

    model = load_digits_model()
    sde = ei.DiscreteVP.linear()
    x = torch.randn(args.n, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed))
    start = time.perf_counter()
    with torch.no_grad():
        kw = {"method": args.method} if args.method else {}
        sol = ei.solve(model, x, sde, nfe=args.nfe, grid=args.grid, t_end=sde.t0, **kw)
    took = time.perf_counter() - start
    out = write_png(args.out, image_grid(sol.x, cols=args.cols))
    print(f"{args.n} digits with {sol.method} on the {sol.grid} grid, NFE {sol.nfe}, in {took:.2f} s -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ei-toolkit", description="Exponential integrators for diffusion models.")
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("compare", help=f"accuracy vs NFE of our integrators (default; with peers: {PEER_COMPARISON})",
                       epilog=f"The comparison against diffusers and k-diffusion: {PEER_COMPARISON} (same options).")
    add_compare_options(c)
    c.add_argument("--no-peers", action="store_true", help="no effect: kept for old command lines (no peers here)")
    c.set_defaults(func=compare_command)
    sp_ = sub.add_parser("sample", help="draw digits from the shipped model trained on scikit-learn's 8x8 digits")
    sp_.add_argument("--n", type=int, default=64, help="number of digits (default 64)")
    sp_.add_argument("--nfe", type=int, default=10)
    sp_.add_argument("--method", default=None, help="integrator (default: the sample() default)")
    sp_.add_argument("--grid", default=None)
    sp_.add_argument("--cols", type=int, default=8)
    sp_.add_argument("--seed", type=int, default=0)
    sp_.add_argument("--out", default="digits.png", help="PNG to write (default digits.png)")
    sp_.set_defaults(func=sample_command)
    p = sub.add_parser("describe", help="derive an SDE and show its closed forms")
    p.add_argument("--sde", default="vp", help=f"built-in SDE: {', '.join(BUILTIN_SDES)} (default vp)")
    p.add_argument("--drift", help="custom drift F(t), e.g. '-(a + b*t)/2'")
    p.add_argument("--diffusion", help="custom diffusion G(t), e.g. 'sqrt(a + b*t)'")
    p.add_argument("--t-max", type=float, default=1.0)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.set_defaults(func=describe)
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["compare", *argv]  # the default command
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
