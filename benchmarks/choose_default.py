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

from bench_accuracy import add_vp_or_logrho, default_config, geometric_mean, is_peer

OUT = Path(__file__).parent / "results"
TRAINED_BOUND = 1.0  # issue 26: the uncalibrated default <= 1.0x the best peer on every trained model
GUIDED_ABOVE = 2.0  # ei_toolkit.sampling.GUIDED_ABOVE: above it the guided default applies


DECISION = """Decision: the default depends on the budget (`ei.sampling.default_method`): `logrhoab1-mid` up to NFE
6, `logrhoab2` up to 19, `x0-logrhoab3` up to 40, `logrhoab3` beyond, all on the uniform log-rho grid. Against the
peers (tables below, NFE 5 / 10 / 20) the score is the worst ratio over the problems (the target is <= 1.0 on every
problem): `logrhoab1-mid` has the lowest at NFE 5 (2.11, geometric mean 1.05; `logrhoab1`, the exact-integral rule,
2.29 and 1.09, though it is <= 1.0 on more problems, 11 against 8); `logrhoab2` is <= 1.0 on the most problems at NFE
10 (19 of 24, geometric mean 0.72). At NFE 10 the UniPC-type `x0-logrhoab1-mid-pc` has a lower worst ratio (7.93
against 10.36, the edm/256d cancellation below) but is <= 1.0 on 9 problems only (geometric mean 1.10), so
`logrhoab2` stays. At NFE 20 `x0-logrhoab3` has the lowest worst ratio (2.00 against `logrhoab2`'s 3.60, geometric
mean 0.85 against 0.98) though it is <= 1.0 on fewer problems (14 against 17); on the shipped digits model it has
1.14x the best peer's error against 1.61x (digits.md) and under mild guidance 0.94x against 1.2-1.3x (guided.md), so
it is the default from NFE 20. Between and beyond those NFE only our candidates were run (`python
benchmarks/default_by_nfe.py`, results/default_by_nfe.md, errors relative to `logrhoab2` on the same 24 problems):
`logrhoab1-mid` is better up to NFE 6 (0.74x at 5, 0.76x at 6; worst 1.74x and 2.14x) and even at 7 (0.99x);
`x0-logrhoab3` is better from 20 (0.87x at 20; 0.98x at 19 but worst 2.88x; 1.18x at 18; 0.57x at 25) and `logrhoab3`
from 50 (0.24x against 0.32x at 50, 0.10x against 0.27x at 100); at 40 the two are equal (0.33x and 0.34x), where the
default switches. No single configuration is <= 1.0 on every problem: the best peer is the minimum over 36-37 peer
configurations per problem, and at NFE 5-10 several minima are cancellations (e.g. edm/256d at NFE 10: UniPC bh2-3 on
the logSNR grid reaches 9.9e-05, below its own NFE 20 figure 1.1e-04). No peer configuration meets that bar either:
the strongest one alone, UniPC bh2-2 on the logSNR grid, has worst ratios 2.79 / 9.35 / 6.12 at NFE 5 / 10 / 20
(our default 2.11 / 10.36 / 2.00), and the default's error is <= its own on 18, 22 and 21 of the 24 problems (last
table). Calibrated grids (grid_opt.md) are the tool for a given model. Under classifier-free guidance above scale 2
the default is `x0-logrhoab1-mid-pc-lof` up to NFE 20 (guided.md)."""


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
                out.setdefault(nfe, {})[k] = (max(r), geometric_mean(r), len(r))
    return out


def default_and_best(data: dict, nfe: str) -> tuple[list[float], list[float]]:
    """Per problem at ``nfe``: the default's ratio to the best peer, and the best of ours'."""
    d, b = [], []
    for problem, per_nfe in data.items():
        configs = per_nfe.get(nfe, {})
        peers = [v for k, v in configs.items() if is_peer(k) and math.isfinite(v)]
        ours = [v for k, v in configs.items() if not is_peer(k) and math.isfinite(v)]
        if peers and ours:
            best = min(peers)
            d.append(configs.get(default_config(nfe, problem), math.inf) / best)
            b.append(min(ours) / best)
    return d, b


