"""Train the class-conditional eps-model on scikit-learn's 8x8 digits (bundled with scikit-learn; no download) for
classifier-free guidance, and save its weights to ei_toolkit/models/digits_cond_eps.pt.

DDPM objective (Ho et al. 2020) on the linear schedule: t uniform in 0..999, x_t = alpha x0 + sigma eps,
loss |eps_hat(x_t, t, y) - eps|^2, where the label y is replaced by the null label with probability
``--drop`` (label dropout: one network learns the conditional and the unconditional model, Ho & Salimans 2022).
The same 80 % / 20 % split as ``examples/train_digits.py`` (seed 0).
Deterministic: seed 0 everywhere and one torch thread (bitwise repeatable).
Run: python examples/train_digits_cond.py [--steps 20000]  (one thread: about 6 minutes of CPU time; 43 minutes
of wall time on a machine shared by many jobs)
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

import ei_toolkit as ei
from ei_toolkit.models.digits_cond import NULL_LABEL, WEIGHTS, DigitsCondEps


def labelled_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, held-out images, held-out labels); images (N, 1, 8, 8) in [-1, 1], the split
    of ``examples/train_digits.py``'s ``digits_split``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0 * 2 - 1).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    idx = torch.from_numpy(np.random.default_rng(seed).permutation(len(x)))
    cut = int(0.8 * len(x))
    return x[idx[:cut]], y[idx[:cut]], x[idx[cut:]], y[idx[cut:]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--drop", type=float, default=0.15, help="label dropout probability")
    ap.add_argument("--out", default=str(WEIGHTS))
    args = ap.parse_args()
    torch.set_num_threads(1)  # one thread: bitwise repeatable, and it leaves a core to others
    torch.manual_seed(0)
    train, labels, _, _ = labelled_split()
    sde = ei.DiscreteVP.linear()
    alpha = sde.alpha(torch.arange(1000, dtype=torch.float64)).float()
    sigma = sde.sigma(torch.arange(1000, dtype=torch.float64)).float()
    model = DigitsCondEps()
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    start = time.perf_counter()
    for step in range(args.steps):
        i = torch.randint(len(train), (args.batch,))
        x0, y = train[i], labels[i].clone()
        y[torch.rand(args.batch) < args.drop] = NULL_LABEL
        t = torch.randint(0, 1000, (args.batch,))
        eps = torch.randn_like(x0)
        xt = alpha[t].view(-1, 1, 1, 1) * x0 + sigma[t].view(-1, 1, 1, 1) * eps
        loss = (model(xt, t.float(), y) - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(0.999, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.mul_(decay).add_(pm, alpha=1 - decay)
        if step % 2000 == 0 or step == args.steps - 1:
            print(f"step {step:6d}  loss {loss.item():.4f}  {time.perf_counter() - start:.0f} s", flush=True)
    torch.save(ema.state_dict(), args.out)
    print(f"saved {args.out} ({Path(args.out).stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
