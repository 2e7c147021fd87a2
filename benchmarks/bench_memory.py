"""Memory held by the linear-SDE layer after building many distinct SDEs (the derivation cache).

Each scenario runs in a fresh process: it builds one SDE (warm-up: imports, sympy's first derivation), reads
the resident set size (VmRSS in /proc/self/status, after ``gc.collect()``), then builds 300 SDEs with
distinct values and drops each at once, reads RSS again, builds 300 more and reads it a third time. A
bounded cache shows as growth that levels off between the second and third reading.

* ``VPSDE(beta_max=20 + k/100)``: one symbolic derivation, new parameter values each time;
* ``DiscreteVP(betas)``: 1000-step linear tables whose last beta differs, i.e. 300 distinct tables.

Run: ``python benchmarks/bench_memory.py`` (writes benchmarks/results/memory.md); ``--before PATH`` also
measures another checkout of the package (e.g. ``git worktree add /tmp/old HEAD``), ``--print`` writes
nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
N = 300

SCENARIOS = {
    "VPSDE(beta_max=20 + k/100)": "ei.VPSDE(beta_max=20.0 + k / 100)",
    "DiscreteVP(1000 betas, last beta varies)": (
        "ei.DiscreteVP(np.concatenate([np.linspace(1e-4, 0.02, 999), [0.02 + 1e-6 * (k + 1)]]))"
    ),
}

CHILD = r"""
import gc, json, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import ei_toolkit as ei

def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

def build(k):
    return {expr}

def live():
    from sympy.core.cache import CACHE
    from ei_toolkit.sde.tables import _Table
    objs = gc.get_objects()
    return {{"derivations": sum(type(o).__name__ in ("Derivation", "_Built") for o in objs),
             "tables": sum(isinstance(o, _Table) for o in objs),
             "sympy_cache": sum(c.cache_info().currsize for c in CACHE)}}

build(0)
gc.collect()
readings = [rss_mib()]
seconds = []
for block in range({blocks}):
    start = time.perf_counter()
    for k in range(1 + block * {n}, 1 + (block + 1) * {n}):
        build(k)
    seconds.append((time.perf_counter() - start) / {n})
    gc.collect()
    readings.append(rss_mib())
print(json.dumps({{"rss": readings, "seconds": seconds, "live": live(), "file": ei.__file__}}))
"""


def run(root: Path, expr: str, blocks: int) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", CHILD.format(root=str(root), expr=expr, n=N, blocks=blocks)],
                         capture_output=True, text=True, check=True, env=env, cwd=root)
    return json.loads(res.stdout.strip().splitlines()[-1])


def table(root: Path, blocks: int) -> str:
    rows = []
    for name, expr in SCENARIOS.items():
        r = run(root, expr, blocks)
        rss, live = r["rss"], r["live"]
        growth = " | ".join(f"{b - a:+.1f}" for a, b in itertools.pairwise(rss))
        rows.append(f"| {name} | {rss[0]:.0f} | {growth} | {1e3 * r['seconds'][0]:.0f} | {live['derivations']} | "
                    f"{live['tables']} | {live['sympy_cache']} |")
    heads = " | ".join(f"growth, builds {k * N + 1}-{(k + 1) * N} (MiB)" for k in range(blocks))
    return "\n".join([f"| scenario | RSS after 1 build (MiB) | {heads} | ms per build | derivations alive | "
                      "tables alive | entries in sympy's caches |", "|---" * (6 + blocks) + "|", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose ei_toolkit is measured")
    parser.add_argument("--before", type=Path, help="also measure this checkout (e.g. the previous commit)")
    parser.add_argument("--blocks", type=int, default=2, help=f"blocks of {N} builds (default 2)")
    parser.add_argument("--print", action="store_true", help="print the tables only; do not write results")
    args = parser.parse_args()
    sections = []
    if args.before:
        sections.append(f"## Before ({args.before})\n\n{table(args.before.resolve(), args.blocks)}")
    sections.append(f"## {'This checkout' if args.root == ROOT else args.root}\n\n"
                    f"{table(args.root.resolve(), args.blocks)}")
    text = "\n\n".join(sections)
    print(text)
    if args.print:
        return
    head = (f"# Memory of the derivation cache\n\n`python {' '.join(sys.argv)}`\n\nMachine: {os.cpu_count()} CPU "
            f"cores, Python {sys.version.split()[0]}. Each row is a fresh process; RSS read after gc.collect(); the "
            "counts are live objects at the end (sympy's caches: entries over all its cached functions).\n\n")
    out = ROOT / "benchmarks" / "results" / "memory.md"
    out.write_text(head + text + "\n")


if __name__ == "__main__":
    main()