def peers_alone(data: dict, nfe: str) -> list[tuple[float, float, int, int, float, float, str]]:
    """Every peer configuration that ran on every problem at ``nfe``, as a user would pick one sampler:
    (its worst and geometric-mean ratio to the per-problem best peer, problems where our default's error is <= its
    own, problems, the worst and geometric mean of default / it, name), strongest (lowest worst ratio) first."""
    per: dict[str, list[tuple[float, float]]] = {}
    n = 0
    for problem, per_nfe in data.items():
        configs = per_nfe.get(nfe, {})
        peers = {k: v for k, v in configs.items() if is_peer(k) and math.isfinite(v)}
        ours = configs.get(default_config(nfe, problem), math.inf)
        if not peers:
            continue
        n += 1
        best = min(peers.values())
        for k, v in peers.items():
            per.setdefault(k, []).append((v / best, ours / v))
    rows = []
    for k, r in per.items():
        if len(r) == n:
            own, vs = [a for a, _ in r], [b for _, b in r]
            rows.append((max(own), geometric_mean(own), sum(b <= 1.0 for b in vs), n, max(vs), geometric_mean(vs), k))
    return sorted(rows)


def trained_ratios(trained: dict, models: list[str], nfe: str) -> dict[str, list[float]]:
    """{config: [its error / the best peer's, per model in ``models``]} at ``nfe`` (bench_trained.py's JSON), for the
    configurations of ours that ran on every one of them."""
    out: dict[str, list[float]] = {}
    for name in models:
        configs = trained[name].get(nfe, {})
        best = min((v for k, v in configs.items() if is_peer(k) and math.isfinite(v)), default=math.nan)
        # every trained model here is variance preserving: vp_or_logrho is quadratic_t on it
        configs = {**configs, **{k.replace(" / quadratic_t", " / vp_or_logrho"): v for k, v in configs.items()
                                 if k.endswith(" / quadratic_t") and not is_peer(k)}}
        for k, v in configs.items():
            if not is_peer(k) and k != "default":
                out.setdefault(k, []).append(v / best if math.isfinite(v) else math.inf)
    return {k: r for k, r in out.items() if len(r) == len(models)}


def trained_rule(data: dict, trained: dict, models: list[str], nfe: str, by_mixtures: bool = True
                 ) -> list[tuple[float, float, float, float, str]]:
    """Candidates at ``nfe`` ranked by the rule with trained models: those within TRAINED_BOUND of the best peer on
    every trained model in ``models`` first, by their worst then geometric-mean ratio on the mixtures (``by_mixtures``;
    else by their geometric-mean ratio on the trained models: the mixtures are unguided); then the rest by their worst
    ratio on the trained models. Rows: (worst trained ratio, worst mixture ratio, gm mixture ratio, gm trained ratio,
    config)."""
    mix = scores(data).get(nfe, {})
    rows = []
    for k, r in trained_ratios(trained, models, nfe).items():
        if k in mix:
            rows.append((max(r), mix[k][0], mix[k][1], geometric_mean(r), k))
    ok = sorted((row for row in rows if row[0] <= TRAINED_BOUND),
                key=(lambda row: (row[1], row[2])) if by_mixtures else (lambda row: (row[3], row[0])))
    rest = sorted((row for row in rows if row[0] > TRAINED_BOUND), key=lambda row: (row[0], row[1]))
    return ok + rest


