"""Integrator error on trained networks (issue 26): every candidate (method, grid) of ours and every peer
configuration on the shipped models, against each model's own near-exact ODE solution from the same noise.

Models: every entry of ``ei_toolkit.models.registry`` (``--models`` to choose) and the conditional digits model under
classifier-free guidance (``digits-guided-<scale>``, labels 0..9 in turn). Each sampler starts from the same N(0, I)
draws (``--n``, seed 1) at its own first time and runs to the model's data end; the error is the median over samples
of the per-sample RMS distance to the near-exact solution from that start (dopri5 at rtol = atol = 1e-7: variance-
preserving models with ``ei.odeint`` in the log-rho frame, flow models directly on dx/dt = v in t).

Peers: variance-preserving models, benchmarks/peers.py (diffusers DPM-Solver++ 2M/3M/2S/3S, UniPC bh1/bh2 on the
official DPM-Solver grids and Karras sigmas; k-diffusion on Karras sigmas); flow models, bench_flow.py's (diffusers
FlowMatchEuler / FlowMatchHeun, DPM-Solver++ and UniPC with use_flow_sigmas, shift 1 and 3; the flow_matching
package's ODESolver where its evaluations a step divide the NFE).
Ours: every deterministic, plan-based, fixed-NFE method of the registry on every grid of ``GRIDS`` (flow models: the
flow grids too), named "method / grid"; and "default" (``ei.sample`` with no method).

Writes benchmarks/results/trained.json ({model: {nfe: {config: median error}}}, configurations that used exactly NFE
evaluations only), trained.fd.json (the same with the Frechet distance to the held-out data in the model's feature
map, for models that have one: the digits classifier's) and trained.md (per model and NFE: the default, the best of
ours and the best peer; FD tables).
``benchmarks/choose_default.py --trained`` reads the JSON with the mixtures' accuracy.json.

Run: python benchmarks/bench_trained.py [--models digits patches ...] [--n 256] [--nfe 5 10 20]
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import torch
from bench_accuracy import is_peer, model_dim, our_methods
from bench_flow import FM_METHODS, flow_matching_peers, run_flow_matching, run_scheduler
from bench_flow import peers as flow_peers
from peers import available_peers

import ei_toolkit as ei
from ei_toolkit.models.registry import model_names, shipped_model

OUT = Path(__file__).parent / "results"
VP_GRIDS = ("uniform_logrho", "quadratic_t", "karras", "uniform_t")
FLOW_GRIDS = ("uniform_sigma", "sd3_shift", "quadratic_t", "uniform_logrho")
GUIDED = (1.5, 4.0, 8.0)


def guided_digits(scale: float, n: int):
    """(model, sde, shape, flow?) of the conditional digits model under classifier-free guidance at ``scale``."""
    from ei_toolkit.models import digits_cond_model, guided_digits_model

    labels = torch.arange(n) % 10
    return guided_digits_model(digits_cond_model(), labels, scale), ei.DiscreteVP.linear(), (1, 8, 8), False


def load(name: str, n: int):
    """(model, sde, one sample's shape, is it a flow model) for a registry name or ``digits-guided-<scale>``."""
    if name.startswith("digits-guided-"):
        return guided_digits(float(name.rsplit("-", 1)[1]), n)
    entry = shipped_model(name)
    return entry.load("cpu"), entry.sde(), entry.shape, entry.prediction == "flow"


def fd_of(name: str):
    """The Frechet distance to the held-out data in the model's feature map (None without one)."""
    entry = None if name.startswith("digits-guided-") else shipped_model(name)
    if entry is None or entry.features is None:
        return None
    from ei_toolkit.metrics import frechet_distance

    held = entry.data()[1]
    reference = entry.features(held).double().numpy()
    return lambda x: frechet_distance(entry.features(x).double().numpy(), reference)


def flow_reference(model, z: torch.Tensor, t0: float) -> torch.Tensor:
    """dx/dt = v(x, t) from t0 to 0 by dopri5 at 1e-7 (torchdiffeq), in float64."""
    from torchdiffeq import odeint

    def f(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return model(x, t.to(x.dtype).expand(x.shape[0])).to(x.dtype)

    ts = torch.tensor([t0, 0.0], dtype=torch.float64)
    return odeint(f, z.double(), ts, rtol=1e-7, atol=1e-7, method="dopri5")[-1].to(z.dtype)


def median_rms(x: torch.Tensor, ref: torch.Tensor) -> float:
    if not torch.isfinite(x).all():
        return math.inf
    return float((x - ref).reshape(len(x), -1).pow(2).mean(1).sqrt().median())


def run_model(name: str, n: int, nfes: list[int]) -> tuple[dict[int, dict[str, float]], dict[int, dict[str, float]]]:
    """({nfe: {config: median error}}, {nfe: {config: FD}}; the second empty without a feature map)."""
    model, sde, shape, flow = load(name, n)
    z = torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))
    out: dict[int, dict[str, float]] = {k: {} for k in nfes}
    fds: dict[int, dict[str, float]] = {k: {} for k in nfes}
    fd = fd_of(name)

    def record(k: int, config: str, x: torch.Tensor, reference: torch.Tensor) -> None:
        out[k][config] = median_rms(x, reference)
        if fd is not None and math.isfinite(out[k][config]):
            fds[k][config] = fd(x)

    prediction = "flow" if flow else "eps"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if flow:
            refs = {1.0: flow_reference(model, z, 1.0)}
        else:
            refs = {sde.t_max: ei.odeint(model, z, sde, rtol=1e-7, atol=1e-7, frame="logrho").x}
        ref = next(iter(refs.values()))
        extra = {"t_end": 0.0} if flow else {}
        for k in nfes:
            record(k, "default", ei.sample(model, z, sde, nfe=k, prediction=prediction, **extra), ref)
            for method in our_methods():
                for grid in FLOW_GRIDS if flow else VP_GRIDS:
                    try:
                        x = ei.sample(model, z, sde, method=method, grid=grid, nfe=k, prediction=prediction,
                                      **extra)
                    except (ValueError, ArithmeticError):  # a method the grid or the model does not admit; diverged
                        continue
                    record(k, f"{method} / {grid}", x, ref)
            if flow:
                for peer, (make, steps_are_evals) in flow_peers().items():
                    for steps in ([k] if steps_are_evals else range(k, 0, -1)):
                        x, s0, calls = run_scheduler(make(), steps, model, z)
                        if calls <= k:
                            break
                    if calls != k:
                        continue
                    if s0 not in refs:
                        refs[s0] = flow_reference(model, z, s0)
                    record(k, f"diffusers {peer}", x, refs[s0])
                for peer, fm_method in flow_matching_peers().items():  # uniform steps of t from pure noise
                    if k % FM_METHODS[fm_method] == 0:  # exactly k evaluations, as every peer here
                        x, _, _ = run_flow_matching(fm_method, k // FM_METHODS[fm_method], model, z)
                        record(k, peer, x, refs[1.0])
            else:
                for peer, run in available_peers().items():
                    x, _, used = run(model, z, sde, k)
                    if used == k:
                        record(k, peer, x, ref)
        if fd is not None:
            fds[0] = {"near-exact solution": fd(ref)}
    return out, fds


def fd_table(fds: dict[str, dict[int, dict[str, float]]], results: dict[str, dict[int, dict[str, float]]]
             ) -> list[str]:
    """FD of the default, the best of ours and the best peer (both by integrator error) per model with features."""
    lines = []
    for name, per in fds.items():
        if not any(per.values()):  # no feature map
            continue
        floor = per.get(0, {}).get("near-exact solution", math.nan)
        lines += [f"### {name}: Frechet distance to the held-out data (near-exact solution: {floor:.2f})", "",
                  "| NFE | default | best of ours (by error) | its FD | best peer (by error) | its FD | lowest FD of "
                  "ours | lowest FD of the peers |", "|---|---|---|---|---|---|---|---|"]
        for k, configs in results[name].items():
            f = per.get(k, {})
            peers = {c: e for c, e in configs.items() if is_peer(c) and math.isfinite(e)}
            ours = {c: e for c, e in configs.items() if not is_peer(c) and c != "default" and math.isfinite(e)}
            bp, bo = min(peers, key=peers.get), min(ours, key=ours.get)
            low_o = min((v for c, v in f.items() if not is_peer(c)), default=math.nan)
            low_p = min((v for c, v in f.items() if is_peer(c)), default=math.nan)
            lines.append(f"| {k} | {f.get('default', math.nan):.2f} | {bo} | {f.get(bo, math.nan):.2f} | {bp} | "
                         f"{f.get(bp, math.nan):.2f} | {low_o:.2f} | {low_p:.2f} |")
        lines.append("")
    return lines


def current_default(name: str, nfe: int) -> str:
    """The configuration ("method / grid") that ei.sample picks today without a method for this model and NFE: the
    "default" entry of the JSON is what it picked when the model was measured, which a later change of the default
    leaves behind."""
    if name.startswith("digits-guided-"):
        scale, sde = float(name.rsplit("-", 1)[1]), ei.DiscreteVP.linear()
    else:
        scale, sde = None, shipped_model(name).sde()
    method, grid = ei.sampling.default_method(nfe, guidance_scale=scale, sde=sde, dim=model_dim(name))
    return f"{method} / {grid}"


def table(results: dict[str, dict[int, dict[str, float]]]) -> list[str]:
    lines = ["| model | NFE | default now | its error | ratio | default when measured: ratio | best of ours | "
             "its error | ratio | best peer | its error |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, per in results.items():
        for k, configs in per.items():
            peers = {c: e for c, e in configs.items() if is_peer(c) and math.isfinite(e)}
            ours = {c: e for c, e in configs.items() if not is_peer(c) and c != "default" and math.isfinite(e)}
            bp, bo, d = min(peers, key=peers.get), min(ours, key=ours.get), configs["default"]
            now = current_default(name, k)
            e = configs.get(now, math.nan)
            lines.append(f"| {name} | {k} | {now} | {e:.2e} | {e / peers[bp]:.2f} | {d / peers[bp]:.2f} | {bo} | "
                         f"{ours[bo]:.2e} | {ours[bo] / peers[bp]:.2f} | {bp} | {peers[bp]:.2e} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=[*model_names(), *(f"digits-guided-{s:g}" for s in GUIDED)])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--nfe", nargs="+", type=int, default=[5, 10, 20])
    ap.add_argument("--json", default=str(OUT / "trained.json"))
    ap.add_argument("--md", default=str(OUT / "trained.md"))
    ap.add_argument("--report-only", action="store_true", help="rewrite the markdown from the JSON files, run nothing")
    args = ap.parse_args(argv)
    if args.report_only:
        args.models = []
    torch.set_num_threads(1)
    start = time.perf_counter()
    path, fd_path = Path(args.json), Path(args.json).with_suffix(".fd.json")
    results: dict[str, dict[int, dict[str, float]]] = {}
    fds: dict[str, dict[int, dict[str, float]]] = {}
    if path.exists():  # models run earlier are kept: one model can be rerun alone
        results = {m: {int(k): v for k, v in per.items()} for m, per in json.loads(path.read_text()).items()}
    if fd_path.exists():
        fds = {m: {int(k): v for k, v in per.items()} for m, per in json.loads(fd_path.read_text()).items()}
    for name in args.models:
        t = time.perf_counter()
        results[name], fds[name] = run_model(name, args.n, args.nfe)
        print(f"{name}: {time.perf_counter() - t:.0f} s", flush=True)
        for file, kept in ((path, results), (fd_path, fds)):  # after each model: a long run keeps its work
            if file.exists():  # another run may have added models meanwhile: keep them
                saved = {m: {int(k): v for k, v in per.items()} for m, per in json.loads(file.read_text()).items()}
                kept.update({m: v for m, v in saved.items() if m != name})
            file.write_text(json.dumps(kept, indent=1, sort_keys=True))
    lines = ["# Trained networks: integrator error against each model's near-exact ODE solution", "",
             "`python benchmarks/bench_trained.py --n 256` (the UNet models, patches and patches-flow, with `--n 64`: "
             f"about 17 min each on a shared 2-core CPU; this run: {', '.join(args.models) or 'report only'}, "
             f"{time.perf_counter() - start:.0f} s). Median over the samples of the per-sample RMS "
             "distance to the model's own dopri5 (1e-7) solution from the same noise; ratio = error / the best "
             "peer configuration's on that model and NFE. See the script's docstring; choose_default.py --trained "
             "turns these figures and the mixtures' into the default.", "", *table(results), "",
             *fd_table(fds, results)]
    Path(args.md).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
