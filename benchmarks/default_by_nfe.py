"""How sample()'s default should change with the budget: the candidates of ``benchmarks/choose_default.py`` on the
24 problems of ``bench_accuracy.py`` (same draws, same exact references from benchmarks/.cache), at NFE between and
beyond the 5 / 10 / 20 where the peers were run, each error relative to logrhoab2's on the same problem.

Writes benchmarks/results/default_by_nfe.md. Run: python benchmarks/default_by_nfe.py [--n 64] (about 3 min here,
once the references are cached).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import bench_accuracy as ba
import torch

import ei_toolkit as ei
from ei_toolkit.sampling import default_method

OUT = Path(__file__).parent / "results"
CANDIDATES = ("logrhoab1", "logrhoab1-mid", "logrhoab2", "logrhoab3", "x0-logrhoab1-mid", "x0-logrhoab2",
              "x0-logrhoab3")
GRID = "uniform_logrho"
NFES = (4, 5, 6, 7, 8, 9, 10, 12, 15, 16, 17, 18, 19, 20, 25, 30, 40, 50, 100)
BASE = "logrhoab2"


def errors(n: int) -> dict[str, dict[int, dict[str, float]]]:
    """{problem: {nfe: {method: median error}}}."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for sde_name, make_sde in ba.SDES.items():
        sde = make_sde()
        for mix_name, make_mix in ba.MIXTURES.items():
            mix = make_mix()
            x, ref = ba.start_and_reference(sde_name, sde, mix_name, mix, n, 0)
            model = mix.eps_model(sde)
            per = out.setdefault(f"{sde_name}/{mix_name}", {})
            for nfe in NFES:
                with torch.no_grad():
                    per[nfe] = {m: ba.median_error(ei.sample(model, x, sde, method=m, grid=GRID, nfe=nfe), ref)
                                for m in CANDIDATES}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="trajectories per problem (default 64, as bench_accuracy)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    res = errors(args.n)
    lines = ["# The default by NFE", "",
             f"`python benchmarks/default_by_nfe.py` ({time.perf_counter() - start:.0f} s). Each candidate on "
             f"`{GRID}` on the {len(res)} problems of bench_accuracy.py ({args.n} trajectories); cell = geometric "
             f"mean / worst over the problems of its median error divided by {BASE}'s on the same problem (below 1 "
             "is better); the last column is what `ei.sampling.default_method` picks.", "",
             "| NFE | " + " | ".join(CANDIDATES) + " | default |", "|---|" + "---|" * (len(CANDIDATES) + 1)]
    for nfe in NFES:
        cells = []
        for m in CANDIDATES:
            r = [per[nfe][m] / per[nfe][BASE] for per in res.values()]
            cells.append(f"{ba.geometric_mean(r):.2f} / {max(r):.2f}")
        lines.append(f"| {nfe} | " + " | ".join(cells) + f" | {default_method(nfe)[0]} |")
    text = "\n".join(lines) + "\n"
    (OUT / "default_by_nfe.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