def trained_lines(data: dict, trained: dict, top: int) -> list[str]:
    """The rule with trained models, per NFE, for unguided models (and guidance up to GUIDED_ABOVE) and for strong
    guidance, as tables."""
    from ei_toolkit.models.registry import shipped_model

    names = sorted(trained)
    flow = {n for n in names if not n.startswith("digits-guided-") and shipped_model(n).prediction == "flow"}
    guided = [n for n in names if n.startswith("digits-guided-") and float(n.rsplit("-", 1)[1]) > GUIDED_ABOVE]
    plain = [n for n in names if n not in flow and n not in guided]
    lines = ["## With the trained models (benchmarks/results/trained.json, bench_trained.py)", "",
             f"Rule: per NFE, among our configurations within {TRAINED_BOUND:g}x of the best peer configuration on "
             "every trained model of the group (issue 26's target), the lowest worst ratio on the 24 mixtures (then "
             "the geometric mean; for the guided group, whose models the unguided mixtures do not represent, the "
             "lowest geometric-mean ratio on its models); when none is within, the lowest worst ratio on the "
             "trained models. Groups: "
             f"unguided ({', '.join(plain)}) and guidance above {GUIDED_ABOVE:g} ({', '.join(guided) or 'none'}).",
             ""]
    for label, group in (("unguided", plain), ("guided", guided)):
        if not group:
            continue
        for nfe in sorted({k for n in group for k in trained[n]}, key=int):
            ranked = trained_rule(data, trained, group, nfe, by_mixtures=label == "unguided")
            if not ranked:
                continue
            lines += [f"### {label}, NFE {nfe}", "", "| configuration | worst trained ratio | gm trained ratio | "
                      "worst mixture ratio | gm mixture ratio |", "|---|---|---|---|---|"]
            lines += [f"| {k} | {tw:.2f} | {tg:.2f} | {mw:.2f} | {mg:.2f} |" for tw, mw, mg, tg, k in ranked[:top]]
            lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=OUT / "accuracy.json", help="accuracy.json to read (default: "
                    "benchmarks/results/accuracy.json)")
    ap.add_argument("--top", type=int, default=15, help="configurations listed per NFE (default 15)")
    ap.add_argument("--trained", type=Path, default=OUT / "trained.json", help="bench_trained.py's JSON (default: "
                    "benchmarks/results/trained.json; skipped when missing)")
    args = ap.parse_args()
    data = add_vp_or_logrho(json.loads(args.json.read_text()))
    table = scores(data)
    nfes = sorted(table, key=int)
    lines = ["# Choosing the default", "", DECISION, "",
             f"From `{args.json.name}` (`python benchmarks/bench_accuracy.py`); command: "
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
              "| NFE | default | default <= 1.0 | default <= 0.5 | worst default ratio | best of ours <= 1.0 | "
              "best of ours <= 0.5 |", "|---|---|---|---|---|---|---|"]
    for nfe in nfes:
        d, b = default_and_best(data, nfe)
        lines.append(f"| {nfe} | {default_config(nfe)} | {sum(v <= 1.0 for v in d)}/{len(d)} | "
                     f"{sum(v <= 0.5 for v in d)}/{len(d)} | {max(d):.2f} | "
                     f"{sum(v <= 1.0 for v in b)}/{len(b)} | {sum(v <= 0.5 for v in b)}/{len(b)} |")
    lines += ["", "## Our default against each peer configuration alone", "",
              "A user runs one sampler, not the per-problem best of the 36-37 peer configurations. For the strongest "
              "(lowest worst ratio to the per-problem best peer, the score our candidates get above): their own worst "
              "and geometric-mean ratio, and our default's error against theirs problem by problem.", "",
              "| NFE | peer configuration | its worst ratio | its gm ratio | default <= it | worst default / it | "
              "gm default / it |", "|---|---|---|---|---|---|---|"]
    for nfe in nfes:
        for own_w, own_g, wins, n, w, g, k in peers_alone(data, nfe)[: max(3, args.top // 2)]:
            lines.append(f"| {nfe} | {k} | {own_w:.2f} | {own_g:.2f} | {wins}/{n} | {w:.2f} | {g:.2f} |")
    if args.trained.exists():
        lines += ["", *trained_lines(data, json.loads(args.trained.read_text()), args.top)]
    text = "\n".join(lines) + "\n"
    (OUT / "default.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
