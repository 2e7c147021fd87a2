"""Train the class-conditional eps-model on scikit-learn's 8x8 digits (bundled with scikit-learn; no download) for
classifier-free guidance, and save its weights to ``--out`` (default: digits_cond_eps.pt in the current directory;
the package ships its own copy in ei_toolkit/models/digits_cond_eps.pt).

DDPM objective (Ho et al. 2020) on the linear schedule: t uniform in 0..999, x_t = alpha x0 + sigma eps,
loss |eps_hat(x_t, t, y) - eps|^2, where the label y is replaced by the null label with probability
``--drop`` (label dropout: one network learns the conditional and the unconditional model, Ho & Salimans 2022).
The same 80 % / 20 % split as ``examples/train_digits.py`` (seed 0).
Deterministic: seed 0 everywhere and one torch thread, so two runs on one machine and torch build give bitwise
identical weights (checked on 300 steps); a full run here with torch 2.13 CPU differs from the shipped weights by up
to 2.6e-5 in a weight (another torch build trained those).
Run: python examples/train_digits_cond.py [--steps 20000] [--out digits_cond_eps.pt]  (measured on 2 CPU cores
shared with other jobs: 11 minutes of wall time, 5.2 minutes of CPU time)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from train_digits import check_out, fit, labelled_split

from ei_toolkit.models.digits_cond import NULL_LABEL, DigitsCondEps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--drop", type=float, default=0.15, help="label dropout probability")
    ap.add_argument("--out", type=Path, default=Path("digits_cond_eps.pt"),
                    help="weights file (default: digits_cond_eps.pt)")
    args = ap.parse_args()
    check_out(args.out)
    torch.set_num_threads(1)  # one thread: bitwise repeatable, and it leaves a core to others
    torch.manual_seed(0)
    train, labels, _, _ = labelled_split()

    def draw(batch: int) -> tuple[torch.Tensor, tuple[torch.Tensor]]:
        i = torch.randint(len(train), (batch,))
        x0, y = train[i], labels[i].clone()
        y[torch.rand(batch) < args.drop] = NULL_LABEL
        return x0, (y,)

    fit(DigitsCondEps(), draw, args.steps, args.batch, args.lr, args.out)


if __name__ == "__main__":
    main()
