"""Train the small eps-model on scikit-learn's 8x8 digits (shipped inside the package; no download) and save
its weights to ei_toolkit/models/digits_eps.pt.

DDPM objective (Ho et al. 2020): t uniform in 0..999, x_t = alpha x0 + sigma eps, loss |eps_hat - eps|^2,
on the linear schedule; 80 % of the digits (a fixed split, seed 0) for training, 20 % held out.
Run: python examples/train_digits.py [--steps 30000]  (about 2 minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

import ei_toolkit as ei
from ei_toolkit.models.digits import WEIGHTS, DigitsEps


def digits_split(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) digits as (N, 1, 8, 8) tensors in [-1, 1]."""
    from sklearn.datasets import load_digits

    x = load_digits().images.astype(np.float32) / 16.0 * 2 - 1
    idx = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    data = torch.from_numpy(x).unsqueeze(1)
    return data[idx[:cut]], data[idx[cut:]]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    args = ap.parse_args()
    torch.manual_seed(0)
    train, _ = digits_split()
    sde = ei.DiscreteVP.linear()
    alpha = sde.alpha(torch.arange(1000, dtype=torch.float64)).float()
    sigma = sde.sigma(torch.arange(1000, dtype=torch.float64)).float()
    model = DigitsEps()
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    start = time.perf_counter()
    for step in range(args.steps):
        x0 = train[torch.randint(len(train), (args.batch,))]
        t = torch.randint(0, 1000, (args.batch,))
        eps = torch.randn_like(x0)
        xt = alpha[t].view(-1, 1, 1, 1) * x0 + sigma[t].view(-1, 1, 1, 1) * eps
        loss = (model(xt, t.float()) - eps).pow(2).mean()
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
    torch.save(ema.state_dict(), WEIGHTS)
    print(f"saved {WEIGHTS} ({WEIGHTS.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
