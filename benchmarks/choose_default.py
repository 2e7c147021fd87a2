"""Choose sample()'s default method (and grid) from benchmarks/results/accuracy.json (bench_accuracy.py).

For every configuration of ours ("method / grid") and every NFE, the ratio of its median error to the best peer
configuration's on each problem; a candidate's score at an NFE is its worst ratio over the problems (the issue's
target is <= 1.0 on every problem), ties broken by the geometric mean. Prints the ranking and the best
configuration per NFE; writes benchmarks/results/default.md.

Run: python benchmarks/choose_default.py [--json benchmarks/results/accuracy.json] [--top 15]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

from bench_accuracy import (
    add_vp_or_logrho,
    default_config,
    geometric_mean,
    is_peer,
    model_dim,
    problem_dim,
    switch_rule,
)

from ei_toolkit.grids import HIGH_DIM

OUT = Path(__file__).parent / "results"
TRAINED_BOUND = 1.0  # issue 26: the uncalibrated default <= 1.0x the best peer on every trained model
FLOW_WORST = 1.5  # issue 21: the flow default never above 1.5x the best peer on a mixture (<= 1.0x in geometric mean)
NEAR_MISS = 1.25  # where no configuration holds FLOW_WORST: the worst mixture ratios counted as near the lowest
GUIDED_ABOVE = 2.0  # ei_toolkit.sampling.GUIDED_ABOVE: above it the guided default applies


DECISION = """Decision (issue 26): the default is chosen on trained networks as well as on the mixtures, and by the size
of the data (rule and tables in the section "With the trained models" below; `ei.sampling.DEFAULTS_BY_NFE`,
`DEFAULTS_BY_NFE_HIGH_DIM`, `GUIDED_DEFAULTS_BY_NFE` and `RectifiedFlow`'s two tables hold the picks,
tests/test_default_method.py and tests/test_flow.py check they agree). The trained networks disagree by size: the
digits models (64 elements per sample), like every mixture (2-256), want their steps near the data (time-quadratic
grids), the image-patch UNets (16 x 16 RGB, 768) want them at high noise (Karras / log-SNR / shifted grids), as SD3
shifts its schedule toward noise for larger images and the DPM-Solver authors advise another grid at high resolution.
One table for both left every configuration above 1.0x somewhere (worst 1.72 / 1.19 / 1.06 at NFE 5 / 10 / 20; the
flow table 2.78 / 3.28 / 1.97). So the default now reads the data size: below `HIGH_DIM` = 512 elements the rule runs
over the mixtures and the small models, at or above it over the large ones, which are one trained model per family so
far (patches, patches-flow): that table is in-sample on that model. Unguided, small: `x0-logrhoab1-unipc` up to NFE 7
and `x0-logrhoab1-mid-pc-lof` up to 14 on `quadratic_t` (uniform_logrho for VE / EDM), `x0-logrhoab2-unipc-bh1`
beyond on `uniform_logrho`; ratio to the best peer on digits 1.00 / 0.85 / 1.00 and digits guided at 1.5 1.00 / 0.88
/ 1.00 (1.00: the configuration is the best peer's algorithm, UniPC, on its grid); on the 24 mixtures worst /
geometric-mean 2.79 / 1.42, 11.26 / 2.77, 6.48 / 1.85 (mixtures with exact scores reward eps extrapolation on the
log-rho grid, trained networks do not). Unguided, large: `logrhoab1-mid` on `karras` up to 7, `x0-logrhoab1-mid-pc`
on `uniform_logrho` up to 14, `x0-logrhoab2-unipc` beyond: patches 0.92 / 0.92 / 1.00 (was 1.72 / 1.19 / 1.06). Under
guidance above scale 2 (digits at scales 4 and 8): `euler` up to NFE 7 and `x0-logrhoab1-mid-lof` (DPM-Solver++(2M)
as diffusers runs it) up to 14, on `quadratic_t`, then `x0-logrhoab1-mid-pc` on `uniform_logrho` up to 20 (worst
ratios 0.89 / 1.35 / 1.00; at NFE 10 the best single peer configuration over both scales is the same 2M at 1.35, and
no configuration of ours or theirs is within 1.0 on both); from 21 the unguided default. Flow models, small (the
section "Rectified flow over the mixtures and the trained flow models" below, `--flow-raw`: bench_flow.py's four
mixtures and digits-flow; per NFE the lowest max(geometric mean, worst trained ratio) within 1.5x on every mixture,
or, where none is, the lowest such score among the near misses; the switches placed by the mixtures at NFE 8 and 15):
`x0-tab2` (DEIS's tAB on the data prediction) on `quadratic_t` up to 6, `logrhoab1-pc` on `quadratic_t` up to 12,
`x0-tab2` on `quadratic_t` beyond. The peers include the flow_matching package's ODESolver (Runge-Kutta on uniform
time), the best peer on the mixtures from NFE 15 and on the trained flow models at NFE 10 / 20 (patches-flow) and 20
(digits-flow): geometric mean over the mixtures 0.81 / 0.30 / 0.20 (worst 1.35 / 1.10 / 1.04), digits-flow 0.89 /
0.38 / 0.25. Flow models, large (patches-flow): `x0-logrhoab2-pc` on `sd3_shift` up to 7, `ipndm` on
`uniform_logrho` beyond: 0.75 / 1.07 / 0.58 (at NFE 10 flow_matching's midpoint rule is the best peer; x0-tss2 on
sd3_shift, its stage placement with the kernel integrated exactly, is 0.99x there, but candidates spend one evaluation
per step, `every_budget`: at odd budgets its last step is first order). Calibrated grids and EMS (grid_opt.md,
ems_trained.md) are the tool for a given model."""


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


def every_budget(config: str) -> bool:
    """Whether the configuration's method spends one evaluation per step, so that a pick measured at NFE 5, 10 and 20
    holds at the budgets between. A singlestep method takes a lower-order last step where its stages do not divide
    the budget: x0-tss2 on patches-flow, 0.99x the best peer at NFE 10, was 1.3x / 1.7x / 2.4x worse than the
    previous default at NFE 9 / 11 / 13 (a review's measurement), so singlestep methods are not default candidates."""
    import ei_toolkit as ei

    method = ei.INTEGRATORS.get(config.split(" / ")[0])
    return method is not None and getattr(method, "evals_per_step", 1) == 1


def ratios_to_best_peer(trained: dict, models: list[str], nfe: str, keep) -> dict[str, list[float]]:
    """{config: [its error / the best peer's, per model in ``models``]} at ``nfe`` (bench_trained.py's JSON), for the
    configurations ``keep`` accepts that ran on every one of them."""
    out: dict[str, list[float]] = {}
    for name in models:
        configs = trained[name].get(nfe, {})
        best = min((v for k, v in configs.items() if is_peer(k) and math.isfinite(v)), default=math.nan)
        # every trained model here is variance preserving: vp_or_logrho is quadratic_t on it
        configs = {**configs, **{k.replace(" / quadratic_t", " / vp_or_logrho"): v for k, v in configs.items()
                                 if k.endswith(" / quadratic_t") and not is_peer(k)}}
        for k, v in configs.items():
            if keep(k):
                out.setdefault(k, []).append(v / best if math.isfinite(v) else math.inf)
    return {k: r for k, r in out.items() if len(r) == len(models)}


def trained_ratios(trained: dict, models: list[str], nfe: str) -> dict[str, list[float]]:
    """:func:`ratios_to_best_peer` of our default candidates (one evaluation per step: :func:`every_budget`)."""
    return ratios_to_best_peer(trained, models, nfe,
                               lambda k: not is_peer(k) and k != "default" and every_budget(k))


def best_single_peer(trained: dict, models: list[str], nfe: str) -> tuple[str, list[float]] | None:
    """The peer configuration with the lowest worst ratio to the per-model best peer over ``models`` at ``nfe``, and
    its ratios: what one fixed peer configuration achieves against the target 'the best peer on every model'."""
    full = ratios_to_best_peer(trained, models, nfe, is_peer)
    return min(full.items(), key=lambda kv: (max(kv[1]), geometric_mean(kv[1]))) if full else None


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
        if k in mix or not data:  # no mixtures (flow models: bench_flow.py has theirs): nan in their columns
            m = mix.get(k, (math.nan, math.nan))
            rows.append((max(r), m[0], m[1], geometric_mean(r), k))
    ok = sorted((row for row in rows if row[0] <= TRAINED_BOUND),
                key=(lambda row: (row[1], row[2])) if by_mixtures else (lambda row: (row[3], row[0], row[1])))
    rest = sorted((row for row in rows if row[0] > TRAINED_BOUND), key=lambda row: (row[0], row[1]))
    return ok + rest


def groups(trained: dict) -> dict[str, list[str]]:
    """The trained models by default table: unguided below HIGH_DIM elements per sample ("unguided"), unguided at or
    above it ("unguided-high"), guidance above GUIDED_ABOVE ("guided"), flow models below and at or above HIGH_DIM
    ("flow", "flow-high")."""
    from ei_toolkit.models.registry import shipped_model

    out: dict[str, list[str]] = {"unguided": [], "unguided-high": [], "guided": [], "flow": [], "flow-high": []}
    for n in sorted(trained):
        high = "-high" if model_dim(n) >= HIGH_DIM else ""
        if n.startswith("digits-guided-") and float(n.rsplit("-", 1)[1]) > GUIDED_ABOVE:
            out["guided"].append(n)
        elif not n.startswith("digits-guided-") and shipped_model(n).prediction == "flow":
            out["flow" + high].append(n)
        else:
            out["unguided" + high].append(n)
    return out


def trained_lines(data: dict, trained: dict, top: int) -> list[str]:
    """The rule with trained models, per NFE, for unguided models (and guidance up to GUIDED_ABOVE) below and at or
    above HIGH_DIM elements per sample (each with the mixtures of its side of HIGH_DIM), for strong guidance and for
    the high-dimensional flow models (RectifiedFlow's low-dimensional table comes from flow_lines, with
    bench_flow.py's mixtures), as tables."""
    by = groups(trained)
    lines = ["## With the trained models (benchmarks/results/trained.json, bench_trained.py)", "",
             f"Rule: per NFE, among our configurations within {TRAINED_BOUND:g}x of the best peer configuration on "
             "every trained model of the group (issue 26's target), the lowest worst ratio on the group's mixtures "
             "(then the geometric mean; for groups without mixtures, the guided one and the high-dimensional ones, "
             "the lowest geometric-mean ratio on its models); when none is within, the lowest worst ratio on the "
             f"trained models. Groups: by data size, below {HIGH_DIM} elements per sample and at or above it (the "
             "mixtures with it), and guidance above "
             f"{GUIDED_ABOVE:g}: " + "; ".join(f"{label} ({', '.join(g) or 'none'})" for label, g in by.items()) + ".",
             ""]
    picks: dict[str, dict[int, str]] = {}
    for label, group in by.items():
        if not group or label == "flow":
            continue
        # the mixtures of the group's side of HIGH_DIM (none for flow models: bench_flow.py has theirs); the guided
        # group is ranked on its models alone, among the configurations the mixtures ran
        side = {} if label.startswith("flow") else {
            k: v for k, v in data.items() if (problem_dim(k) >= HIGH_DIM) == label.endswith("-high")}
        for nfe in sorted({k for n in group for k in trained[n]}, key=int):
            ranked = trained_rule(side, trained, group, nfe, by_mixtures=label.startswith("unguided") and bool(side))
            if not ranked:
                continue
            picks.setdefault(label, {})[int(nfe)] = ranked[0][4]
            lines += [f"### {label}, NFE {nfe}", "", "| configuration | worst trained ratio | gm trained ratio | "
                      "worst mixture ratio | gm mixture ratio |", "|---|---|---|---|---|"]
            lines += [f"| {k} | {tw:.2f} | {tg:.2f} | {mw:.2f} | {mg:.2f} |" for tw, mw, mg, tg, k in ranked[:top]]
            single = best_single_peer(trained, group, nfe) if len(group) > 1 else None
            if single is not None:
                lines += ["", f"The best single peer configuration on these {len(group)} models: {single[0]}, worst "
                          f"ratio {max(single[1]):.2f} (" + ", ".join(f"{r:.2f}" for r in single[1]) + ")."]
            lines.append("")
    lines += ["### The rule's picks, switching at the geometric midpoints of the measured budgets", ""]
    for label, by_nfe in picks.items():
        rule = [(top, *pick.split(" / ")) for top, pick in switch_rule(by_nfe)]
        lines.append(f"- {label}: {rule!r}")
    return lines


def flow_lines(raw: dict, trained: dict, models: list[str]) -> list[str]:
    """Rectified flow's rule over both kinds of evidence: bench_flow.py's mixtures (``--raw``: the rule's four problems,
    each against bench_flow's best peer configuration, the one with the lowest geometric mean there) and the trained
    flow models (each against its own best peer). The targets are issue 21's (the geometric mean over the problems
    <= 1.0x the best peer, never above FLOW_WORST on a mixture) and issue 26's (<= 1.0x on every trained model), so
    per NFE, among the configurations within FLOW_WORST on every mixture, the lowest max(geometric-mean ratio, worst
    ratio on a trained model): both targets hold where it is <= 1, and otherwise it is the nearest miss. Where no
    configuration stays within FLOW_WORST on every mixture (the flow_matching package's Runge-Kutta steps on uniform
    time beat every candidate somewhere from NFE 15 on), a score <= 1 first, then the lowest score among those within
    NEAR_MISS of the lowest worst mixture ratio."""
    from bench_flow import PROBLEMS

    k = len(PROBLEMS)
    lines = ["## Rectified flow over the mixtures and the trained flow models", "",
             f"Mixtures: bench_flow.py's {', '.join(PROBLEMS)} (`python benchmarks/bench_flow.py --raw FILE`); "
             f"trained: {', '.join(models)}. Per NFE, among the configurations within {FLOW_WORST:g}x the best peer "
             "on every mixture, the lowest score max(geometric-mean ratio over all of them, worst ratio on a trained "
             "model): issue 21's target (gm <= 1.0) and issue 26's (<= 1.0 on every trained model) both hold where "
             "it is <= 1.", ""]
    theirs: dict[int, dict[str, list[float]]] = {}
    for peer, nfe, errors in raw["theirs"]:
        theirs.setdefault(int(nfe), {})[peer] = errors[:k]
    mixture: dict[int, dict[str, list[float]]] = {}  # per NFE, each configuration's ratios on the mixtures
    for nfe, by_peer in theirs.items():
        peers = {p: e for p, e in by_peer.items() if all(map(math.isfinite, e))}
        best = peers[min(peers, key=lambda p: geometric_mean(peers[p]))]
        mixture[nfe] = {f"{m} / {g}": [a / b for a, b in zip(errors[:k], best, strict=True)]
                        for m, g, n, errors in raw["ours"] if int(n) == nfe}
    picks = {}
    for nfe in sorted(n for n in mixture if str(n) in trained[models[0]]):
        t_ratios = trained_ratios(trained, models, str(nfe))
        rows = []
        for cfg, r_mix in mixture[nfe].items():
            if cfg not in t_ratios:
                continue
            r = r_mix + t_ratios[cfg]
            gm, worst_trained = geometric_mean(r), max(r[k:])
            rows.append((max(r[:k]) > FLOW_WORST, max(gm, worst_trained), max(r), gm, max(r[:k]), worst_trained, cfg))
        # within FLOW_WORST on every mixture: the lowest score; where none is, the lowest score among the near
        # misses, within NEAR_MISS of the lowest worst mixture ratio (the lowest score alone took 6.7x on a mixture
        # where 2.0x was to be had at about the same score)
        holding = [r for r in rows if r[1] <= 1.0] or rows  # the score's targets first
        near = min(r[4] for r in holding) * NEAR_MISS
        rows.sort(key=lambda r: (r[0], r[0] and r[1] > 1.0, r[0] and r[4] > near, r[1]))
        picks[nfe] = rows[0][-1]
        lines += [f"### NFE {nfe}", "",
                  "| configuration | score: max(gm, worst trained) | worst ratio | gm ratio | worst on mixtures | "
                  "worst trained |", "|---|---|---|---|---|---|"]
        lines += [f"| {c} | {score:.3f}{' (over 1.5 on a mixture)' if out else ''} | {w:.2f} | {g:.2f} | {wm:.2f} | "
                  f"{wt:.2f} |" for out, score, w, g, wm, wt, c in rows[:8]]
        lines.append("")
    # between two measured budgets whose picks differ, a budget measured on the mixtures only (bench_flow's 8, 15)
    # takes the neighbour's pick that does better there (within FLOW_WORST on every mixture first, then a geometric
    # mean <= 1, then within NEAR_MISS of the lower worst ratio, then the geometric mean): the switch is placed by
    # evidence, not only at the geometric midpoint
    measured = sorted(picks)
    between = []
    for a, b in itertools.pairwise(measured):
        for m in sorted(n for n in mixture if a < n < b and picks[a] != picks[b]):
            pair = (picks[a], picks[b])
            holding = [c for c in pair if geometric_mean(mixture[m].get(c, [math.inf])) <= 1.0] or pair
            near = min(max(mixture[m].get(c, [math.inf])) for c in holding) * NEAR_MISS

            def mixture_score(cfg: str, m: int = m, near: float = near) -> tuple[bool, bool, bool, float]:
                r = mixture[m].get(cfg, [math.inf])
                gm = geometric_mean(r)
                return max(r) > FLOW_WORST, gm > 1.0, max(r) > near, gm
            picks[m] = min(pair, key=mixture_score)
            r = mixture[m].get(picks[m], [math.inf])
            between.append(f"NFE {m}: {picks[m]} (worst {max(r):.2f}, gm {geometric_mean(r):.2f} on the mixtures)")
    if between:
        lines += ["Budgets between the measured ones, on the mixtures alone: " + "; ".join(between) + ".", ""]
    rule = [(top, *pick.split(" / ")) for top, pick in switch_rule(picks)]
    return [*lines, f"- flow (mixtures and trained): {rule!r}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=OUT / "accuracy.json", help="accuracy.json to read (default: "
                    "benchmarks/results/accuracy.json)")
    ap.add_argument("--top", type=int, default=15, help="configurations listed per NFE (default 15)")
    ap.add_argument("--trained", type=Path, default=OUT / "trained.json", help="bench_trained.py's JSON (default: "
                    "benchmarks/results/trained.json; skipped when missing)")
    ap.add_argument("--flow-raw", type=Path, default=None, help="bench_flow.py --raw's JSON: adds the flow rule over "
                    "its mixtures and the trained flow models")
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
        trained = json.loads(args.trained.read_text())
        lines += ["", *trained_lines(data, trained, args.top)]
        if args.flow_raw is not None:
            lines += ["", *flow_lines(json.loads(args.flow_raw.read_text()), trained, groups(trained)["flow"])]
    text = "\n".join(lines) + "\n"
    (OUT / "default.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
