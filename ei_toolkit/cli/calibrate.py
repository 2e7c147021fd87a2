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

SHRINK = ("x0", "eps", "none")  # --shrink: model_statistics' shrink ("none": None)

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
    cal.add_argument("--bootstrap", type=int, default=32, metavar="N",
                     help="bootstrap resamples of the draws for the statistics' error, no extra evaluations; 0: no "
                          "error estimate (then --shrink none) (default: 32)")
    cal.add_argument("--shrink", choices=SHRINK, default="x0",
                     help="shrink noisy tables towards this plain form, whose EMS is its base method (docs/math.md "
                          "4.11), or none (default: x0)")
    cal.add_argument("--tolerance", type=float, default=None, metavar="T",
                     help="add draws (64, then doubling, up to --draws) until the statistics' relative bootstrap "
                          "error is at most T (default: use all --draws)")
    cal.add_argument("--heldout-draws", type=int, default=0, metavar="K",
                     help="check the statistics against their base method and the grid against the default grid on "
                          "K more draws (seed + 2, disjoint from the fitting draws), against a near-exact solution; "
                          "0: no check (default: 0)")
    cal.add_argument("--on-failure", choices=("raise", "fallback"), default=None,
                     help="what a failed held-out check does: raise (an error, nothing written for that part) or "
                          "fallback (statistics of the base form, the default grid; a warning) (default: raise; "
                          "needs --heldout-draws)")
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


def check_safety_args(args: argparse.Namespace) -> None:
    """The statistics' error options and the held-out check (docs/math.md 4.11), checked before any work."""
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise UsageError(f"--bootstrap: 0 (no error estimate) or an integer >= 2 (resamples); got {args.bootstrap}")
    if args.bootstrap == 0 and args.shrink != "none":
        raise UsageError(f"--shrink {args.shrink} needs the statistics' error: give --bootstrap >= 2, or --shrink none")
    if args.tolerance is not None:
        if not (math.isfinite(args.tolerance) and args.tolerance > 0):
            raise UsageError(f"--tolerance: expected a positive finite number; got {args.tolerance!r}")
        if args.bootstrap == 0:
            raise UsageError("--tolerance needs the statistics' error: give --bootstrap >= 2")
    if args.heldout_draws < 0 or args.heldout_draws == 1:
        raise UsageError(f"--heldout-draws: 0 (no check) or an integer >= 2; got {args.heldout_draws}")
    if args.on_failure is not None and args.heldout_draws == 0:
        raise UsageError("--on-failure decides what a failed held-out check does: give --heldout-draws K too")


def _kept(stats: Any) -> str:
    """Which tables model_statistics kept (weight 1) and which it replaced by the base form."""
    if stats.weights is None:
        return "not shrunk" if stats.bootstrap else "no error estimate"
    wl, ws, wb = (float(w.mean()) for w in stats.weights)
    word = {1.0: "kept", 0.0: f"{stats.base} form"}
    return (f"l {word.get(wl, f'kept at {wl:.0%} of the nodes')}, s {word.get(ws, f'kept at {ws:.0%} of the nodes')},"
            f" b kept at {wb:.0%} of the nodes")


def calibrate_command(args: argparse.Namespace) -> int:
    """The shipped model's statistics (once per folder; checked on held-out draws with --heldout-draws) and an EMS
    grid for --nfe, written to --out."""
    import warnings

    import ei_toolkit as ei
    from ei_toolkit.statistics import base_statistics, check_statistics

    check_safety_args(args)
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
    on_failure = args.on_failure or "raise"
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    stats_path = out / STATISTICS_NAME
    per_draw = args.nodes + (args.nodes + 1) * (1 + 2 * PROBES)
    spent: dict[str, int] = {}
    # EMS's grids run to the data: the flow models' t0 = 0 and the diffusion models' t0 both (sample draws so)
    t_end = sde.t0
    with torch.no_grad():
        if stats_path.is_file():
            stats = ei.ModelStatistics.load(stats_path, sde=sde, model=model)
            print(f"statistics: {stats_path} (kept; delete it to estimate them again)")
        else:
            xs = torch.randn(args.draws, *entry.shape, generator=gen)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                stats = ei.model_statistics(model, xs, sde, nodes=args.nodes, probes=PROBES,
                                            prediction=entry.prediction, bootstrap=args.bootstrap,
                                            shrink=None if args.shrink == "none" else args.shrink,
                                            tolerance=args.tolerance)
            for w in caught:
                print(f"warning: {w.message}")
            spent["statistics"] = per_draw * stats.samples
            print(f"statistics: {stats.samples} of {args.draws} draws, {args.nodes} nodes, {per_draw} evaluations of "
                  f"the batch ({spent['statistics']} of one draw)")
        err = "not estimated (--bootstrap 0)" if stats.error is None else f"{stats.error:.3g}"
        print(f"statistics' relative bootstrap error: {err}; tables: {_kept(stats)}")
        method = _ems(name, stats)
        write_stats = not stats_path.is_file()
        xh = None
        if args.heldout_draws:
            xh = torch.randn(args.heldout_draws, *entry.shape, generator=torch.Generator().manual_seed(args.seed + 2))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the verdict is printed below
                chosen, report = check_statistics(model, method, xh, sde, nfe=args.nfe, prediction=entry.prediction,
                                                  on_failure=on_failure)
            spent["statistics check"] = report.evaluations * args.heldout_draws
            print(f"statistics: {report.describe()} (ratio {report.ratio:.3g})")
            if chosen is not method:  # fallback: statistics of the base form, whose EMS is that method
                stats = base_statistics(stats, sde)
                method, write_stats = _ems(name, stats), True
                print(f"statistics: replaced by those of the {method.base_method} form (--on-failure fallback)")
        if write_stats:
            out.mkdir(exist_ok=True)
            stats.save(stats_path)
            print(f"statistics -> {stats_path}")
        xc = torch.randn(args.grid_draws, *entry.shape, generator=torch.Generator().manual_seed(args.seed + 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a fallback is printed below
            grid, info = ei.optimize_grid(model, xc, sde, method=method, nfe=args.nfe, t_end=t_end,
                                          prediction=entry.prediction, max_solves=args.max_solves, heldout=xh,
                                          on_failure=on_failure, return_info=True)
        spent["grid"] = (info["nfe_reference"] + info["nfe_optimiser"]) * args.grid_draws
    path = ei.save_grid(out / f"grid-{method.name}-nfe{args.nfe}.json", grid, model=model, sde=sde, method=method,
                        nfe=args.nfe)
    gain = math.exp(info["loss_default"] - info["loss"])
    print(f"grid: {method.name}, NFE {args.nfe}, {info['solves']} solves of {args.grid_draws} draws; error on them "
          f"{gain:.2f}x smaller than on {method.name}'s default grid -> {path}")
    if "heldout" in info:
        report = info["heldout"]
        spent["grid check"] = report.evaluations * args.heldout_draws
        print(f"grid: {report.describe()} (ratio {report.ratio:.3g})"
              + ("" if report.passed else "; the default grid was written instead (--on-failure fallback)"))
    print("evaluations of one draw: " + ", ".join(f"{k} {v}" for k, v in spent.items())
          + f"; total {sum(spent.values())}")
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
