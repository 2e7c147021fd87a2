"""``ei-toolkit describe``: derive a built-in or user SDE and print its closed forms, how each was obtained, and a
numerical self-check."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence

import torch

from .common import BUILTIN_SDES, UsageError, finite_float, make_sde


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("describe", help="derive an SDE and show its closed forms")
    p.add_argument("--sde", default=None, help=f"built-in SDE: {', '.join(BUILTIN_SDES)} (default: vp, unless "
                                                "--drift/--diffusion give a custom one)")
    p.add_argument("--drift", help="custom drift F(t), e.g. '-(a + b*t)/2' (default: none)")
    p.add_argument("--diffusion", help="custom diffusion G(t), e.g. 'sqrt(a + b*t)' (default: none)")
    p.add_argument("--t-max", type=finite_float, default=None,
                   help="end of a custom SDE's domain (default: 1.0)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="value of a parameter of the custom SDE, repeatable (default: none)")
    p.set_defaults(func=describe_command)


def parse_params(items: Sequence[str]) -> dict[str, float]:
    """``--param NAME=VALUE`` items as a dict of floats, or a :class:`UsageError` naming the bad item."""
    out: dict[str, float] = {}
    for kv in items:
        name, sep, value = kv.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--param {kv!r}: expected NAME=VALUE, e.g. --param a=0.1")
        if not name.isidentifier():
            raise UsageError(f"--param {kv!r}: NAME must be an identifier such as a or beta_min")
        try:
            v = float(value)
        except ValueError:
            raise UsageError(f"--param {kv!r}: VALUE must be a number; got {value!r}") from None
        if not math.isfinite(v):
            raise UsageError(f"--param {kv!r}: VALUE must be a finite number")
        if name in out:
            raise UsageError(f"--param {name} is given twice")
        out[name] = v
    return out


def describe_command(args: argparse.Namespace) -> int:
    import ei_toolkit as ei

    start = time.perf_counter()
    custom = args.drift is not None or args.diffusion is not None
    if custom:
        if args.sde is not None:
            raise UsageError("--sde names a built-in SDE; --drift/--diffusion define a custom one: give one or the "
                             "other")
        if args.drift is None or args.diffusion is None:
            raise UsageError("give both --drift and --diffusion for a custom SDE")
        t_max = 1.0 if args.t_max is None else args.t_max
        sde = ei.LinearSDE(drift=args.drift, diffusion=args.diffusion, t_max=t_max, **parse_params(args.param))
    else:
        if args.param:
            raise UsageError("--param sets parameters of a custom SDE (--drift/--diffusion)")
        if args.t_max is not None:
            raise UsageError("--t-max applies to a custom SDE (--drift/--diffusion)")
        sde = make_sde(args.sde or "vp")
    built = time.perf_counter() - start
    print(sde.describe())
    t = torch.linspace(sde.t_min, sde.t_max, 10001, dtype=torch.float64)
    err = (sde.t_of_rho(sde.rho(t)) - t).abs().max().item()
    print(f"  built in {built:.3f} s; rho range [{sde.rho_min:.6g}, {sde.rho_max:.6g}]; "
          f"max |t(rho(t)) - t| on 10001 points = {err:.1e}")
    return 0
