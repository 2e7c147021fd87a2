"""Choose sample()'s default method (and grid) from benchmarks/results/accuracy.json (bench_accuracy.py).

For every configuration of ours ("method / grid") and every NFE, the ratio of its median error to the best peer
configuration's on each problem; a candidate's score at an NFE is its worst ratio over the problems (the issue's
target is <= 1.0 on every problem), ties broken by the geometric mean. Prints the ranking and the best
configuration per NFE; writes benchmarks/results/default.md.

Run: python benchmarks/choose_default.py [--json benchmarks/results/accuracy.json] [--top 15]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from ei_toolkit import INTEGRATORS
from ei_toolkit.sampling import DEFAULT_METHOD

OUT = Path(__file__).parent / "results"
DEFAULT = f"{DEFAULT_METHOD} / {INTEGRATORS[DEFAULT_METHOD].default_grid}"


def is_peer(name: str) -> bool:
    return name.startswith(("diffusers ", "k-diffusion "))


def scores(data: dict) -> dict[str, dict[str, tuple[float, float, int]]]:
    """{nfe: {config: (worst ratio, geometric-mean ratio, problems)}} over the problems that have a peer."""
    ratios: dict[str, dict[str, list[float]]] = {}
    for per_nfe in data.values():
        for nfe, configs in per_nfe.items():
            peers = [v for k, v in configs.items() if is_peer(k) and math.isfinite(v)]
            if not peers:
                continue
            best = min(peers)
            for k, v in configs.items():
                if not is_peer(k):
                    ratios.setdefault(nfe, {}).setdefault(k, []).append(v / best if math.isfinite(v) else math.inf)
    n_problems = {nfe: max(len(r) for r in per.values()) for nfe, per in ratios.items()}
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for nfe, per in ratios.items():
        for k, r in per.items():
            if len(r) == n_problems[nfe]:  # ran on every problem at this NFE
                gm = math.exp(sum(math.log(v) for v in r) / len(r)) if all(math.isfinite(v) for v in r) else math.inf
                out.setdefault(nfe, {})[k] = (max(r), gm, len(r))
    return out


def default_and_best(data: dict, nfe: str) -> tuple[list[float], list[float]]:
    """Per problem at ``nfe``: the default's ratio to the best peer, and the best of ours'."""
    d, b = [], []
    for per_nfe in data.values():
        configs = per_nfe.get(nfe, {})
        peers = [v for k, v in configs.items() if is_peer(k) and math.isfinite(v)]
        ours = [v for k, v in configs.items() if not is_peer(k) and math.isfinite(v)]
        if peers and ours:
            best = min(peers)
            d.append(configs.get(DEFAULT, math.inf) / best)
            b.append(min(ours) / best)
    return d, b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=OUT / "accuracy.json", help="accuracy.json to read (default: "
                    "benchmarks/results/accuracy.json)")
    ap.add_argument("--top", type=int, default=15, help="configurations listed per NFE (default 15)")
    args = ap.parse_args()
    data = json.loads(args.json.read_text())
    table = scores(data)
    nfes = sorted(table, key=int)
    lines = ["# Choosing the default", "", f"From `{args.json.name}` (`python benchmarks/bench_accuracy.py`); command: "
             "`python benchmarks/choose_default.py`. Ratio = our median error / the best peer configuration's on the "
             "same problem; worst = max over problems, gm = geometric mean.", ""]
    common: dict[str, float] = {}
    for nfe in nfes:
        ranked = sorted(table[nfe].items(), key=lambda kv: (kv[1][0], kv[1][1]))
        lines += [f"## NFE {nfe} ({ranked[0][1][2]} problems)", "", "| configuration | worst ratio | gm ratio |",
                  "|---|---|---|"]
        lines += [f"| {k} | {w:.2f} | {g:.2f} |" for k, (w, g, _) in ranked[: args.top]]
        lines.append("")
        for k, (w, _, _) in table[nfe].items():
            common[k] = max(common.get(k, 0.0), w)
    best_all = sorted((v, k) for k, v in common.items() if all(k in table[n] for n in nfes))[:args.top]
    lines += ["## One configuration for every NFE (worst ratio over problems and NFE)", "",
              "| configuration | worst ratio |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for v, k in best_all]
    lines += ["", "## Against the targets (per NFE: problems where the ratio is <= 1.0 / <= 0.5)", "",
              "| NFE | default (" + DEFAULT + ") <= 1.0 | default <= 0.5 | best of ours <= 1.0 | best of ours <= 0.5 |",
              "|---|---|---|---|---|"]
    for nfe in nfes:
        d, b = default_and_best(data, nfe)
        lines.append(f"| {nfe} | {sum(v <= 1.0 for v in d)}/{len(d)} | {sum(v <= 0.5 for v in d)}/{len(d)} | "
                     f"{sum(v <= 1.0 for v in b)}/{len(b)} | {sum(v <= 0.5 for v in b)}/{len(b)} |")
    text = "\n".join(lines) + "\n"
    (OUT / "default.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
