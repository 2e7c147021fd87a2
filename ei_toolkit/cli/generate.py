"""``ei-toolkit generate`` and ``ei-toolkit evaluate``: sharded generation from a shipped model on
torch.distributed (:func:`ei_toolkit.generate`, torchrun-ready) and the Frechet distance over the shards
(:func:`ei_toolkit.evaluate_shards`)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from ei_toolkit.generate import DEFAULT_BATCH, DEFAULT_BLOCK, DEFAULT_SHARD_SIZE

from .common import DEFAULT_MODEL, UsageError, add_model_option, check_writable, held_data, load_model, shipped

GUIDED_MODEL = "digits"  # the one shipped model with a class-conditional twin


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``generate`` and ``evaluate``."""
    from ei_toolkit.sampling import describe_defaults

    g = sub.add_parser("generate", help="sharded sample generation from a shipped model (torchrun-ready)",
                       description="Generate N samples into shards DIR/shard-*.npz with a manifest; under torchrun "
                                   "--nproc_per_node=P -m ei_toolkit generate ... each rank does its share. A rerun "
                                   "resumes; a different configuration into the same DIR is refused.")
    add_model_option(g, "the shipped model to sample")
    g.add_argument("-n", "--n", type=int, required=True, dest="n",
                   help="number of samples (under torchrun write -n N: torchrun reads --n as one of its options)")
    g.add_argument("--out", required=True, help="output directory (created if missing)")
    g.add_argument("--seed", type=int, default=0, help="sample i depends on (seed, i) only (default: 0)")
    g.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"samples each process integrates at once, in whole blocks; changes no sample "
                        f"(default: {DEFAULT_BATCH})")
    g.add_argument("--method", default=None, help="integrator, e.g. tab3 or sddim (default: sample()'s for --nfe: "
                   f"{describe_defaults()})")
    g.add_argument("--nfe", type=int, default=10, help="number of model evaluations (default: 10)")
    g.add_argument("--grid", default=None, help="time grid (default: the method's recommended grid)")
    g.add_argument("--lam", type=float, default=None,
                   help="noise level lambda >= 0 of --method sddim (default: sddim's, 1)")
    g.add_argument("--block", type=int, default=DEFAULT_BLOCK,
                   help=f"samples per model call, part of the configuration (default: {DEFAULT_BLOCK})")
    g.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE,
                   help=f"samples per shard, part of the configuration (default: {DEFAULT_SHARD_SIZE})")
    g.add_argument("--guidance", type=float, default=None,
                   help="--model digits only: use the class-conditional digits model, sample i of class i mod 10, "
                        "with classifier-free guidance at this scale (1: purely conditional) (default: the "
                        "unconditional model)")
    g.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if CUDA is available, else cpu")
    g.add_argument("--evaluate", action="store_true",
                   help="afterwards, the Frechet distance over all shards (models with features) (default: off)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar on rank 0 (default: shown)")
    g.set_defaults(func=generate_command)
    e = sub.add_parser("evaluate", help="verify the shards of a generate directory and compute their Frechet "
                                        "distance to the model's held-out data")
    e.add_argument("out", help="the directory generate wrote")
    add_model_option(e, "the shipped model whose features and held-out data the distance uses")
    e.set_defaults(func=evaluate_command)


def generate_command(args: argparse.Namespace) -> int:
    from ei_toolkit.generate import generate, resolve_device
    from ei_toolkit.shards import ShardConfigError

    entry = shipped(args.model)
    check_writable("--out", Path(args.out), folder=True, parents=True)
    if args.guidance is not None and entry.name != GUIDED_MODEL:
        raise UsageError(f"--guidance: only --model {GUIDED_MODEL} has a class-conditional model to guide; got "
                         f"--model {entry.name}")
    if args.evaluate and entry.features is None:
        raise UsageError(f"--evaluate: --model {entry.name} has no features for a Frechet distance")
    sde = entry.sde()
    device = resolve_device(args.device)
    model, extra = (guided_digits(device, args.guidance) if args.guidance is not None
                    else (load_model(entry, device), {}))
    try:
        result = generate(model, sde, entry.shape, args.n, args.out, seed=args.seed, batch=args.batch,
                          method=args.method, nfe=args.nfe, grid=args.grid, lam=args.lam, block=args.block,
                          shard_size=args.shard_size, t_end=sde.t0, prediction=entry.prediction, device=device,
                          progress=not args.no_progress, **extra)
    except (ShardConfigError, ValueError, TypeError) as err:
        raise SystemExit(f"ei-toolkit generate: {err}") from None
    if result.rank != 0:
        return 0
    print(f"{result.generated} samples generated by {result.world_size} process(es) in {result.seconds:.2f} s "
          f"({result.samples_per_second:.1f} samples/s); {result.reused_shards} shard(s) kept"
          + (f", {len(result.bad_shards)} bad shard(s) regenerated" if result.bad_shards else "")
          + f" -> {result.out_dir}")
    if args.evaluate:
        return evaluate_command(argparse.Namespace(out=args.out, model=entry.name))
    return 0


def guided_digits(device: torch.device, scale: float) -> tuple[Any, dict[str, Any]]:
    """The shipped class-conditional digits model with classifier-free guidance (Ho & Salimans 2022) at ``scale``
    as ``model(x, t, labels)``, and the generate() arguments that name it and give sample i the label i mod 10."""
    from ei_toolkit.diffusion.guidance import classifier_free_guidance
    from ei_toolkit.generate import model_identity
    from ei_toolkit.models.digits_cond import NULL_LABEL, NUM_CLASSES, digits_cond_model

    if not math.isfinite(scale):
        raise SystemExit(f"ei-toolkit generate: --guidance must be a finite number; got {scale}")
    cond = digits_cond_model(device)

    def guided(x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return classifier_free_guidance(cond, labels, torch.full_like(labels, NULL_LABEL), scale)(x, t)

    guided.guidance_scale = scale  # type: ignore[attr-defined]  # sample()'s default under guidance reads it
    weights = model_identity(cond, None)["sha256"]
    return guided, {"model_id": f"DigitsCondEps sha256 {weights}, classifier-free guidance scale {scale:g}",
                    "condition": lambda i: i % NUM_CLASSES, "condition_id": f"label = i mod {NUM_CLASSES}"}


def evaluate_command(args: argparse.Namespace) -> int:
    from ei_toolkit.metrics import digits_features
    from ei_toolkit.shards import ShardError, evaluate_shards

    entry = shipped(getattr(args, "model", DEFAULT_MODEL))
    if entry.features is None:
        raise UsageError(f"--model {entry.name} has no features for a Frechet distance")
    try:
        if entry.features is digits_features:  # the digits metric's shipped reference statistics: no data needed
            result = evaluate_shards(args.out)
        else:
            result = evaluate_shards(args.out, features=entry.features, reference=_reference(entry))
            result["reference"] = f"held-out {entry.noun} of --model {entry.name} in its features"
    except (ShardError, ValueError) as err:
        raise SystemExit(f"ei-toolkit evaluate: {err}") from None
    print(f"FD {result['fd']:.3f} over {result['n']} samples in {result['shards']} shards (against the "
          f"{result['reference']})")
    return 0


def _reference(entry: Any) -> tuple[Any, Any]:
    """(mean, covariance) of ``entry``'s features over all its held-out data."""
    from ei_toolkit.metrics import feature_statistics

    held = held_data(entry, "there is no reference to compare with")
    with torch.no_grad():
        return feature_statistics(entry.features(held))
