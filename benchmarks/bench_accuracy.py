"""Accuracy per model evaluation on Gaussian mixtures (exact eps), DDPM linear schedule (betas 1e-4..0.02,
1000 steps), from t = 999 to t = 0: every ei_toolkit method x grid against diffusers and k-diffusion.

Run: python benchmarks/bench_accuracy.py [--n 1000] (writes benchmarks/results/accuracy.md and
accuracy.png). Needs the bench extra: bash scripts/setup.sh bench && pip install --no-deps k-diffusion.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from peers import available_peers

from ei_toolkit import compare
from ei_toolkit.testing import PROBLEMS

OUT = Path(__file__).parent / "results"
HIGHLIGHT = ["logrhoab2 / uniform_logrho", "tab3 / quadratic_t", "ddim / quadratic_t"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000, help="trajectories per problem")
    ap.add_argument("--problems", nargs="*", default=list(PROBLEMS))
    ap.add_argument("--nfe", nargs="*", type=int, default=[5, 10, 15, 20, 50])
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from results/accuracy.json")
    args = ap.parse_args()
    if args.plot_only:
        rows = [compare.Row(**r) for r in json.loads((OUT / "accuracy.json").read_text())]
        compare.plot(rows, OUT / "accuracy.png", highlight=HIGHLIGHT)
        return
    start = time.perf_counter()
    peers = available_peers()
    rows = compare.run_comparison(problems=args.problems, nfes=args.nfe, n=args.n, peers=peers, log=True)
    took = time.perf_counter() - start
    OUT.mkdir(exist_ok=True)
    (OUT / "accuracy.json").write_text(json.dumps([asdict(r) for r in rows], indent=0))
    parts = [
        "# Accuracy per model evaluation",
        "",
        f"DDPM linear schedule (1000 steps), t = 999 -> 0, {args.n} trajectories from the exact marginal at "
        "t = 999 per problem; error against dopri5 (rtol = atol = 1e-10, log-rho frame) at the time each "
        f"sampler ends at. Peers: {', '.join(peers)}. Run time {took:.0f} s. "
        "Command: `python benchmarks/bench_accuracy.py`.",
        "",
        "## Best of ours against the best peer (median of per-trajectory RMS error / RMS over all)",
        "",
        compare.summary_table(rows),
    ]
    for p in args.problems:
        parts += ["", f"## {p}: median per-trajectory RMS error (NFE actually used in brackets where it "
                  "differs)", "", compare.full_table(rows, p)]
        parts += ["", f"## {p}: RMS error over all trajectories", "", compare.full_table(rows, p, "rms")]
    (OUT / "accuracy.md").write_text("\n".join(parts) + "\n")
    compare.plot(rows, OUT / "accuracy.png", highlight=HIGHLIGHT)
    print(compare.summary_table(rows))


if __name__ == "__main__":
    main()
