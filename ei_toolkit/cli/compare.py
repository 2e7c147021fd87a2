"""``ei-toolkit compare``: accuracy per model evaluation of our integrators on a Gaussian-mixture problem against
the exact ODE solution, tables and a plot (matplotlib: the ``bench`` extra). The same comparison against diffusers
and k-diffusion is ``python benchmarks/compare.py`` (same options, through :func:`add_compare_options`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .common import BUILTIN_SDES, check_method, make_sde, positive_int, require_matplotlib, unknown, writable_path

if TYPE_CHECKING:
    from ei_toolkit.compare import Peer

DEFAULT_COMPARE_METHODS = ("ddim", "tab3", "rhoab3", "logrhoab2", "logrhoab3", "ipndm", "rhork-kutta3", "euler")
PEER_COMPARISON = "python benchmarks/compare.py"


def add_compare_options(c: argparse.ArgumentParser) -> None:
    """The options of ``compare``, shared with ``benchmarks/compare.py`` (which adds ``--no-peers``)."""
    c.add_argument("--problem", default="gmm2d", help="gmm2d, gmm2d-sharp, gmm16, gmm64-sharp (default: gmm2d)")
    c.add_argument("--sde", default="ddpm", help=f"{', '.join(BUILTIN_SDES)} (default: ddpm; peers need it)")
    c.add_argument("--methods", nargs="+", default=list(DEFAULT_COMPARE_METHODS),
                   help=f"method names, or 'all' (default: {' '.join(DEFAULT_COMPARE_METHODS)})")
    c.add_argument("--grids", nargs="+", default=None,
                   help="grid names, or 'all' (default: each method's recommended grid)")
    c.add_argument("--nfe", nargs="+", type=positive_int, default=[5, 10, 15, 20, 50],
                   help="numbers of model evaluations (default: 5 10 15 20 50)")
    c.add_argument("--n", type=positive_int, default=1000, help="number of trajectories (default: 1000)")
    c.add_argument("--out", default="ei_toolkit_compare.png",
                   help="where to write the plot (default: ei_toolkit_compare.png)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("compare", help=f"accuracy vs NFE of our integrators, tables and a plot (with peers: "
                                       f"{PEER_COMPARISON})",
                       epilog=f"The comparison against diffusers and k-diffusion: {PEER_COMPARISON} (same options).")
    add_compare_options(c)
    c.add_argument("--no-peers", action="store_true", help="no effect: kept for old command lines (no peers here)")
    c.set_defaults(func=compare_command)


def compare_command(args: argparse.Namespace, peers: Mapping[str, Peer] | None = None) -> int:
    """Run the comparison for parsed ``compare`` options: our integrators, and ``peers`` if given (``None``:
    ours only, with a pointer to the peer comparison)."""
    from ei_toolkit import GRIDS, INTEGRATORS, Integrator, compare
    from ei_toolkit.testing import PROBLEMS

    require_matplotlib("compare")
    planned = [n for n, m in INTEGRATORS.items() if isinstance(m, Integrator)]
    methods = planned if args.methods == ["all"] else args.methods
    for m in methods:
        check_method("--methods", m)
    grids = list(GRIDS) if args.grids == ["all"] else args.grids
    for g in grids or []:
        if g not in GRIDS:
            raise unknown("--grids", "grid", g, list(GRIDS))
    if args.problem not in PROBLEMS:
        raise unknown("--problem", "problem", args.problem, list(PROBLEMS))
    writable_path("--out", args.out)
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
    out = compare.plot(rows, Path(args.out))
    print(f"\nplot written to {out}")
    if peers is None:
        print(f"against diffusers and k-diffusion (from a source checkout, bench extra): {PEER_COMPARISON}")
    return 0
