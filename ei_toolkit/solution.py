"""What every solver returns: :class:`Solution`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Solution:
    """The result of :func:`ei_toolkit.solve` (and of the black-box adapters).

    ``stats`` always holds ``nfe`` (model evaluations), ``steps`` (accepted steps), ``grid`` (the grid's name,
    ``"explicit"`` or ``"adaptive"``) and ``seconds`` (wall time of the solve, including the plan set-up), plus
    what the method reports (e.g. ``rejected`` steps of an adaptive method).
    """

    x: torch.Tensor  # the state at t_end
    times: torch.Tensor  # the time grid (float64), from t_start to t_end (start and end only for adaptive methods)
    eval_times: torch.Tensor  # the time of each model evaluation (float64; empty where the solver does not say)
    nfe: int  # model evaluations used
    method: str
    grid: str
    trajectory: torch.Tensor | None = None  # states at every grid time, stacked time-first, if requested
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stats.setdefault("nfe", self.nfe)
        self.stats.setdefault("steps", max(len(self.times) - 1, 0))
        self.stats.setdefault("grid", self.grid)
