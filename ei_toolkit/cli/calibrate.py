"""``ei-toolkit calibrate``: a shipped model's statistics (once per folder) and an EMS grid per (method, NFE),
written to a folder (by default in the user cache) that ``sample --calibration`` then uses."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch

from .common import (
    UsageError,
    add_model_option,
    check_writable,
    default_calibration_dir,
    load_model,
    positive_int,
    shipped,
)

STATISTICS_NAME = "statistics.pt"
PROBES = 2  # model_statistics' Hutchinson probes


def add_parser(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser("calibrate", help="fit a shipped model's statistics and an EMS grid once, for sample "
                                           "--calibration")
    add_model_option(cal, "the shipped model to calibrate")
    cal.add_argument("--nfe", type=positive_int, default=10, help="model evaluations of the grid (default: 10)")
    cal.add_argument("--method", default=None, help="one of ems-logrhoab0 ... ems-logrhoab3, each optionally with "
                     "-pc (default: ems-logrhoab1-pc below NFE 20, ems-logrhoab2-pc from 20; grid_opt.md, ems.md)")
    cal.add_argument("--draws", type=positive_int, default=256,
                     help="noise draws for the statistics (default: 256)")
    cal.add_argument("--nodes", type=positive_int, default=200, help="nodes of the statistics (default: 200)")
    cal.add_argument("--grid-draws", type=positive_int, default=16,
                     help="noise draws the grid is tuned on (default: 16)")
    cal.add_argument("--max-solves", type=positive_int, default=200,
                     help="bound on the grid optimiser's solves, each --nfe evaluations (default: 200)")
    cal.add_argument("--seed", type=int, default=12345, help="seed of the calibration draws (default: 12345)")
    cal.add_argument("--out", default=None, metavar="DIR",
                     help="folder to write (created if missing; default: the user cache, "
                          "$XDG_CACHE_HOME/ei_toolkit/MODEL_calibration or ~/.cache/ei_toolkit/MODEL_calibration; "
                          f"here, for digits, {default_calibration_dir()})")
    cal.set_defaults(func=calibrate_command)


def ems_name(name: str) -> str:
    """``name`` if it is an EMS method (checked before any work is done), else a usage error."""
    from ei_toolkit import EMSAdams

    if name not in EMSAdams.NAMES:
        raise UsageError(f"--method: with a calibration the method is an EMS method, one of "
                         f"{', '.join(EMSAdams.NAMES)}; got {name!r}")
    return name


def _ems(name: str, stats: Any) -> Any:  # an EMSAdams
    from ei_toolkit import EMSAdams

    return EMSAdams.named(ems_name(name), stats)


def calibrate_command(args: argparse.Namespace) -> int:
    """The shipped model's statistics (once per folder) and an EMS grid for --nfe, written to --out."""
    import ei_toolkit as ei

    entry = shipped(args.model)
    if args.out is None:  # the user cache: its parents are created, as a cache's are
        out = default_calibration_dir(entry.name)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the calibration cache {str(out.parent)!r} ({exc.strerror or exc}); give "
                             "--out DIR") from None
    else:
        out = Path(args.out)
    check_writable("--out", out, folder=True)
    name = ems_name(args.method or ("ems-logrhoab2-pc" if args.nfe >= 20 else "ems-logrhoab1-pc"))
    model, sde = load_model(entry), entry.sde()
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    stats_path = out / STATISTICS_NAME
    with torch.no_grad():
        if stats_path.is_file():
            stats = ei.ModelStatistics.load(stats_path, sde=sde, model=model)
            print(f"statistics: {stats_path} (kept; delete it to estimate them again)")
        else:
            xs = torch.randn(args.draws, *entry.shape, generator=gen)
            stats = ei.model_statistics(model, xs, sde, nodes=args.nodes, probes=PROBES, prediction=entry.prediction)
            out.mkdir(exist_ok=True)
            stats.save(stats_path)
            print(f"statistics: {args.draws} draws, {args.nodes} nodes, "
                  f"{args.nodes + (args.nodes + 1) * (1 + 2 * PROBES)} evaluations of the batch -> {stats_path}")
        method = _ems(name, stats)
        xc = torch.randn(args.grid_draws, *entry.shape, generator=torch.Generator().manual_seed(args.seed + 1))
        grid, info = ei.optimize_grid(model, xc, sde, method=method, nfe=args.nfe, t_end=sde.t0,
                                      prediction=entry.prediction, max_solves=args.max_solves, return_info=True)
    path = ei.save_grid(out / f"grid-{method.name}-nfe{args.nfe}.json", grid, model=model, sde=sde, method=method,
                        nfe=args.nfe)
    gain = math.exp(info["loss_default"] - info["loss"])
    print(f"grid: {method.name}, NFE {args.nfe}, {info['solves']} solves of {args.grid_draws} draws; error on them "
          f"{gain:.2f}x smaller than on {method.name}'s default grid -> {path}")
    model_arg = "" if entry.name == "digits" else f" --model {entry.name}"
    print(f"done in {time.perf_counter() - start:.1f} s; use it: ei-toolkit sample{model_arg} --calibration {out} "
          f"--nfe {args.nfe}")
    return 0


def calibrated(folder: str, nfe: int, method_name: str | None, model: Any, sde: Any) -> tuple[Any, torch.Tensor]:
    """(EMS method, grid) of a calibration folder for ``nfe`` (and ``method_name``, needed when several grids are
    there), checked against ``model`` and ``sde``; usage errors name what is missing and how to make it."""
    import ei_toolkit as ei

    d = Path(folder)
    if not (d / STATISTICS_NAME).is_file():
        raise UsageError(f"--calibration {folder!r}: no {STATISTICS_NAME} there; run ei-toolkit calibrate --out "
                         f"{folder} first")
    stats = ei.ModelStatistics.load(d / STATISTICS_NAME, sde=sde, model=model)
    grids = sorted(d.glob(f"grid-*-nfe{nfe}.json"))
    names = [g.name[len("grid-"):-len(f"-nfe{nfe}.json")] for g in grids]
    if method_name is None:
        if len(names) != 1:
            have = ", ".join(sorted(p.name for p in d.glob("grid-*.json"))) or "none"
            raise UsageError(f"--calibration {folder!r}: {'no grid' if not names else 'several grids'} for NFE {nfe} "
                             f"(grids there: {have}); run ei-toolkit calibrate --nfe {nfe} --out {folder}, or "
                             "name one with --method")
        method_name = names[0]
    method = _ems(method_name, stats)
    if method_name not in names:
        raise UsageError(f"--calibration {folder!r}: no grid for {method_name} at NFE {nfe}; run ei-toolkit "
                         f"calibrate --method {method_name} --nfe {nfe} --out {folder}")
    path = d / f"grid-{method_name}-nfe{nfe}.json"
    return method, ei.load_grid(path, model=model, sde=sde, method=method, nfe=nfe)
