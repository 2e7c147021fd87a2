"""``EIInverseScheduler``: the toolkit's forward (data to noise) plans as a diffusers inverse scheduler, for pipelines
that take an ``inverse_scheduler`` (StableDiffusionDiffEditPipeline, StableDiffusionPix2PixZeroPipeline) and for
hand-written inversion loops:

    inverse = EIInverseScheduler.from_config(pipe.scheduler.config)
    inverse.set_timesteps(50)
    for t in inverse.timesteps:
        latents = inverse.step(unet(latents, t, ...).sample, t, latents).prev_sample

Each step is one step of the method's float64 plan on an increasing grid from the first training timestep
(``t_min``, where the clean latents are taken to be) up to the last (:func:`ei_toolkit.invert` step for step; see
docs/math.md 4.12). Unlike diffusers' DDIMInverseScheduler, the model is read at the state's own timestep (that
scheduler moves from t - r to t with the model read at t, a one-step lag). Multistep methods keep their history
between calls; predictor-corrector methods correct the state the pipeline passes in once the model has been
evaluated there (no extra evaluation), as :class:`EIScheduler` does.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

try:
    from diffusers import ConfigMixin, SchedulerMixin
    from diffusers.configuration_utils import register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
    from diffusers.utils import BaseOutput
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("EIInverseScheduler needs diffusers: pip install 'ei_toolkit[diffusers]'") from exc

from ..errors import positive_int
from ..grids import GRIDS
from ..integrators import MultistepPlan, get_integrator, plan_for
from ..integrators.base import cached_grid
from ..model import to_eps, to_x0
from ..sampling import default_inversion_method
from ..sde import DiscreteVP
from .diffusers_integration import prediction_from_config, sde_from_scheduler_config

SPACINGS = ("linspace", "leading", "trailing")


@dataclass
class EIInverseSchedulerOutput(BaseOutput):
    """What :meth:`EIInverseScheduler.step` returns: the state at the next (noisier) timestep."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class EIInverseScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that integrates the probability-flow ODE forward (data to noise) with a multistep method
    of the toolkit (default: :func:`ei_toolkit.sampling.default_inversion_method` of the number of steps).

    Options (also read from another scheduler's config): the schedule (``num_train_timesteps``, ``beta_start``,
    ``beta_end``, ``beta_schedule``, ``trained_betas``), ``prediction_type`` (epsilon, v_prediction, sample),
    ``method`` (a one-evaluation-per-step method of ``ei.INTEGRATORS``: DDIM, the exponential Adams family and its
    predictor-corrector forms, iPNDM) and ``grid`` (a name in ``ei.GRIDS``; default the method's: fractional
    timesteps) or ``timestep_spacing`` (linspace, leading with ``steps_offset``, trailing: integer timesteps, int64 as
    DDIMInverseScheduler's, for pipelines that index ``alphas_cumprod`` with them). Other keys of a config are
    ignored with diffusers' usual message.
    """

    _compatibles: ClassVar[list[str]] = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: np.ndarray | list[float] | None = None,
                 prediction_type: str = "epsilon", method: str | None = None, grid: str | None = None,
                 timestep_spacing: str | None = None, steps_offset: int = 0) -> None:
        self.sde: DiscreteVP = sde_from_scheduler_config(self.config)
        self.prediction = prediction_from_config(self.config)
        if method is not None:
            if not isinstance(method, str):
                raise TypeError(f"method must be the name of a method in ei.INTEGRATORS; got {type(method).__name__}")
            self._check_method(method)
        if grid is not None and grid not in GRIDS:
            raise ValueError(f"unknown grid {grid!r}; valid grids: {', '.join(GRIDS)} (or None: the method's)")
        if timestep_spacing is not None and timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {', '.join(SPACINGS)} or None; got {timestep_spacing!r}")
        if grid is not None and timestep_spacing is not None:
            raise ValueError("give grid (a named grid, fractional timesteps) or timestep_spacing (integer timesteps), "
                             "not both")
        if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
            raise ValueError(f"steps_offset must be an integer >= 0; got {steps_offset!r}")
        self.alphas_cumprod = self.sde.alphas_cumprod.to(torch.float32)
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(0, self.sde.num_timesteps, dtype=torch.float32)
        self._plan: MultistepPlan | None = None
        self._step_index = 0
        self._hist: list[torch.Tensor] = []
        self._x_prev: torch.Tensor | None = None

    @staticmethod
    def _check_method(name: str) -> None:
        chosen = get_integrator(name)
        if getattr(chosen, "evals_per_step", None) != 1 or chosen.stochastic:
            raise ValueError(f"EIInverseScheduler steps deterministic one-evaluation-per-step (multistep) methods; "
                             f"{name!r} is not one (singlestep, Runge-Kutta, stochastic and black-box methods are "
                             "not stepped here: use ei.invert)")

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """``num_inference_steps`` steps from the first training timestep up to the last; :attr:`timesteps` are the
        (increasing, possibly fractional) model timesteps at which the model is read."""
        n = positive_int("num_inference_steps", num_inference_steps)
        name, grid_name = self.config.method, self.config.grid
        if name is None:
            name, default_grid = default_inversion_method(n)
            grid_name = grid_name or default_grid
        self._check_method(name)
        chosen = get_integrator(name)
        sde = self.sde
        spacing = self.config.timestep_spacing
        if spacing is None:
            grid = cached_grid(sde, grid_name or chosen.default_grid, n, sde.t_min, sde.t_max)
        else:
            grid = self._spaced(spacing, n)
        plan = plan_for(chosen, sde, grid)
        if not isinstance(plan, MultistepPlan):
            raise ValueError(f"{name!r} makes a {type(plan).__name__}, which EIInverseScheduler cannot step")
        self._plan, self._grid = plan, grid
        a, s = sde.alpha_sigma(plan.eval_times)
        self._ab = list(zip(a.tolist(), s.tolist(), strict=True))
        self.num_inference_steps = n
        # integer timesteps as int64, as DDIMInverseScheduler's (pipelines index alphas_cumprod with them)
        self.timesteps = (plan.eval_times.round().long() if spacing is not None
                          else plan.eval_times.to(torch.float32)).to(device=device)
        self._step_index = 0
        self._hist, self._x_prev = [], None

    def _spaced(self, spacing: str, n: int) -> torch.Tensor:
        """Integer timesteps from the first training timestep up, as diffusers spaces them, plus the last training
        timestep as the end: "linspace" n + 1 points from 0 to N - 1; "leading" k (N // n) + steps_offset, k < n;
        "trailing" the n points N - 1, N - 1 - N / n, ... with 0 first."""
        total = self.sde.num_timesteps
        if n >= total:
            raise ValueError(f"num_inference_steps must be below num_train_timesteps = {total} with timestep_spacing; "
                             f"got {n}")
        if spacing == "linspace":
            ts = np.linspace(0, total - 1, n + 1).round()
        elif spacing == "leading":
            ts = np.append(np.arange(n) * (total // n) + self.config.steps_offset, total - 1)
        else:
            ts = np.append(0, (np.arange(total, 0, -total / n).round() - 1)[::-1][:n])
        ts = np.unique(ts.astype(np.float64))
        if len(ts) != n + 1 or ts[0] < self.sde.t_min or ts[-1] > self.sde.t_max:
            raise ValueError(f"timestep_spacing {spacing!r} with {n} steps (steps_offset {self.config.steps_offset}) "
                             f"gives no strictly increasing grid in [{self.sde.t_min:g}, {self.sde.t_max:g}]: "
                             f"{ts.tolist()[:6]}...")
        return torch.as_tensor(ts)

    @property
    def step_index(self) -> int:
        """The index of the next step."""
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The model takes x itself (no input scaling)."""
        return sample

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             return_dict: bool = True) -> EIInverseSchedulerOutput | tuple[torch.Tensor]:
        """One forward step from ``sample`` at ``timestep`` (the next of :attr:`timesteps`) with the model output
        there; returns the state at the next timestep (after the last one: at the last training timestep)."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("call set_timesteps before step")
        i = self._step_index
        if i >= plan.steps:
            raise ValueError(f"the run has {plan.steps} steps; set_timesteps starts a new one")
        t = float(torch.as_tensor(timestep, dtype=torch.float64).flatten()[0])
        expected = float(self.timesteps[i])
        if abs(t - expected) > 1e-3 * max(1.0, abs(expected)):
            raise ValueError(f"step {i} is at timestep {expected:g}; got {t:g} (call step once per entry of "
                             "timesteps, in order)")
        alpha, sigma = self._ab[i]
        convert = to_x0 if plan.target == "x0" else to_eps
        e = convert(self.prediction, model_output.to(sample.dtype), sample, alpha, sigma)
        x = sample
        self._hist.append(plan.entry(i, x, e))
        if plan.corrects and self._x_prev is not None:  # redo the last step with the evaluation at its end
            x = plan.correct(i - 1, self._x_prev, self._hist)
        self._x_prev = x
        out = plan.step(i, x, self._hist)
        self._step_index = i + 1
        x0 = to_x0(self.prediction, model_output.to(sample.dtype), sample, alpha, sigma)
        if not return_dict:
            return (out,)
        return EIInverseSchedulerOutput(prev_sample=out, pred_original_sample=x0)

    def __len__(self) -> int:
        return operator.index(self.config.num_train_timesteps)
