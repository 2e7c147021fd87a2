"""Command line: ``ei-toolkit`` / ``python -m ei_toolkit``.

``describe`` (the default) derives a built-in or user SDE and prints its closed forms, how each was
obtained, and a numerical self-check.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ei-toolkit", description="Exponential integrators for diffusion models.")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("describe", help="derive an SDE and show its closed forms (default)")
    p.add_argument("--sde", default="vp", help=f"built-in SDE: {', '.join(BUILTIN_SDES)} (default vp)")
    p.add_argument("--drift", help="custom drift F(t), e.g. '-(a + b*t)/2'")
    p.add_argument("--diffusion", help="custom diffusion G(t), e.g. 'sqrt(a + b*t)'")
    p.add_argument("--t-max", type=float, default=1.0)
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    p.set_defaults(func=describe)
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["describe", *(argv or [])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
