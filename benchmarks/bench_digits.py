"""Sample quality of the shipped digits model (scikit-learn 8x8 digits, DDPM linear schedule) against NFE:
our small reproduction of the DEIS paper's FID-vs-NFE table, model fitting error included.

Metric: the Frechet distance between 2000 generated digits and the 360 held-out digits in the 64-d
penultimate features of the shipped digits classifier, trained on the training split ("FD";
ei_toolkit.metrics, the same implementation as ei.evaluate_shards / ei-toolkit evaluate); also the sliced
Wasserstein distance in pixel space. Floors: the same statistics for the training digits (real data,
a different sample) and for a near-exact ODE solve (dopri5 at 1e-6), i.e. the model's own error.
All samplers start from the same N(0, I) noise at t = 999 and end at t = 0.
Run: python benchmarks/bench_digits.py (writes benchmarks/results/digits.md, digits.png, digits_samples.png).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from peers import available_peers

import ei_toolkit as ei
from ei_toolkit.metrics import digits_features, digits_reference, frechet_distance
from ei_toolkit.models import load_digits_model
from ei_toolkit.models.classifier import load_digits_classifier
from ei_toolkit.png import image_grid, write_png
from ei_toolkit.sampling import default_method

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
from train_digits import digits_split, labelled_split

OUT = Path(__file__).parent / "results"
NFES = [5, 10, 20, 50]
# "default": ei.sample without method= (the method then depends on NFE)
OURS = ["default", "ddim", "tab3", "rhoab3", "logrhoab1", "logrhoab1-mid", "x0-logrhoab1-mid", "logrhoab2",
        "logrhoab3", "ipndm", "euler", "x0-logrhoab1", "x0-logrhoab2", "x0-logrhoab3", "logrhoab1-pc",
        "x0-logrhoab1-pc", "x0-logrhoab2-pc", "x0-logrhoab1-mid-pc", "x0-logrhoab1-mid-pc-lof", "logrhoss2",
        "logrhoss3", "x0-logrhoss2", "x0-logrhoss3"]
N = 2000


def sliced_w(a: torch.Tensor, b: torch.Tensor, n_proj: int = 256) -> float:
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    d = torch.randn(a.shape[1], n_proj, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    d = d / d.norm(dim=0, keepdim=True)
    qs = torch.linspace(0, 1, 200, dtype=torch.float64)
    return float((torch.quantile(a @ d, qs, dim=0) - torch.quantile(b @ d, qs, dim=0)).pow(2).mean().sqrt())


def target_lines(rows: dict[str, dict[int, tuple[float, float, float, int]]]) -> list[str]:
    """The issue's target on this model: the default's ODE error against the best peer's, per NFE."""
    lines = ["| NFE | default (method) | its ODE err | best peer | its ODE err | ratio | best of ours | its ODE err |",
             "|---|---|---|---|---|---|---|---|"]
    for k in NFES:
        peers = {r: v[k][2] for r, v in rows.items() if r not in OURS and v[k][3] == k and np.isfinite(v[k][2])}
        ours = {r: v[k][2] for r, v in rows.items() if r in OURS and np.isfinite(v[k][2])}
        bp, bo = min(peers, key=peers.get), min(ours, key=ours.get)
        d = rows["default"][k][2]
        lines.append(f"| {k} | {default_method(k)[0]} | {d:.1e} | {bp} | {peers[bp]:.1e} | {d / peers[bp]:.2f} | "
                     f"{bo} | {ours[bo]:.1e} |")
    return lines


