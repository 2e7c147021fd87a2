"""Memory held by the linear-SDE layer after building many distinct SDEs (the derivation cache).

Each scenario runs in a fresh process: it builds one SDE (warm-up: imports, sympy's first derivation), reads
the resident set size (VmRSS in /proc/self/status, after ``gc.collect()``), then builds 300 SDEs with
distinct values and drops each at once, reads RSS again, builds 300 more and reads it a third time. A
bounded cache shows as growth that levels off between the second and third reading.

* ``VPSDE(beta_max=20 + k/100)``: one symbolic derivation, new parameter values each time;
* ``DiscreteVP(betas)``: 1000-step linear tables whose last beta differs, i.e. 300 distinct tables.

Run: ``python benchmarks/bench_memory.py`` (writes benchmarks/results/memory.md);
``python benchmarks/bench_memory.py --root PATH --print`` measures another checkout of the package
(e.g. an older commit) without writing the results file.
"""

from __future__ import annotations

import argparse
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

build(0)
gc.collect()
readings = [rss_mib()]
seconds = []
for block in range(2):
    start = time.perf_counter()
    for k in range(1 + block * {n}, 1 + (block + 1) * {n}):
        build(k)
    seconds.append((time.perf_counter() - start) / {n})
    gc.collect()
    readings.append(rss_mib())
print(json.dumps({{"rss": readings, "seconds": seconds, "file": ei.__file__}}))
"""


def run(root: Path, expr: str) -> dict:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", CHILD.format(root=str(root), expr=expr, n=N)], capture_output=True,
                         text=True, check=True, env=env, cwd=root)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose ei_toolkit is measured")
    parser.add_argument("--print", action="store_true", help="print the table only; do not write results")
    args = parser.parse_args()
    rows = []
    for name, expr in SCENARIOS.items():
        r = run(args.root.resolve(), expr)
        base, after1, after2 = r["rss"]
        rows.append(f"| {name} | {base:.0f} | {after1 - base:+.1f} | {after2 - after1:+.1f} | "
                    f"{1e3 * r['seconds'][0]:.1f} |")
    lines = [f"| scenario | RSS after 1 build (MiB) | growth over the next {N} builds (MiB) | "
             f"growth over {N} more (MiB) | ms per build |", "|---|---|---|---|---|", *rows]
    table = "\n".join(lines)
    print(f"ei_toolkit from {args.root.resolve()}\n{table}")
    if args.print:
        return
    out = ROOT / "benchmarks" / "results" / "memory.md"
    if out.exists():  # keep the hand-written context above the table
        text = out.read_text()
        head, sep, _ = text.partition("## After (this checkout)")
        if sep:
            out.write_text(f"{head}{sep}\n\n{table}\n")
            return
    out.write_text(f"# Memory of the derivation cache\n\n## After (this checkout)\n\n{table}\n")


if __name__ == "__main__":
    main()
