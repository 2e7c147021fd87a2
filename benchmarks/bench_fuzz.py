"""Fuzz-style robustness sweep (issue 10): every registered deterministic method x the built-in grids x the built-in
SDEs x NFE from 1 to 1000 x the dtypes float64, float32, float16 and bfloat16, on a small Gaussian mixture whose eps
is exact, so that each result can be compared with a DOP853 reference solution of the probability-flow ODE.

Each run is classified as

* ``ok``: a finite result whose error is not far above that of the same configuration in float64;
* ``clear error``: a ValueError, TypeError or NumericalError whose message names the method, the grid or the
  argument at fault (``nfe``, ``grid``, ``dtype``, ``x``);
* ``unclear error``: any other exception, or one whose message names none of those;
* ``warned``: a finite result returned with a :class:`ei_toolkit.RoundoffWarning` (the plan amplifies the dtype's
  round-off more than ``FLOOR``-fold); the report counts how many of these were in fact bad;
* ``silent-bad``: a non-finite result returned, or, without a warning, a finite one whose relative error exceeds
  ``FAR * err64 + FLOOR * u + nfe * u_work`` (err64 the float64 run's error, u the dtype's unit round-off: what
  rounding the model's input and output costs through a plan that amplifies it at most ``FLOOR``-fold; u_work the
  working precision's, float32 for every dtype but float64: the state is rounded once per step, which the
  issue's float32 working precision accepts);
* ``crash``: anything that is not an Exception (the process itself dying would end the sweep).

Adaptive torchdiffeq methods choose their own steps: they run once per SDE and dtype with their defaults.

Run: ``python benchmarks/bench_fuzz.py`` (full sweep, writes benchmarks/results/fuzz.md) or ``--quick`` (a subset,
written to benchmarks/results/fuzz_quick.md).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

import ei_toolkit as ei
from ei_toolkit.errors import NumericalError
from ei_toolkit.testing import get_problem

ROOT = Path(__file__).resolve().parent
NFES = (1, 2, 3, 4, 6, 10, 20, 50, 100, 200, 500, 1000)
QUICK_NFES = (1, 3, 4, 10, 100)
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}
FAR = 10.0  # "far above" the float64 error
FLOOR = 64.0  # in units of the dtype's round-off, relative to the data scale (= the library's WARN_GAIN)
BATCH = 8
ADAPTIVE_MAX_NFE = 5000  # adaptive torchdiffeq methods: their budget (exceeding it is a clear error naming max_nfe)
CLASSES = ("ok", "warned", "clear error", "unclear error", "silent-bad", "crash")


def sdes() -> dict[str, ei.LinearSDE]:
    return {"VP": ei.VPSDE(), "sub-VP": ei.SubVPSDE(), "cosine": ei.CosineVPSDE(), "VE": ei.VESDE(),
            "EDM": ei.EDM(), "DiscreteVP linear": ei.DiscreteVP.linear()}


def methods() -> list[str]:
    return [n for n, m in ei.INTEGRATORS.items() if not m.stochastic]


def fixed_grid(name: str) -> bool:
    m = ei.INTEGRATORS[name]
    return not m.black_box or getattr(m, "evals_per_step", None) is not None


def classify_error(exc: BaseException, names: tuple[str, ...]) -> str:
    if not isinstance(exc, Exception):
        return "crash"
    if isinstance(exc, (ValueError, TypeError, NumericalError)) and any(n in str(exc) for n in names):
        return "clear error"
    return "unclear error"


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def sweep(nfes: tuple[int, ...], log=print, only_sdes: list[str] | None = None,
          only_methods: list[str] | None = None, dtypes: tuple[torch.dtype, ...] = DTYPES,
          on_sde_done=None) -> tuple[list[dict], float]:
    problem = get_problem("gmm2d")
    start = time.perf_counter()
    rows: list[dict] = []

    def report(row: dict) -> None:
        if row["class"] not in ("ok", "clear error", "warned") or row.get("bad"):
            log(f"  {row['class']}: {row['sde']} / {row['method']} / {row['grid']} / nfe {row['nfe']} / "
                f"{row['dtype']}: {row['detail'].splitlines()[0][:300]}")

    for sde_name, sde in sdes().items():
        if only_sdes and sde_name not in only_sdes:
            continue
        model = problem.eps_model(sde)
        x = problem.sample_marginal(sde, sde.t_max, BATCH, generator=torch.Generator().manual_seed(0))
        ref = problem.reference(sde, x, sde.t_max, sde.t_min)
        for method in methods():
            if only_methods and method not in only_methods:
                continue
            configs = ([(g, n) for g in ei.GRIDS for n in nfes] if fixed_grid(method) else [(None, None)])
            for grid, nfe in configs:
                err64 = math.inf
                for dtype in dtypes:
                    names = tuple(n for n in (method, grid, "nfe", "grid", "dtype", "x", "max_nfe") if n)
                    row = {"sde": sde_name, "method": method, "grid": grid, "nfe": nfe, "dtype": str(dtype)[6:]}
                    try:
                        with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            y = ei.sample(model, x.to(dtype), sde, method=method, grid=grid, nfe=nfe,
                                          options=None if fixed_grid(method) else {"max_nfe": ADAPTIVE_MAX_NFE})
                    except BaseException as exc:
                        if isinstance(exc, KeyboardInterrupt):
                            raise
                        row["class"] = classify_error(exc, names)
                        row["detail"] = f"{type(exc).__name__}: {exc}"
                        if row["class"] != "clear error":
                            row["detail"] += "\n" + "".join(traceback.format_exception(exc)[-3:])
                        rows.append(row)
                        report(row)
                        continue
                    if not bool(torch.isfinite(y).all()):
                        row.update({"class": "silent-bad", "detail": "non-finite result returned"})
                        rows.append(row)
                        report(row)
                        continue
                    err = relative_error(y, ref)
                    row["error"] = err
                    if dtype == torch.float64:
                        err64 = err
                    work = torch.float64 if dtype == torch.float64 else torch.float32
                    bound = FAR * err64 + FLOOR * UNIT_ROUNDOFF[dtype] + (nfe or 1) * UNIT_ROUNDOFF[work]
                    detail = f"relative error {err:.3g} vs float64 {err64:.3g} (bound {bound:.3g})"
                    warned = [w for w in caught if issubclass(w.category, ei.RoundoffWarning)]
                    if warned:
                        row.update({"class": "warned", "bad": err > bound, "detail": detail})
                    elif err > bound:
                        row.update({"class": "silent-bad", "detail": detail})
                    else:
                        row["class"] = "ok"
                    rows.append(row)
                    report(row)
            done = collections.Counter(r["class"] for r in rows)
            log(f"[{time.perf_counter() - start:7.0f} s] {sde_name:18s} {method:26s} {dict(done)}")
        if on_sde_done is not None:
            on_sde_done(rows, time.perf_counter() - start)
    return rows, time.perf_counter() - start


def write_report(rows: list[dict], seconds: float, nfes: tuple[int, ...], out: Path, command: str,
                 partial: str | None = None, provenance: str | None = None) -> None:
    counts = collections.Counter(r["class"] for r in rows)
    by_dtype: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    by_sde: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in rows:
        by_dtype[r["dtype"]][r["class"]] += 1
        by_sde[r["sde"]][r["class"]] += 1
    lines = [
        "# Fuzz-style robustness sweep",
        "",
        *([f"**Partial: the sweep was still running; SDEs done so far: {partial}.**", ""] if partial else []),
        f"`{command}` ({platform.machine()}, torch {torch.__version__}, {os.cpu_count()} CPUs (shared), "
        f"{seconds / 60:.1f} min). Every registered deterministic method ({len(methods())}) x grids "
        f"({', '.join(ei.GRIDS)}) x built-in SDEs (VP, sub-VP, cosine, VE, EDM, DiscreteVP linear) x NFE "
        f"{', '.join(map(str, nfes))} x dtypes float64, float32, float16, bfloat16 (adaptive torchdiffeq methods: once "
        f"per SDE and dtype), on the 2-D Gaussian mixture `gmm2d` ({BATCH} samples from t_max to t_min) with its exact "
        "eps; errors are relative to a DOP853 reference.",
        "",
        *([provenance, ""] if provenance else []),
        f"Classes: silent-bad = a non-finite result returned, or without a warning a relative error above {FAR:g} x "
        f"the float64 run's + {FLOOR:g} x the dtype's unit round-off + nfe x the working precision's (float32 "
        "below float64); warned = a result returned with a RoundoffWarning (the plan amplifies the dtype's round-off "
        f"more than {FLOOR:g}-fold); clear error = ValueError / TypeError / NumericalError naming the method, grid or "
        "argument; unclear error = any other exception or message; crash = not an Exception.",
        "",
        f"Warned runs whose error was above that bound: {sum(1 for r in rows if r.get('bad'))} of "
        f"{counts.get('warned', 0)} (the rest were false alarms).",
        "",
        "| class | runs |",
        "|---|---|",
        *[f"| {c} | {counts.get(c, 0)} |" for c in CLASSES],
        f"| total | {len(rows)} |",
        "",
        "| dtype | " + " | ".join(CLASSES) + " |",
        "|---|" + "---|" * len(CLASSES),
        *[f"| {d} | " + " | ".join(str(c.get(k, 0)) for k in CLASSES) + " |" for d, c in by_dtype.items()],
        "",
        "| SDE | " + " | ".join(CLASSES) + " |",
        "|---|" + "---|" * len(CLASSES),
        *[f"| {d} | " + " | ".join(str(c.get(k, 0)) for k in CLASSES) + " |" for d, c in by_sde.items()],
        "",
    ]
    errors = collections.Counter()
    for r in rows:
        if r["class"] == "clear error":
            msg = r["detail"].split(";")[0].split(": ", 1)[-1]
            errors[msg[:110]] += 1
    lines += ["Most frequent clear errors (message up to its first ';'):", "", "| runs | message |", "|---|---|"]
    lines += [f"| {n} | {m.replace('|', '/')} |" for m, n in errors.most_common(12)]
    bad = [r for r in rows if r["class"] in ("unclear error", "silent-bad", "crash") or r.get("bad")]
    lines += ["", f"Runs that are unclear errors, silent-bad, crashes, or warned and bad: {len(bad)}", ""]
    for r in bad[:200]:
        lines.append(f"- {r['class']}: {r['sde']} / {r['method']} / {r['grid']} / nfe {r['nfe']} / {r['dtype']}: "
                     f"{r['detail'].splitlines()[0][:200]}")
    out.write_text("\n".join(lines) + "\n")
    rows_file = ROOT / ".cache" / f"{out.stem}.json"  # every row, for --merge (large: not in results/)
    rows_file.parent.mkdir(exist_ok=True)
    rows_file.write_text(json.dumps({"seconds": seconds, "nfes": list(nfes), "rows": rows}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"NFE {QUICK_NFES} only (default: {NFES})")
    parser.add_argument("--out", default=None, help="report path (default benchmarks/results/fuzz.md, "
                                                    "fuzz_quick.md with --quick)")
    parser.add_argument("--sde", action="append", default=None, help="only this SDE (repeatable; default: all)")
    parser.add_argument("--method", action="append", default=None, help="only this method (repeatable; default: all)")
    parser.add_argument("--nfe", type=int, nargs="+", default=None, help="these NFEs (default: the sweep's)")
    parser.add_argument("--note", default=None, help="with --merge: a line saying how the runs were made")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="write one report from the rows of several runs (each keeps them in "
                             "benchmarks/.cache/<its report's name>.json); a later file's run of a configuration "
                             "replaces an earlier one's (a rerun after a change)")
    args = parser.parse_args(argv)
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        merged: dict[tuple, dict] = {}  # a later part's run of the same configuration replaces an earlier one
        for part in parts:
            for r in part["rows"]:
                merged[(r["sde"], r["method"], r["grid"], r["nfe"], r["dtype"])] = r
        rows = list(merged.values())
        nfes = tuple(sorted({n for part in parts for n in part["nfes"]}))
        out = Path(args.out) if args.out else ROOT / "results" / "fuzz.md"
        names = [Path(p).name for p in args.merge]
        shown = " ".join(names if len(names) <= 4 else [*names[:3], "..."])
        command = f"python benchmarks/bench_fuzz.py --merge {shown}` ({len(parts)} runs; the time is their sum`"
        write_report(rows, sum(part["seconds"] for part in parts), nfes, out, command, provenance=args.note)
        counts = collections.Counter(r["class"] for r in rows)
        print(dict(counts), f"-> {out}")
        return 0 if all(counts.get(c, 0) == 0 for c in ("unclear error", "silent-bad", "crash")) else 1
    torch.set_num_threads(1)
    nfes = tuple(args.nfe) if args.nfe else (QUICK_NFES if args.quick else NFES)
    out = Path(args.out) if args.out else ROOT / "results" / ("fuzz_quick.md" if args.quick else "fuzz.md")
    command = "python benchmarks/bench_fuzz.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                                   ).rstrip()
    sdes_done = lambda rows: ", ".join(dict.fromkeys(r["sde"] for r in rows))  # noqa: E731
    rows, seconds = sweep(nfes, log=lambda s: print(s, flush=True), only_sdes=args.sde, only_methods=args.method,
                          on_sde_done=lambda rows, sec: write_report(rows, sec, nfes, out, command,
                                                                     partial=sdes_done(rows)))
    write_report(rows, seconds, nfes, out, command)
    counts = collections.Counter(r["class"] for r in rows)
    print(dict(counts), f"-> {out}")
    return 0 if all(counts.get(c, 0) == 0 for c in ("unclear error", "silent-bad", "crash")) else 1


if __name__ == "__main__":
    sys.exit(main())
