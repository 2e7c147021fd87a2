"""Command line: ``ei-toolkit`` / ``python -m ei_toolkit`` (bare: the help).

``compare`` measures accuracy per model evaluation on a Gaussian-mixture problem against the exact ODE solution,
for our integrators, prints the tables and writes a plot (matplotlib: the ``bench`` extra); the same comparison
against diffusers and k-diffusion is the benchmark script ``python benchmarks/compare.py`` (same options).
``describe`` derives a built-in or user SDE and prints its closed forms, how each was obtained, and a
numerical self-check. ``sample`` draws digits from the shipped model; ``calibrate`` fits that model's statistics and
an EMS grid once (a folder, by default in the user cache, that ``sample --calibration`` then uses).

Every command runs torch on one intra-op thread unless ``--threads`` or ``OMP_NUM_THREADS`` says otherwise: the
shipped models are small, and on a shared machine extra threads only wait for each other.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ei_toolkit.errors import NumericalError

if TYPE_CHECKING:
    from ei_toolkit.compare import Peer

BUILTIN_SDES = ("vp", "subvp", "cosine", "ve", "edm", "ddpm")


class UsageError(Exception):
    """A bad command line: :func:`main` prints ``ei-toolkit: error: <message>`` and exits with status 2."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return v


def finite_float(text: str) -> float:
    """argparse type: a finite real number."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return v


def check_writable(arg: str, path: Path, folder: bool = False) -> None:
    """A :class:`UsageError` unless ``path`` (a file, or with ``folder`` a folder, created if missing) can be
    written, checked by creating and removing a temporary file where it would go: before any work is done."""
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{arg} {str(path)!r} is a file; give a folder (created if missing)")
    if not folder and path.is_dir():
        raise UsageError(f"{arg} {str(path)!r} is a directory; give a file name")
    where = path if folder and path.is_dir() else path.parent
    if not where.is_dir():
        raise UsageError(f"{arg} {str(path)!r}: the directory {str(where)!r} does not exist")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
        if not folder and path.exists():
            with open(path, "ab"):  # appends nothing: the file is left as it is
                pass
    except OSError as exc:
        raise UsageError(f"{arg} {str(path)!r}: cannot write there ({exc.strerror or exc})") from None


def writable_path(arg: str, path: str) -> Path:
    """``path`` as a Path to a file that can be written, in a directory that exists (nothing is created)."""
    p = Path(path)
    check_writable(arg, p)
    return p


def unknown(arg: str, kind: str, name: str, valid: Sequence[str]) -> UsageError:
    """The usage error for an unknown ``name``: the valid ones, and the closest if one is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UsageError(f"{arg}: unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}{hint}")


def check_method(arg: str, name: str) -> str:
    """``name`` if it names an integrator, else :func:`ei_toolkit.integrators.get_integrator`'s message (the valid
    names and the closest) as a usage error for ``arg``."""
    from ei_toolkit.integrators import get_integrator

    try:
        get_integrator(name)
    except ValueError as exc:
        raise UsageError(f"{arg}: {exc}") from None
    return name


