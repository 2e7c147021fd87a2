"""``ei-toolkit likelihood``: bits per dimension of held-out data under a shipped model's probability-flow ODE
(ei.log_likelihood), with uniform dequantisation of the data's levels (the registry's ``levels``)."""

from __future__ import annotations

import argparse
import time

import torch

from .common import UsageError, add_model_option, check_method, held_out, load_model, positive_int, shipped, unknown


def add_parser(sub: argparse._SubParsersAction) -> None:
    lk = sub.add_parser("likelihood", help="bits per dimension of held-out data under a shipped model "
                                           "(probability-flow ODE, uniform dequantisation)")
    add_model_option(lk, "the shipped model (and its held-out data)")
    lk.add_argument("--n", type=positive_int, default=64, help="number of held-out samples (default: 64)")
    lk.add_argument("--nfe", type=positive_int, default=None,
                    help="model evaluations (default: ei.log_likelihood's, 64)")
    lk.add_argument("--method", default=None, help="integrator (default: ei.log_likelihood's for --nfe)")
    lk.add_argument("--divergence", default="exact",
                    help="exact (one vector-Jacobian product per dimension and evaluation), rademacher or gaussian "
                         "(Hutchinson) (default: exact)")
    lk.add_argument("--probes", type=positive_int, default=None,
                    help="Hutchinson probes per sample (default: 1; with --divergence rademacher or gaussian)")
    lk.add_argument("--seed", type=int, default=0,
                    help="seed of the samples chosen, the dequantisation and the probes (default: 0)")
    lk.add_argument("--progress", action="store_true", help="show a progress bar (default: off)")
    lk.set_defaults(func=likelihood_command)


def likelihood_command(args: argparse.Namespace) -> int:
    import ei_toolkit as ei
    from ei_toolkit.likelihood import DIVERGENCES

    entry = shipped(args.model)
    if args.method is not None:
        check_method("--method", args.method)
    if args.divergence not in DIVERGENCES:
        raise unknown("--divergence", "divergence", args.divergence, list(DIVERGENCES))
    if args.probes is not None and args.divergence == "exact":
        raise UsageError("--probes sets Hutchinson's probes: use it with --divergence rademacher or gaussian")
    if entry.levels is None:
        raise UsageError(f"--model {entry.name}: its data declare no quantisation levels, so there is no "
                         "dequantisation to give bits per dimension of")
    gen = torch.Generator().manual_seed(args.seed)
    held = held_out(entry, args.n, gen)
    # the data are k / L * 2 - 1 for levels k = 0..L; dequantised uniformly over each level's bin of width 2 / L
    # (centred on the level the model was trained on), so bits per dimension carry the offset log2(L / 2)
    levels = entry.levels
    x0 = held.double() + (torch.rand(held.shape, generator=gen, dtype=torch.float64) - 0.5) * (2 / levels)
    model, sde = load_model(entry).double(), entry.sde()
    gens = [torch.Generator().manual_seed(args.seed * 100003 + i) for i in range(args.n)]
    start = time.perf_counter()
    result = ei.log_likelihood(model, x0, sde, nfe=args.nfe, method=args.method, divergence=args.divergence,
                               probes=args.probes or 1, generator=gens, progress=args.progress,
                               prediction=entry.prediction)
    took = time.perf_counter() - start
    bpd = result.bits_per_dim(levels=levels, data_range=2.0)
    err = float(bpd.std()) / max(args.n - 1, 1) ** 0.5 * (1 if args.n > 1 else float("nan"))
    print(f"{args.n} held-out {entry.noun} (dequantised), {result.stats.get('method')} on the "
          f"{result.stats.get('grid')} grid, NFE {result.nfe}, {args.divergence} divergence, in {took:.2f} s")
    print(f"bits per dimension: {float(bpd.mean()):.4f} +- {err:.4f} (mean +- standard error over the {entry.noun}); "
          f"log p: {float(result.logp.mean()):.2f} nats per {entry.noun.rstrip('s')}")
    return 0
