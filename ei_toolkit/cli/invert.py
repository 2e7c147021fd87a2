"""``ei-toolkit invert``: encode held-out samples of a shipped model's data (data to noise, ei.invert), decode them
with the same method, NFE and grid (ei.sample) and report the reconstruction error; with --exact, the exact inverse
of that sampler."""

from __future__ import annotations

import argparse
import time

import torch

from .common import (
    UsageError,
    add_model_option,
    check_grid,
    check_method,
    finite_float,
    held_out,
    load_model,
    positive_int,
    shipped,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    inv = sub.add_parser("invert", help="encode held-out data with a shipped model (data to noise), decode them "
                                        "again and report the reconstruction error")
    add_model_option(inv, "the shipped model (and its held-out data)")
    inv.add_argument("--n", type=positive_int, default=64, help="number of held-out samples (default: 64)")
    inv.add_argument("--nfe", type=positive_int, default=10, help="model evaluations each way (default: 10)")
    inv.add_argument("--method", default=None,
                     help="integrator (default: ei.invert's for --nfe, ei.sampling.default_inversion_method)")
    inv.add_argument("--grid", default=None, help="time grid (default: the method's, or the inversion default's)")
    inv.add_argument("--exact", action="store_true",
                     help="the exact inverse of the sampler with the same method, NFE and grid, in float64 "
                          "(default: off: the ODE run forward with that method)")
    inv.add_argument("--tol", type=finite_float, default=None,
                     help="relative round-trip tolerance of --exact (default: 1.5e-8, sqrt of float64's epsilon)")
    inv.add_argument("--seed", type=int, default=0, help="seed choosing the held-out samples (default: 0)")
    inv.add_argument("--progress", action="store_true", help="show a progress bar (default: off)")
    inv.set_defaults(func=invert_command)


def invert_command(args: argparse.Namespace) -> int:
    import ei_toolkit as ei

    entry = shipped(args.model)
    if args.method is not None:
        check_method("--method", args.method)
    check_grid("--grid", args.grid)
    if args.tol is not None and not args.exact:
        raise UsageError("--tol sets the round trip's tolerance of --exact; add --exact")
    x0 = held_out(entry, args.n, torch.Generator().manual_seed(args.seed))
    x0 = x0.double() if args.exact else x0
    model, sde = load_model(entry), entry.sde()
    if args.exact:
        model = model.double()
    kw = {"method": args.method, "nfe": args.nfe, "grid": args.grid, "prediction": entry.prediction}
    start = time.perf_counter()
    with torch.no_grad():
        enc = ei.invert(model, x0, sde, exact=args.exact, tol=args.tol, solution=True, progress=args.progress, **kw)
        took = time.perf_counter() - start
        back = ei.sample(model, enc.x, sde, method=enc.method, nfe=args.nfe, grid=args.grid or enc.grid,
                         t_start=sde.t_max, t_end=ei.sampling.default_t_end(sde),  # invert's default start
                         prediction=entry.prediction)
    rel = (back - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)
    z = enc.x.double()
    kind = (f"exactly (tol {enc.stats['tol']:.2g}: {enc.stats['iterations']} Newton iterations, "
            f"{enc.nfe} evaluations)" if args.exact else f"NFE {enc.nfe}")
    print(f"{args.n} held-out {entry.noun} encoded with {enc.method} on the {enc.grid} grid {kind} in {took:.2f} s; "
          f"x_T: mean {float(z.mean()):.3f}, std {float(z.std()):.3f} (the prior: 0, 1)")
    print(f"decoded with the same method and NFE {args.nfe}: relative reconstruction error (2-norm per sample) "
          f"median {float(rel.median()):.2e}, max {float(rel.max()):.2e}")
    return 0