def main() -> None:
    start = time.perf_counter()
    train, held = digits_split()
    net = load_digits_classifier()
    with torch.no_grad():
        acc = (net(held).argmax(1) == labelled_split()[3]).float().mean().item()
    reference = digits_reference()  # shipped with the classifier: its features' statistics over the held-out digits

    def fd(samples: torch.Tensor) -> float:
        return frechet_distance(digits_features(samples, net), reference)

    model = load_digits_model()
    sde = ei.DiscreteVP.linear()
    x = torch.randn(N, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    exact_x: list[torch.Tensor] = []

    def score(samples: torch.Tensor) -> tuple[float, float, float]:
        if not torch.isfinite(samples).all():
            return float("nan"), float("nan"), float("nan")
        err = (samples - exact_x[0]).reshape(len(samples), -1).pow(2).mean(1).sqrt().median().item()
        return fd(samples), sliced_w(samples, held), err

    rows: dict[str, dict[int, tuple[float, float, float, int]]] = {}
    with torch.no_grad():
        exact = ei.odeint(model, x, sde, rtol=1e-6, atol=1e-6, frame="logrho")
        exact_x.append(exact.x)
        floor_model, floor_sw, _ = score(exact.x)
        floor_data, floor_data_sw = fd(train), sliced_w(train, held)
        for m in OURS:
            rows[m] = {}
            for k in NFES:
                out = ei.sample(model, x, sde, method=None if m == "default" else m, nfe=k)
                rows[m][k] = (*score(out), k)
        for name, peer in available_peers().items():
            rows[name] = {}
            for k in NFES:
                out, _, used = peer(model, x, sde, k)
                rows[name][k] = (*score(out), used)
        grid = ei.sample(model, x[:64], sde, nfe=10, t_end=sde.t0)
    write_png(OUT / "digits_samples.png", image_grid(grid))
    took = time.perf_counter() - start
    lines = ["# Digits: sample quality against NFE (our FID-vs-NFE table, in miniature)", "",
             f"Shipped model `ei_toolkit/models/digits_eps.pt` (trained by `python examples/train_digits.py`); "
             f"{N} samples from the same noise; FD = Frechet distance to the 360 held-out digits in the features "
             f"of the shipped classifier `ei_toolkit/models/digits_classifier.pt` (trained on the training split by "
             f"`python examples/train_digits_classifier.py`; held-out accuracy {acc:.3f}; `ei_toolkit.metrics`, the "
             f"metric of `ei-toolkit evaluate`); SW = sliced Wasserstein in pixels. "
             f"Command: `python benchmarks/bench_digits.py` ({took:.0f} s).", "",
             f"Floors: real training digits vs held-out: FD {floor_data:.2f}, SW {floor_data_sw:.4f}; the model "
             f"integrated near-exactly (dopri5, tol 1e-6, {exact.nfe} NFE): FD {floor_model:.2f}, "
             f"SW {floor_sw:.4f} (the model's own fitting error).", "",
             "The last columns measure the integrator alone: the median over samples of the RMS distance to the "
             "model's own near-exact ODE solution from the same noise.", "",
             *target_lines(rows), "",
             "| sampler | " + " | ".join(f"FD @ NFE {k}" for k in NFES) + " | " +
             " | ".join(f"SW @ {k}" for k in NFES) + " | " + " | ".join(f"ODE err @ {k}" for k in NFES) + " |",
             "|---" * (3 * len(NFES) + 1) + "|"]
    order = sorted(rows, key=lambda r: rows[r][10][0] if np.isfinite(rows[r][10][0]) else np.inf)
    for r in order:
        fd = [f"{rows[r][k][0]:.2f}" + (f" ({rows[r][k][3]})" if rows[r][k][3] != k else "") for k in NFES]
        sw = [f"{rows[r][k][1]:.4f}" for k in NFES]
        ode = [f"{rows[r][k][2]:.1e}" for k in NFES]
        lines.append(f"| {r} | " + " | ".join(fd) + " | " + " | ".join(sw) + " | " + " | ".join(ode) + " |")
    text = "\n".join(lines) + "\n"
    (OUT / "digits.md").write_text(text)
    print(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in order:
        ax.plot(NFES, [rows[r][k][0] for k in NFES], "-o" if r in OURS else ":", ms=3, label=r,
                lw=2 if r in OURS else 1)
    ax.axhline(floor_model, color="k", ls="--", lw=1, label="model, near-exact ODE")
    ax.axhline(floor_data, color="gray", ls=":", lw=1, label="real training digits")
    ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="Frechet distance (classifier features)",
           title="8x8 digits: sample quality vs NFE")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(OUT / "digits.png", dpi=110)


if __name__ == "__main__":
    main()