def require_matplotlib(command: str) -> None:
    """A one-line :class:`UsageError` before any work when matplotlib (the ``bench`` extra) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"{command} draws its plot with matplotlib, which is not installed: "
                         "pip install 'ei_toolkit[bench]'") from None


def default_calibration_dir() -> Path:
    """Where ``calibrate`` writes by default: ``$XDG_CACHE_HOME/ei_toolkit/digits_calibration`` (``~/.cache`` when
    XDG_CACHE_HOME is unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ei_toolkit" / "digits_calibration"


def set_threads(threads: int | None) -> int:
    """torch's intra-op threads for a command: ``threads`` if given, else 1 unless OMP_NUM_THREADS is set (then
    torch's own reading of it stands). Returns the number in use."""
    if threads is not None:
        torch.set_num_threads(threads)
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(1)
    return torch.get_num_threads()


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
        raise UsageError(f"--sde: unknown SDE {name!r}; choose one of {', '.join(table)}")
    return table[name]()


def describe(args: argparse.Namespace) -> int:
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


def compare_command(args: argparse.Namespace, peers: Mapping[str, Peer] | None = None) -> int:
    """Run the comparison for parsed ``compare`` options: our integrators, and ``peers`` if given (``None``:
    ours only, with a pointer to the peer comparison)."""
    from pathlib import Path

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


def sample_command(args: argparse.Namespace) -> int:
    import ei_toolkit as ei
    from ei_toolkit.models import load_digits_model
    from ei_toolkit.png import image_grid, write_png

    out_path = writable_path("--out", args.out)
    model, sde = load_digits_model(), ei.DiscreteVP.linear()
    gen = torch.Generator().manual_seed(args.seed)
    where = None  # the grid, as the message names it (None: the solution's grid name)
    if args.calibration is not None:
        if args.grid is not None or args.lam is not None or args.eta is not None:
            raise UsageError("--calibration brings its own grid and a deterministic method: leave out --grid, --lam "
                             "and --eta")
        method, grid = _calibrated(args.calibration, args.nfe, args.method, model, sde)
        kw = {"method": method, "grid": grid}
        where = f"the grid calibrated in {args.calibration}"
    else:
        if args.method is not None:
            check_method("--method", args.method)
        if args.grid is not None and args.grid not in ei.GRIDS:
            raise unknown("--grid", "grid", args.grid, list(ei.GRIDS))
        noisy = args.lam is not None or args.eta is not None
        if noisy and (args.method is None or not ei.INTEGRATORS[args.method].stochastic):
            raise UsageError("--lam/--eta set the noise of a stochastic method: use them with --method sddim")
        if args.lam is not None and args.eta is not None:
            raise UsageError("give --lam or --eta, not both")
        kw = {"nfe": args.nfe, "grid": args.grid, "t_end": sde.t0}
        if args.method:
            kw["method"] = args.method
        if noisy or (args.method is not None and ei.INTEGRATORS[args.method].stochastic):
            kw.update(lam=args.lam, eta=args.eta, generator=gen)
    x = torch.randn(args.n, 1, 8, 8, generator=gen)
    start = time.perf_counter()
    with torch.no_grad():
        sol = ei.solve(model, x, sde, **kw)
    took = time.perf_counter() - start
    out = write_png(out_path, image_grid(sol.x, cols=args.cols))
    print(f"{args.n} digits with {sol.method} on {where or f'the {sol.grid} grid'}, NFE {sol.nfe}, in {took:.2f} s "
          f"-> {out}")
    return 0


def held_out_digits(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` of the 360 held-out digits (ei_toolkit.models.data's split), chosen by ``generator``; usage errors for
    a missing scikit-learn or too many."""
    from ei_toolkit.models.data import digits_split

    try:
        _, held = digits_split()
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    if n > len(held):
        raise UsageError(f"--n: there are {len(held)} held-out digits; got {n}")
    return held[torch.randperm(len(held), generator=generator)[:n]]


def invert_command(args: argparse.Namespace) -> int:
    """Encode held-out digits with the shipped model (ei.invert), decode them with the same method, nfe and grid
    (ei.sample), and report the reconstruction error; with --exact, the exact inverse of that sampler."""
    import ei_toolkit as ei
    from ei_toolkit.models import load_digits_model

    if args.method is not None:
        check_method("--method", args.method)
    if args.grid is not None and args.grid not in ei.GRIDS:
        raise unknown("--grid", "grid", args.grid, list(ei.GRIDS))
    if args.tol is not None and not args.exact:
        raise UsageError("--tol sets the round trip's tolerance of --exact; add --exact")
    x0 = held_out_digits(args.n, torch.Generator().manual_seed(args.seed))
    x0 = x0.double() if args.exact else x0
    model, sde = load_digits_model(), ei.DiscreteVP.linear()
    if args.exact:
        model = model.double()
    kw = {"method": args.method, "nfe": args.nfe, "grid": args.grid}
    start = time.perf_counter()
    with torch.no_grad():
        enc = ei.invert(model, x0, sde, exact=args.exact, tol=args.tol, solution=True, progress=args.progress, **kw)
        took = time.perf_counter() - start
        back = ei.sample(model, enc.x, sde, method=enc.method, nfe=args.nfe, grid=args.grid or enc.grid,
                         t_start=sde.t_max, t_end=sde.t_min)
    rel = (back - x0).flatten(1).norm(dim=1) / x0.flatten(1).norm(dim=1)
    z = enc.x.double()
    kind = (f"exactly (tol {enc.stats['tol']:.2g}: {enc.stats['iterations']} Newton iterations, "
            f"{enc.nfe} evaluations)" if args.exact else f"NFE {enc.nfe}")
    print(f"{args.n} held-out digits encoded with {enc.method} on the {enc.grid} grid {kind} in {took:.2f} s; "
          f"x_T: mean {float(z.mean()):.3f}, std {float(z.std()):.3f} (the prior: 0, 1)")
    print(f"decoded with the same method and NFE {args.nfe}: relative reconstruction error (2-norm per digit) "
          f"median {float(rel.median()):.2e}, max {float(rel.max()):.2e}")
    return 0


def likelihood_command(args: argparse.Namespace) -> int:
    """Bits per dimension of held-out digits under the shipped model's probability-flow ODE (ei.log_likelihood),
    with uniform dequantisation of scikit-learn's 17 grey levels."""
    import ei_toolkit as ei
    from ei_toolkit.likelihood import DIVERGENCES
    from ei_toolkit.models import load_digits_model

    if args.method is not None:
        check_method("--method", args.method)
    if args.divergence not in DIVERGENCES:
        raise unknown("--divergence", "divergence", args.divergence, list(DIVERGENCES))
    if args.probes is not None and args.divergence == "exact":
        raise UsageError("--probes sets Hutchinson's probes: use it with --divergence rademacher or gaussian")
    gen = torch.Generator().manual_seed(args.seed)
    held = held_out_digits(args.n, gen)
    # the digits are k / 16 * 2 - 1 for grey levels k = 0..16; dequantised uniformly over each level's bin of width
    # 2 / 16 (centred on the level the model was trained on), so bits per dimension carry the offset log2(16 / 2)
    x0 = held.double() + (torch.rand(args.n, 1, 8, 8, generator=gen, dtype=torch.float64) - 0.5) * (2 / 16)
    model, sde = load_digits_model().double(), ei.DiscreteVP.linear()
    gens = [torch.Generator().manual_seed(args.seed * 100003 + i) for i in range(args.n)]
    start = time.perf_counter()
    result = ei.log_likelihood(model, x0, sde, nfe=args.nfe, method=args.method, divergence=args.divergence,
                               probes=args.probes or 1, generator=gens, progress=args.progress)
    took = time.perf_counter() - start
    bpd = result.bits_per_dim(levels=16, data_range=2.0)
    err = float(bpd.std()) / max(args.n - 1, 1) ** 0.5 * (1 if args.n > 1 else float("nan"))
    print(f"{args.n} held-out digits (dequantised), {result.stats.get('method')} on the {result.stats.get('grid')} "
          f"grid, NFE {result.nfe}, {args.divergence} divergence, in {took:.2f} s")
    print(f"bits per dimension: {float(bpd.mean()):.4f} +- {err:.4f} (mean +- standard error over the digits); "
          f"log p: {float(result.logp.mean()):.2f} nats per digit")
    return 0


STATISTICS_NAME = "statistics.pt"
PROBES = 2  # model_statistics' Hutchinson probes


def _ems_name(name: str) -> str:
    """``name`` if it is an EMS method (checked before any work is done), else a usage error."""
    from ei_toolkit import EMSAdams

    if name not in EMSAdams.NAMES:
        raise UsageError(f"--method: with a calibration the method is an EMS method, one of "
                         f"{', '.join(EMSAdams.NAMES)}; got {name!r}")
    return name


def _ems(name: str, stats):  # returns an EMSAdams
    from ei_toolkit import EMSAdams

    return EMSAdams.named(_ems_name(name), stats)


def calibrate_command(args: argparse.Namespace) -> int:
    """The shipped digits model's statistics (once per folder) and an EMS grid for --nfe, written to --out."""
    import ei_toolkit as ei
    from ei_toolkit.models import load_digits_model

    if args.out is None:  # the user cache: its parents are created, as a cache's are
        out = default_calibration_dir()
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create the calibration cache {str(out.parent)!r} ({exc.strerror or exc}); give "
                             "--out DIR") from None
    else:
        out = Path(args.out)
    check_writable("--out", out, folder=True)
    name = _ems_name(args.method or ("ems-logrhoab2-pc" if args.nfe >= 20 else "ems-logrhoab1-pc"))
    model, sde = load_digits_model(), ei.DiscreteVP.linear()
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    stats_path = out / STATISTICS_NAME
    with torch.no_grad():
        if stats_path.is_file():
            stats = ei.ModelStatistics.load(stats_path, sde=sde, model=model)
            print(f"statistics: {stats_path} (kept; delete it to estimate them again)")
        else:
            xs = torch.randn(args.draws, 1, 8, 8, generator=gen)
            stats = ei.model_statistics(model, xs, sde, nodes=args.nodes, probes=PROBES)
            out.mkdir(exist_ok=True)
            stats.save(stats_path)
            print(f"statistics: {args.draws} draws, {args.nodes} nodes, "
                  f"{args.nodes + (args.nodes + 1) * (1 + 2 * PROBES)} evaluations of the batch -> {stats_path}")
        method = _ems(name, stats)
        xc = torch.randn(args.grid_draws, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed + 1))
        grid, info = ei.optimize_grid(model, xc, sde, method=method, nfe=args.nfe, t_end=sde.t0,
                                      max_solves=args.max_solves, return_info=True)
    path = ei.save_grid(out / f"grid-{method.name}-nfe{args.nfe}.json", grid, model=model, sde=sde, method=method,
                        nfe=args.nfe)
    gain = math.exp(info["loss_default"] - info["loss"])
    print(f"grid: {method.name}, NFE {args.nfe}, {info['solves']} solves of {args.grid_draws} draws; error on them "
          f"{gain:.2f}x smaller than on {method.name}'s default grid -> {path}")
    print(f"done in {time.perf_counter() - start:.1f} s; use it: ei-toolkit sample --calibration {out} --nfe "
          f"{args.nfe}")
    return 0


def _calibrated(folder: str, nfe: int, method_name: str | None, model, sde):  # returns (method, grid)
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


def main(argv: list[str] | None = None) -> int:
    from ei_toolkit.sampling import describe_defaults

    parser = argparse.ArgumentParser(
        prog="ei-toolkit", description="Exponential integrators for diffusion models.",
        epilog="Threads: every command runs torch on one intra-op thread (the shipped models are small; on a shared "
               "machine more threads only wait for each other) unless OMP_NUM_THREADS is set or --threads N is given "
               "after the command. Options without a command (ei-toolkit --nfe 5 ...) run compare, as before.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    c = sub.add_parser("compare", help=f"accuracy vs NFE of our integrators, tables and a plot (with peers: "
                                       f"{PEER_COMPARISON})",
                       epilog=f"The comparison against diffusers and k-diffusion: {PEER_COMPARISON} (same options).")
    add_compare_options(c)
    c.add_argument("--no-peers", action="store_true", help="no effect: kept for old command lines (no peers here)")
    c.set_defaults(func=compare_command)
    sp_ = sub.add_parser("sample", help="draw digits from the shipped model trained on scikit-learn's 8x8 digits")
    sp_.add_argument("--n", type=positive_int, default=64, help="number of digits (default: 64)")
    sp_.add_argument("--nfe", type=positive_int, default=10, help="number of model evaluations (default: 10)")
    sp_.add_argument("--method", default=None,
                     help=f"integrator, e.g. tab3 or sddim (default: ei.sample's for --nfe: {describe_defaults()})")
    sp_.add_argument("--grid", default=None, help="time grid (default: the method's recommended grid)")
    sp_.add_argument("--lam", type=finite_float, default=None,
                     help="noise level lambda >= 0 of --method sddim (default: 1, the DDPM posterior)")
    sp_.add_argument("--eta", type=finite_float, default=None,
                     help="DDIM's eta in [0, 1] for --method sddim, instead of --lam (default: none)")
    sp_.add_argument("--cols", type=positive_int, default=8, help="digits per row of the PNG (default: 8)")
    sp_.add_argument("--seed", type=int, default=0, help="seed of the initial noise and of sddim's noise (default: 0)")
    sp_.add_argument("--out", default="digits.png", help="PNG to write; its directory must exist (default: digits.png)")
    sp_.add_argument("--calibration", default=None, metavar="DIR",
                     help="a folder written by ei-toolkit calibrate (its --out, by default "
                          f"{default_calibration_dir()}): its EMS method and grid for --nfe (default: none)")
    sp_.set_defaults(func=sample_command)
    cal = sub.add_parser("calibrate", help="fit the shipped digits model's statistics and an EMS grid once, for "
                                           "sample --calibration")
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
                          "$XDG_CACHE_HOME/ei_toolkit/digits_calibration or ~/.cache/ei_toolkit/digits_calibration; "
                          f"here {default_calibration_dir()})")
    cal.set_defaults(func=calibrate_command)
    inv = sub.add_parser("invert", help="encode held-out digits with the shipped model (data to noise), decode "
                                        "them again and report the reconstruction error")
    inv.add_argument("--n", type=positive_int, default=64, help="number of held-out digits (default: 64)")
    inv.add_argument("--nfe", type=positive_int, default=10, help="model evaluations each way (default: 10)")
    inv.add_argument("--method", default=None,
                     help="integrator (default: ei.invert's for --nfe, ei.sampling.default_inversion_method)")
    inv.add_argument("--grid", default=None, help="time grid (default: the method's, or the inversion default's)")
    inv.add_argument("--exact", action="store_true",
                     help="the exact inverse of the sampler with the same method, NFE and grid, in float64 "
                          "(default: off: the ODE run forward with that method)")
    inv.add_argument("--tol", type=finite_float, default=None,
                     help="relative round-trip tolerance of --exact (default: 1.5e-8, sqrt of float64's epsilon)")
    inv.add_argument("--seed", type=int, default=0, help="seed choosing the held-out digits (default: 0)")
    inv.add_argument("--progress", action="store_true", help="show a progress bar (default: off)")
    inv.set_defaults(func=invert_command)
    lk = sub.add_parser("likelihood", help="bits per dimension of held-out digits under the shipped model "
                                           "(probability-flow ODE, uniform dequantisation)")
    lk.add_argument("--n", type=positive_int, default=64, help="number of held-out digits (default: 64)")
    lk.add_argument("--nfe", type=positive_int, default=None,
                    help="model evaluations (default: ei.log_likelihood's, 64)")
    lk.add_argument("--method", default=None, help="integrator (default: ei.log_likelihood's for --nfe)")
    lk.add_argument("--divergence", default="exact",
                    help="exact (64 vector-Jacobian products per evaluation), rademacher or gaussian (Hutchinson) "
                         "(default: exact)")
    lk.add_argument("--probes", type=positive_int, default=None,
                    help="Hutchinson probes per digit (default: 1; with --divergence rademacher or gaussian)")
    lk.add_argument("--seed", type=int, default=0,
                    help="seed of the digits chosen, the dequantisation and the probes (default: 0)")
    lk.add_argument("--progress", action="store_true", help="show a progress bar (default: off)")
    lk.set_defaults(func=likelihood_command)
    p = sub.add_parser("describe", help="derive an SDE and show its closed forms")
    p.add_argument("--sde", default=None, help=f"built-in SDE: {', '.join(BUILTIN_SDES)} (default: vp, unless "
                                                "--drift/--diffusion give a custom one)")
    p.add_argument("--drift", help="custom drift F(t), e.g. '-(a + b*t)/2' (default: none)")
    p.add_argument("--diffusion", help="custom diffusion G(t), e.g. 'sqrt(a + b*t)' (default: none)")
    p.add_argument("--t-max", type=finite_float, default=None,
                   help="end of a custom SDE's domain (default: 1.0)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="value of a parameter of the custom SDE, repeatable (default: none)")
    p.set_defaults(func=describe)
    from ei_toolkit.generate import add_subcommands  # generate, evaluate (sharded, torchrun-ready)

    add_subcommands(sub)
    for command in sub.choices.values():
        if not any("--threads" in a.option_strings for a in command._actions):
            command.add_argument("--threads", type=positive_int, default=None, metavar="N",
                                 help="torch intra-op threads (default: 1, or torch's reading of OMP_NUM_THREADS "
                                      "when that is set)")
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help()
        return 0
    if argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["compare", *argv]  # options without a command: compare, for old command lines
    args = parser.parse_args(argv)
    set_threads(getattr(args, "threads", None))
    try:
        return args.func(args)
    except (UsageError, ValueError, TypeError, NumericalError, KeyError) as exc:
        # a user error (bad option values, an SDE or method that cannot run as asked): a message, no traceback
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        parser.exit(2, f"{parser.prog}: error: {msg}\n")


if __name__ == "__main__":
    sys.exit(main())
