"""diffusers integration (optional extra ``diffusers``): the SDE and model callable of a diffusers UNet and
scheduler config in one call, and :class:`EIScheduler`, a drop-in diffusers scheduler.

Timesteps stay in the model's units (0..N-1, fractional between integers); log alpha is interpolated
piecewise linearly between them, and the data sits at t = -1 (see :class:`~ei_toolkit.DiscreteVP`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ..grids import time_grid
from ..integrators import Integrator, MultistepPlan, get_integrator, plan_for
from ..model import to_eps, to_x0
from ..sde import DiscreteVP
from .guidance import classifier_free_guidance

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


def _get(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def sde_from_scheduler_config(config: Any) -> DiscreteVP:
    """A :class:`~ei_toolkit.DiscreteVP` from a diffusers scheduler (or its config): ``trained_betas``, or
    ``beta_schedule`` in {linear, scaled_linear, squaredcos_cap_v2} with beta_start, beta_end and
    num_train_timesteps."""
    config = _get(config, "config", config) if not isinstance(config, Mapping) else config
    n = int(_get(config, "num_train_timesteps", 1000))
    trained = _get(config, "trained_betas")
    if trained is not None:
        return DiscreteVP(np.asarray(trained, dtype=np.float64))
    schedule = _get(config, "beta_schedule", "linear")
    b0, b1 = float(_get(config, "beta_start", 1e-4)), float(_get(config, "beta_end", 0.02))
    if schedule == "linear":
        betas = np.linspace(b0, b1, n, dtype=np.float64)
    elif schedule == "scaled_linear":
        betas = np.linspace(b0**0.5, b1**0.5, n, dtype=np.float64) ** 2
    elif schedule == "squaredcos_cap_v2":  # improved DDPM, betas capped at 0.999
        f = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)])
    else:
        raise ValueError(f"unsupported beta_schedule {schedule!r}; supported: {', '.join(BETA_SCHEDULES)} or "
                         "trained_betas")
    return DiscreteVP(betas)


def prediction_from_config(config: Any) -> str:
    """The ``prediction=`` of :func:`ei_toolkit.sample` for a scheduler config's ``prediction_type``."""
    config = _get(config, "config", config) if not isinstance(config, Mapping) else config
    p = _get(config, "prediction_type", "epsilon")
    if p not in PREDICTION_TYPES:
        raise ValueError(f"unsupported prediction_type {p!r}; supported: {', '.join(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[p]


@dataclass
class DiffusersModel:
    """What :func:`from_diffusers` returns: pass ``sde``, ``model`` and ``prediction`` to ``ei.sample``."""

    sde: DiscreteVP
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    prediction: str

    def sample(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        from ..sampling import sample

        return sample(self.model, x, self.sde, prediction=self.prediction, **kwargs)


def unet_callable(unet: torch.nn.Module, **unet_kwargs: Any) -> Callable[..., torch.Tensor]:
    """``model(x, t[, cond])`` calling a diffusers UNet and returning its ``.sample``; checks the dtype."""
    try:
        model_dtype = next(unet.parameters()).dtype
    except StopIteration:  # pragma: no cover - a UNet has parameters
        model_dtype = None

    def model(x: torch.Tensor, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        if model_dtype is not None and x.dtype != model_dtype:
            raise TypeError(f"the UNet's parameters are {model_dtype} but x is {x.dtype}; pass x in {model_dtype} "
                            f"(or convert the UNet with unet.to({model_dtype if x.dtype is None else x.dtype}))")
        kw = dict(unet_kwargs)
        if cond is not None:
            kw["encoder_hidden_states"] = cond
        return unet(x, t, **kw).sample

    return model


def from_diffusers(unet: torch.nn.Module, scheduler: Any, *, encoder_hidden_states: torch.Tensor | None = None,
                   negative_encoder_hidden_states: torch.Tensor | None = None, guidance_scale: float | None = None,
                   **unet_kwargs: Any) -> DiffusersModel:
    """The SDE, model callable and prediction type of a diffusers ``UNet2DModel`` / ``UNet2DConditionModel``
    and its scheduler (or scheduler config), in one call.

    For a conditional UNet pass ``encoder_hidden_states``; with ``guidance_scale`` also
    ``negative_encoder_hidden_states`` (the unconditional embedding): classifier-free guidance then runs as
    one batched forward per evaluation.
    """
    sde = sde_from_scheduler_config(scheduler)
    prediction = prediction_from_config(scheduler)
    base = unet_callable(unet, **unet_kwargs)
    if guidance_scale is not None:
        if encoder_hidden_states is None:
            raise ValueError("guidance_scale needs encoder_hidden_states (the condition)")
        if negative_encoder_hidden_states is None:
            raise ValueError("classifier-free guidance needs negative_encoder_hidden_states (the unconditional input)")
        model = classifier_free_guidance(base, encoder_hidden_states, negative_encoder_hidden_states, guidance_scale)
    elif encoder_hidden_states is not None:
        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            c = encoder_hidden_states
            return base(x, t, c if c.shape[0] == x.shape[0] else c.expand(x.shape[0], *c.shape[1:]))
    else:
        def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return base(x, t)
    return DiffusersModel(sde=sde, model=model, prediction=prediction)


def _scheduler_base() -> tuple[type, type, Callable]:
    try:
        from diffusers.configuration_utils import ConfigMixin, register_to_config
        from diffusers.schedulers.scheduling_utils import SchedulerMixin
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ImportError("EIScheduler needs diffusers: pip install ei_toolkit[diffusers]") from exc
    return SchedulerMixin, ConfigMixin, register_to_config


_SchedulerMixin, _ConfigMixin, _register_to_config = _scheduler_base()


@dataclass
class EISchedulerOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class EIScheduler(_SchedulerMixin, _ConfigMixin):
    """A diffusers scheduler running an ei_toolkit multistep integrator (default: logrhoab2 on a uniform
    log-rho grid, ending at the data), for use in place of e.g. ``DPMSolverMultistepScheduler`` in a
    pipeline: ``pipe.scheduler = EIScheduler.from_config(pipe.scheduler.config)``.

    Timesteps are fractional model timesteps; coefficients are computed in float64 once per
    ``set_timesteps``. One model evaluation per step (multistep methods only: ddim, tab*, rhoab*,
    logrhoab*, ipndm, euler).
    """

    order = 1
    _compatibles: ClassVar[list[str]] = ["DDIMScheduler", "DDPMScheduler", "DEISMultistepScheduler",
                               "DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "PNDMScheduler",
                               "EulerDiscreteScheduler", "LMSDiscreteScheduler"]

    @_register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: Any = None, prediction_type: str = "epsilon",
                 method: str = "logrhoab2", grid: str | None = None, final_sigmas_type: str = "zero",
                 clip_sample: bool = False, clip_sample_range: float = 1.0, **unused: Any) -> None:
        self.sde = sde_from_scheduler_config(self.config)
        self.prediction = prediction_from_config(self.config)
        self.integrator = get_integrator(method)
        if (not isinstance(self.integrator, Integrator) or self.integrator.evals_per_step != 1
                or self.integrator.stochastic):
            raise ValueError(f"EIScheduler runs one-evaluation multistep methods; {method!r} is not one")
        if final_sigmas_type not in ("zero", "sigma_min"):
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min'; got {final_sigmas_type!r}")
        self.init_noise_sigma = 1.0
        self.timesteps = torch.tensor([])
        self.num_inference_steps: int | None = None
        self._plan: MultistepPlan | None = None
        self._hist: list[torch.Tensor] = []
        self._step_index = 0

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be a positive integer; got {num_inference_steps!r}")
        sde = self.sde
        t_end = sde.t0 if self.config.final_sigmas_type == "zero" else sde.t_min
        grid = time_grid(sde, self.config.grid or self.integrator.default_grid, num_inference_steps, sde.t_max,
                         t_end)
        self._plan = plan_for(self.integrator, sde, grid)
        self._alpha = sde.alpha(grid).tolist()
        self._sigma = sde.sigma(grid).tolist()
        self.timesteps = grid[:-1].to(device=device, dtype=torch.float32)
        self.num_inference_steps = num_inference_steps
        self._hist, self._step_index = [], 0

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        return sample

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True) -> EISchedulerOutput | tuple:
        if self._plan is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before step()")
        i = self._step_index
        if i >= len(self._plan.psi):
            raise RuntimeError(f"step() called {i + 1} times for {len(self._plan.psi)} timesteps; call set_timesteps "
                               "again to start a new sampling run")
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)}; expected {tuple(sample.shape)}")
        a, s = self._alpha[i], self._sigma[i]
        x0 = to_x0(self.prediction, model_output, sample, a, s)
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        e = x0 if self._plan.target == "x0" else (
            (sample - a * x0) / s if self.config.clip_sample else to_eps(self.prediction, model_output, sample, a, s))
        self._hist.append(e)
        out = self._plan.step(i, sample, self._hist)
        self._step_index += 1
        if not return_dict:
            return (out,)
        return EISchedulerOutput(prev_sample=out, pred_original_sample=x0)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        t = timesteps.to(torch.float64).cpu()
        a = self.sde.alpha(t).to(original_samples)
        s = self.sde.sigma(t).to(original_samples)
        shape = (-1, *([1] * (original_samples.ndim - 1)))
        return a.view(shape) * original_samples + s.view(shape) * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps
