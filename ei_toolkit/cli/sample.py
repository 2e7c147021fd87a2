"""``ei-toolkit sample``: a PNG grid of samples of a shipped model (default: the 8x8 digits), with any method and
grid, or with a calibration folder written by ``ei-toolkit calibrate``."""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from .calibrate import calibrated
from .common import (
    UsageError,
    add_model_option,
    check_grid,
    check_method,
    default_calibration_dir,
    finite_float,
    load_model,
    positive_int,
    shipped,
    writable_path,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ei_toolkit.sampling import describe_defaults

    sp = sub.add_parser("sample", help="draw samples of a shipped model into a PNG (default: digits from the model "
                                       "trained on scikit-learn's 8x8 digits)")
    add_model_option(sp, "the shipped model to sample")
    sp.add_argument("--n", type=positive_int, default=64, help="number of samples (default: 64)")
    sp.add_argument("--nfe", type=positive_int, default=10, help="number of model evaluations (default: 10)")
    sp.add_argument("--method", default=None,
                    help=f"integrator, e.g. tab3 or sddim (default: ei.sample's for --nfe: {describe_defaults()})")
    sp.add_argument("--grid", default=None, help="time grid (default: the method's recommended grid)")
    sp.add_argument("--lam", type=finite_float, default=None,
                    help="noise level lambda >= 0 of --method sddim (default: 1, the DDPM posterior)")
    sp.add_argument("--eta", type=finite_float, default=None,
                    help="DDIM's eta in [0, 1] for --method sddim, instead of --lam (default: none)")
    sp.add_argument("--cols", type=positive_int, default=8, help="samples per row of the PNG (default: 8)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the initial noise and of sddim's noise (default: 0)")
    sp.add_argument("--out", default=None, help="PNG to write; its directory must exist (default: MODEL.png in the "
                                                "current directory, digits.png for the default model)")
    sp.add_argument("--calibration", default=None, metavar="DIR",
                    help="a folder written by ei-toolkit calibrate (its --out, by default "
                         f"{default_calibration_dir()} for digits): its EMS method and grid for --nfe (default: none)")
    sp.set_defaults(func=sample_command)


def sample_command(args: argparse.Namespace) -> int:
    import ei_toolkit as ei
    from ei_toolkit.png import image_grid, write_png

    entry = shipped(args.model)
    out_path = writable_path("--out", args.out or f"{entry.name}.png")
    if args.calibration is None:  # every option checked before the model is loaded
        if args.method is not None:
            check_method("--method", args.method)
        check_grid("--grid", args.grid)
        noisy = args.lam is not None or args.eta is not None
        if noisy and (args.method is None or not ei.INTEGRATORS[args.method].stochastic):
            raise UsageError("--lam/--eta set the noise of a stochastic method: use them with --method sddim")
        if args.lam is not None and args.eta is not None:
            raise UsageError("give --lam or --eta, not both")
    elif args.grid is not None or args.lam is not None or args.eta is not None:
        raise UsageError("--calibration brings its own grid and a deterministic method: leave out --grid, --lam "
                         "and --eta")
    model, sde = load_model(entry), entry.sde()
    gen = torch.Generator().manual_seed(args.seed)
    where = None  # the grid, as the message names it (None: the solution's grid name)
    kw: dict[str, Any] = {"prediction": entry.prediction}
    if args.calibration is not None:
        method, grid = calibrated(args.calibration, args.nfe, args.method, model, sde)
        kw.update(method=method, grid=grid)
        where = f"the grid calibrated in {args.calibration}"
    else:
        kw.update(nfe=args.nfe, grid=args.grid, t_end=sde.t0)
        if args.method:
            kw["method"] = args.method
        if args.lam is not None or args.eta is not None or (args.method is not None
                                                              and ei.INTEGRATORS[args.method].stochastic):
            kw.update(lam=args.lam, eta=args.eta, generator=gen)
    x = torch.randn(args.n, *entry.shape, generator=gen)
    start = time.perf_counter()
    with torch.no_grad():
        sol = ei.solve(model, x, sde, **kw)
    took = time.perf_counter() - start
    out = write_png(out_path, image_grid(sol.x, cols=args.cols))
    print(f"{args.n} {entry.noun} with {sol.method} on {where or f'the {sol.grid} grid'}, NFE {sol.nfe}, in "
          f"{took:.2f} s -> {out}")
    return 0
