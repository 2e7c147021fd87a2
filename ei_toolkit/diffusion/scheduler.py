"""``EIScheduler``: any plan-based method of the toolkit as a diffusers scheduler (optional extra ``diffusers``).

A pipeline calls ``set_timesteps`` once and then ``step(model_output, t, sample)`` for each timestep. The scheduler
computes the method's float64 plan for the grid once (``plan_for``, cached by value) and steps it one model
evaluation at a time with ``plan.step(i, x, hist)`` (multistep plans, incl. predictor-corrector plans) or stage by
stage (singlestep / Runge-Kutta plans). The position in the plan is taken from the timestep, as diffusers' own
schedulers do (``set_begin_index``, ``index_for_timestep``), so img2img and inpainting may start mid-schedule; a
multistep method then starts at lower order: step j after a start at k is step j - k of the plan on the grid from
t_k, exactly what ``ei.sample(..., grid=grid[k:])`` computes.

Timesteps are the model's own (0..N-1, fractional between integers, log alpha interpolated piecewise linearly:
:class:`~ei_toolkit.DiscreteVP`); they are float32 and the coefficients are computed at exactly those values, so
``set_timesteps(timesteps=scheduler.timesteps)`` reproduces a run bit for bit.

``SchedulerMixin`` and ``ConfigMixin`` are public names of this module on purpose: a saved pipeline records the
module of its scheduler, and diffusers' loader looks them up there to find how to load it.
"""

from __future__ import annotations

import inspect
import math
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, ClassVar

import numpy as np
import torch

try:
    from diffusers import ConfigMixin, SchedulerMixin
    from diffusers.configuration_utils import FrozenDict, register_to_config
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
    from diffusers.utils import BaseOutput, logging
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ImportError("EIScheduler needs diffusers: pip install ei_toolkit[diffusers]") from exc

from ..errors import positive_int
from ..grids import GRIDS, flux_shift, shift_sigma, stretch_to_terminal, time_grid
from ..integrators import INTEGRATORS, Integrator, MultistepPlan, RungeKuttaPlan, get_integrator, plan_for
from ..integrators.base import combine
from ..integrators.ems import EMSAdams, ModelStatistics
from ..model import threshold_x0, to_eps, to_x0
from ..sde import DiscreteVP, RectifiedFlow
from ..zero_snr import check_prediction, infinite_noise_step, keeps_terminal_evaluation, terminal_grid, terminal_mixing
from .diffusers_integration import prediction_from_config, sde_from_scheduler_config

__all__ = ["ConfigMixin", "EIScheduler", "EISchedulerOutput", "SchedulerMixin"]

logger = logging.get_logger(__name__)

TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
FINAL_SIGMAS = ("zero", "sigma_min")
VARIANCE_TYPES = (None, "fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned",
                  "learned_range")
SIGMA_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas")
TIME_SHIFT_TYPES = ("exponential", "linear")
FLOW_METHOD = "logrhoab1-pc"
"""The method of an EIScheduler made from a flow scheduler's config. On FlowMatchEulerDiscreteScheduler's own sigmas
(shift 1 and 3, 10 and 28 steps; the four flow mixtures of benchmarks/bench_flow.py) it had the lowest geometric-mean
error of eight candidates: 0.086 / 0.012 (shift 1, 10 / 28 steps) and 0.15 / 0.021 (shift 3), against
0.125 / 0.065 and 0.245 / 0.091 for FlowMatchEuler's Euler steps (benchmarks/results/flow.md); the data-prediction
forms extrapolate badly into that schedule's last, long step in log rho (sigma_min -> 0)."""
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler", "FlowMatchLCMScheduler")
STATISTICS_FILE = "ems_statistics.pt"
"""Where :meth:`EIScheduler.save_pretrained` writes the model statistics of an EMS method, next to the config."""


@dataclass
class EISchedulerOutput(BaseOutput):
    """What :meth:`EIScheduler.step` returns: the state at the next timestep and the data prediction used."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


def _number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(float(v)):
        raise ValueError(f"{name} must be a finite number; got {v!r}")
    return float(v)


def _ems_method(method: str, statistics: Any, sde: DiscreteVP) -> EMSAdams:
    """``method`` ems-logrhoab0..3[-pc] on the statistics saved at the path ``statistics`` (for ``sde``)."""
    if method not in EMSAdams.NAMES:
        raise ValueError(f"statistics= belongs to the EMS methods ems-logrhoab0 ... ems-logrhoab3, each optionally "
                         f"with -pc (ei.EMSAdams); method {method!r} does not use model statistics")
    if statistics is None:
        raise ValueError(f"method {method!r} needs statistics=: the path of a file written by ModelStatistics.save "
                         "(ei.model_statistics of your model under this schedule)")
    if isinstance(statistics, bool) or not isinstance(statistics, (str, os.PathLike)):
        raise TypeError(f"statistics must be the path of a saved ModelStatistics file (the config is JSON); got "
                        f"{type(statistics).__name__}")
    path = Path(statistics)
    if not os.path.lexists(path):
        raise ValueError(f"statistics {str(path)!r}: no such file (a relative path in a saved config is read from "
                         "the scheduler's folder by from_pretrained, otherwise from the working directory)")
    return EMSAdams.named(method, ModelStatistics.load(path, sde=sde))  # a ValueError naming the file if it is bad


_HUB_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision")


def _statistics_in_folder(root: str | os.PathLike, subfolder: str | None, named: Any, hub: dict[str, Any]) -> str:
    """The real path of the statistics file ``named`` by the config of ``root``/``subfolder`` (a local folder or a
    hub repo id), refused (ValueError) unless it is a plain relative name inside that folder."""
    where = f"the scheduler config in {os.fspath(root)!r}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    if not isinstance(named, str) or not named or "\\" in named or "\0" in named:
        raise ValueError(f"{where} names statistics {named!r}; expected a file name relative to the scheduler's "
                         f"folder, e.g. {STATISTICS_FILE!r}")
    rel = PurePosixPath(named)
    if rel.is_absolute() or PureWindowsPath(named).drive or ".." in rel.parts:
        raise ValueError(f"{where} names statistics {named!r}, outside the scheduler's folder; from_pretrained reads "
                         f"them from that folder only (an absolute name or '..' is refused): expected e.g. "
                         f"{STATISTICS_FILE!r}, or pass statistics= yourself")
    if os.path.isdir(root):
        folder = Path(root, subfolder or "")
        real = os.path.realpath(folder / rel)
        allowed = [os.path.realpath(folder)]
        parts = Path(allowed[0]).parts
        if "snapshots" in parts:  # a hub cache snapshot (snapshot_download): its files link to the repo's blobs
            repo = Path(*parts[: len(parts) - 1 - parts[::-1].index("snapshots")])
            if (repo / "blobs").is_dir():
                allowed.append(os.path.realpath(repo / "blobs"))
        if not any(os.path.commonpath([real, a]) == a for a in allowed):
            raise ValueError(f"{where} names statistics {named!r}, which leads out of the scheduler's folder (to "
                             f"{real!r}, through a link); refused")
        if not os.path.isfile(real):
            raise ValueError(f"{where} names statistics {named!r}, but {str(folder / rel)!r} is not a file")
        return real
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(os.fspath(root), rel.name, subfolder="/".join(p for p in (subfolder or "",
                                                                                          str(rel.parent)) if p
                                                                             and p != "."), **hub)
    except Exception as e:  # not in the repo, not in the offline cache, no network
        raise ValueError(f"{where} names statistics {named!r}, which could not be fetched from the repo "
                         f"{os.fspath(root)!r} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
                         ) from None
    return os.path.realpath(path)


def _f32(t: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float64 times rounded to float32 (the timesteps a pipeline hands the model), kept in float64."""
    return torch.as_tensor(t, dtype=torch.float64).to(torch.float32).to(torch.float64)


class EIScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a method of the toolkit (any plan-based entry of ``ei.INTEGRATORS``; default
    ``logrhoab2`` on its uniform log-rho grid): ``pipe.scheduler = EIScheduler.from_config(pipe.scheduler.config)``.

    Options (also read from another scheduler's config):

    * the schedule: ``num_train_timesteps``, ``beta_start``, ``beta_end``, ``beta_schedule`` (linear, scaled_linear,
      squaredcos_cap_v2) or ``trained_betas``; ``rescale_betas_zero_snr`` rescales it to zero terminal SNR (Lin et
      al. 2024), sampled from infinite noise by an exact first step (:mod:`ei_toolkit.zero_snr`);
    * ``prediction_type``: epsilon, v_prediction or sample; ``variance_type`` learned / learned_range drops the
      variance channels of the model output (the fixed_* types need nothing: no method here draws DDPM's variance);
    * the method: ``method`` (a name in ``ei.INTEGRATORS``), ``lam`` / ``eta`` for stochastic DDIM (``"sddim"``,
      whose noise comes from the ``generator`` the pipeline passes to :meth:`step`); or ``method``
      ``"ems-logrhoab<k>[-pc]"`` (:class:`~ei_toolkit.EMSAdams` with k + 1 points, corrected with -pc) with
      ``statistics``, the path of the model's statistics (:func:`ei_toolkit.model_statistics` under this schedule,
      then ``ModelStatistics.save``). :meth:`save_pretrained` writes them next to the config
      (:data:`STATISTICS_FILE`) and :meth:`from_pretrained` reads them from there;
    * the grid, the first of: ``grid`` (a name in ``ei.GRIDS``); ``use_karras_sigmas`` / ``use_exponential_sigmas`` /
      ``use_beta_sigmas`` / ``use_lu_lambdas`` (rho = sigma / alpha from rho(t_max) to rho(t_min) as a power law with
      exponent 7, uniform in log rho, at the quantiles of Beta(0.6, 0.6), uniform in log rho); ``timestep_spacing``
      linspace / leading (with ``steps_offset``) / trailing (integer timesteps as DPMSolverMultistepScheduler
      spaces them); otherwise the method's default grid. ``final_sigmas_type``: "zero" ends at the data (t = -1)
      with a last step from timestep 0 (the model is never called below timestep 0; singlestep methods take DDIM's
      step there, which returns x0), "sigma_min" ends at timestep 0;
    * the data prediction: ``thresholding`` (dynamic thresholding, Saharia et al. 2022, with
      ``dynamic_thresholding_ratio`` and ``sample_max_value`` as in diffusers), ``clip_sample`` /
      ``clip_sample_range``.

    Flow matching (rectified flow: SD3, Flux, ...; Liu et al. 2023, Esser et al. 2024): ``prediction_type
    "flow_prediction"`` (set by :meth:`from_config` for a FlowMatch scheduler's config, or one with
    ``use_flow_sigmas``) samples :class:`~ei_toolkit.RectifiedFlow` with a velocity model (default method
    :data:`FLOW_METHOD`). Timesteps are in model units, sigma x ``num_train_timesteps``, and :attr:`sigmas` are the
    sigmas (ending with 0); the schedule is FlowMatchEulerDiscreteScheduler's: ``num_inference_steps`` sigmas uniform
    from 1 to its smallest training sigma, or the pipeline's ``sigmas=``, shifted by ``shift`` (SD3) or, with
    ``use_dynamic_shifting``, by ``mu`` per ``time_shift_type`` (Flux), stretched to ``shift_terminal`` if set, then 0;
    a ``grid`` name replaces it by that grid from sigma = 1 to 0. The first step, from sigma = 1 (rho = inf), is the
    exact one of :mod:`ei_toolkit.zero_snr`; :meth:`scale_noise` noises img2img latents. ``timesteps=``
    are used as given (unshifted; diffusers would shift the sigmas but not the timesteps).

    Anything else in a config is reported by diffusers' loader ("... not expected and will be ignored"), keys of
    the compatible diffusers schedulers excepted, exactly as for diffusers' own schedulers.
    """

    _compatibles: ClassVar[list[str]] = [e.name for e in KarrasDiffusionSchedulers] + list(FLOW_SCHEDULERS)
    order = 1  # model evaluations per inference step; set per method (singlestep methods: stages per step)

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: np.ndarray | list[float] | None = None,
        prediction_type: str = "epsilon",
        method: str = "logrhoab2",
        grid: str | None = None,
        lam: float | None = None,
        eta: float | None = None,
        timestep_spacing: str | None = None,
        steps_offset: int = 0,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        final_sigmas_type: str = "zero",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        rescale_betas_zero_snr: bool = False,
        variance_type: str | None = None,
        statistics: str | None = None,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        shift_terminal: float | None = None,
        time_shift_type: str = "exponential",
        invert_sigmas: bool = False,
        stochastic_sampling: bool = False,
    ) -> None:
        self.prediction = prediction_from_config(self.config)
        self._flow = self.prediction == "flow"
        self.sde: DiscreteVP | RectifiedFlow = RectifiedFlow() if self._flow else sde_from_scheduler_config(self.config)
        self._scale = float(positive_int("num_train_timesteps", num_train_timesteps)) if self._flow else 1.0
        if self._flow:
            self._check_flow_config()
        if not isinstance(method, str):  # the config is saved as JSON: a registered name, not an object
            raise TypeError(f"method must be the name of a method in ei.INTEGRATORS (ei.register adds your own); got "
                            f"{type(method).__name__}")
        if statistics is not None or method in EMSAdams.NAMES:
            if lam is not None or eta is not None:
                raise ValueError("lam / eta set the noise of sddim; the EMS methods are deterministic")
            chosen = _ems_method(method, statistics, self.sde)
        else:
            chosen = get_integrator(method)
        if not isinstance(chosen, Integrator):
            plan_based = ", ".join(n for n, m in INTEGRATORS.items() if isinstance(m, Integrator))
            raise ValueError(f"EIScheduler steps plan-based methods one model evaluation at a time; {chosen.name!r} "
                             f"chooses its own evaluations (black-box or adaptive). Valid: {plan_based}")
        self.method = chosen.configure(lam=lam, eta=eta)
        if grid is not None and grid not in GRIDS:
            raise ValueError(f"unknown grid {grid!r}; valid grids: {', '.join(GRIDS)} (or None: the method's)")
        if timestep_spacing is not None and timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {', '.join(TIMESTEP_SPACINGS)} or None; got "
                             f"{timestep_spacing!r}")
        flags = [f for f in SIGMA_FLAGS if self.config[f]]
        if len(flags) > 1:
            raise ValueError(f"only one of {', '.join(SIGMA_FLAGS)} can be True; got {', '.join(flags)}")
        if final_sigmas_type not in FINAL_SIGMAS:
            raise ValueError(f"final_sigmas_type must be 'zero' or 'sigma_min'; got {final_sigmas_type!r}")
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}; got {variance_type!r}")
        try:
            operator.index(steps_offset)
        except TypeError:
            raise ValueError(f"steps_offset must be an integer; got {steps_offset!r}") from None
        if thresholding and not (0 <= _number("dynamic_thresholding_ratio", dynamic_thresholding_ratio) <= 1):
            raise ValueError(f"dynamic_thresholding_ratio must lie in [0, 1] (a quantile, as in diffusers); got "
                             f"{dynamic_thresholding_ratio!r}")
        if not _number("sample_max_value", sample_max_value) > 0:
            raise ValueError(f"sample_max_value must be positive; got {sample_max_value!r}")
        if not _number("clip_sample_range", clip_sample_range) > 0:
            raise ValueError(f"clip_sample_range must be positive; got {clip_sample_range!r}")
        self.order = int(getattr(self.method, "evals_per_step", 1))
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        if self._flow:  # no betas: the training sigmas (FlowMatchEulerDiscreteScheduler's, shifted unless dynamic)
            self.betas = self.alphas = self.alphas_cumprod = None
            self.timesteps = (self._train_sigmas() * self._scale).to(torch.float32)
        else:
            self.betas = self.sde.betas.to(torch.float32)
            self.alphas = 1.0 - self.betas
            self.alphas_cumprod = self.sde.alphas_cumprod.to(torch.float32)
            self.timesteps = torch.arange(self.sde.num_timesteps - 1, -1, -1, dtype=torch.float32)
        self._timesteps_cpu = self.timesteps
        self.sigmas: torch.Tensor | None = None
        self._grid: torch.Tensor | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self._reset_run()

    # -- flow matching ----------------------------------------------------------------------------------------

    def _check_flow_config(self) -> None:
        cfg = self.config
        _number("shift", cfg.shift)
        if not cfg.shift > 0:
            raise ValueError(f"shift must be positive; got {cfg.shift!r}")
        if cfg.time_shift_type not in TIME_SHIFT_TYPES:
            raise ValueError(f"time_shift_type must be 'exponential' or 'linear'; got {cfg.time_shift_type!r}")
        if cfg.shift_terminal is not None and not 0 < _number("shift_terminal", cfg.shift_terminal) < 1:
            raise ValueError(f"shift_terminal must lie in (0, 1); got {cfg.shift_terminal!r}")
        if cfg.invert_sigmas:
            raise ValueError("invert_sigmas (Mochi's inverted schedule) is not supported by EIScheduler")
        if cfg.stochastic_sampling:
            raise ValueError("stochastic_sampling: use method='sddim' with lam (or eta) for stochastic flow sampling")
        flags = [f for f in SIGMA_FLAGS if self.config[f]]
        if flags:
            raise ValueError(f"{flags[0]} is not supported for flow matching: name a grid (grid=...) instead")

    def _train_sigmas(self) -> torch.Tensor:
        n = int(self._scale)
        base = torch.linspace(1.0, 1.0 / n, n, dtype=torch.float64)
        return base if self.config.use_dynamic_shifting else shift_sigma(base, float(self.config.shift))

    def _flow_grid(self, n: int | None, timesteps: Any, sigmas: Any, mu: float | None) -> torch.Tensor:
        """The sigmas of a run (decreasing, ending at 0) in the SDE's time (t = sigma), before rounding."""
        cfg, sde = self.config, self.sde
        if timesteps is not None:  # model units, used as given
            sig = self._as_times("timesteps", timesteps) / self._scale
        elif cfg.grid is not None and sigmas is None:  # our own grid from sigma = 1 to the data
            return terminal_grid(time_grid(sde, cfg.grid, n, sde.t_max, sde.t0), sde.t_terminal)
        else:
            if sigmas is not None:
                base = self._as_times("sigmas", sigmas)
            else:
                # FlowMatchEulerDiscreteScheduler's: uniform from 1 to its smallest training sigma (shifted once
                # already unless dynamic), then shifted
                base = torch.linspace(1.0, float(self._train_sigmas()[-1]), n, dtype=torch.float64)
            if cfg.use_dynamic_shifting:
                if mu is None:
                    raise ValueError("use_dynamic_shifting=True: pass mu to set_timesteps (the pipeline computes it "
                                     "from the image sequence length)")
                shift = flux_shift(float(mu), cfg.time_shift_type)
            else:
                shift = float(cfg.shift)
            sig = shift_sigma(base, shift)
            if cfg.shift_terminal:
                sig = stretch_to_terminal(sig, float(cfg.shift_terminal))
        if bool((sig > 1).any()) or bool((sig < 0).any()):
            raise ValueError(f"sigmas must lie in [0, 1]; got {sig.tolist()}")
        return sig if float(sig[-1]) == 0 else torch.cat([sig, torch.zeros(1, dtype=torch.float64)])

    def _round(self, t: torch.Tensor) -> torch.Tensor:
        """Times rounded as the model sees them: float32 timesteps in model units (sde time x scale)."""
        return _f32(t * self._scale) / self._scale if self._flow else _f32(t)

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor) -> torch.Tensor:
        """Flow matching's forward process at model timesteps (img2img): x = sigma noise + (1 - sigma) sample with
        sigma = timestep / num_train_timesteps (one per sample, or one for all)."""
        if not self._flow:
            raise ValueError("scale_noise is the flow-matching forward process; this scheduler is not a flow one "
                             "(prediction_type='flow_prediction'): use add_noise")
        if noise.shape != sample.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {tuple(sample.shape)}")
        a, s = self._marginal(timestep, sample)
        return s * noise.to(sample) + a * sample

    # -- the schedule -----------------------------------------------------------------------------------------

    @property
    def step_index(self) -> int | None:
        """The index in :attr:`timesteps` of the next step (None before the first step)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        """The index of the first step, if a pipeline set it (:meth:`set_begin_index`)."""
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the run at ``timesteps[begin_index]`` (img2img / inpainting pipelines call this)."""
        n = operator.index(begin_index)
        if isinstance(begin_index, bool) or n < 0:
            raise ValueError(f"begin_index must be an integer >= 0; got {begin_index!r}")
        self._begin_index = n

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: Sequence[float] | np.ndarray | torch.Tensor | None = None,
                      sigmas: Sequence[float] | np.ndarray | torch.Tensor | None = None,
                      mu: float | None = None) -> None:
        """The timesteps of a run with ``num_inference_steps`` steps (singlestep methods: each of
        :attr:`order` evaluations), or at the given ``timesteps`` (model timesteps, decreasing; the end per
        ``final_sigmas_type`` is added) or ``sigmas`` (rho = sigma / alpha, decreasing; a last 0 ends at the data).
        Flow matching (class docstring): ``sigmas`` are the flow sigmas before the shift, ``mu`` the dynamic shift."""
        given = [name for name, v in (("num_inference_steps", num_inference_steps), ("timesteps", timesteps),
                                      ("sigmas", sigmas)) if v is not None]
        if len(given) != 1:
            raise ValueError(f"pass exactly one of num_inference_steps, timesteps= or sigmas=; got "
                             f"{', '.join(given) or 'none'}")
        sde = self.sde
        if self._flow:
            n = None if num_inference_steps is None else positive_int("num_inference_steps", num_inference_steps)
            grid = self._flow_grid(n, timesteps, sigmas, mu)
        elif timesteps is not None:
            grid = self._custom_grid(self._as_times("timesteps", timesteps))
        elif sigmas is not None:
            grid = self._custom_grid(self._times_of_sigmas(self._as_times("sigmas", sigmas)))
        else:
            grid = self._named_grid(positive_int("num_inference_steps", num_inference_steps))
        grid = self._round(grid)
        if not bool((grid[1:] < grid[:-1]).all()):
            raise ValueError(f"the timesteps must be strictly decreasing in float32; got {grid.tolist()}")
        term = sde.t_terminal
        self._offset = 1 if term is not None and float(grid[0]) == term else 0
        rest = grid[self._offset:]
        # Singlestep methods would place stages inside a last step that ends at the data (model timesteps below 0):
        # they run to t_min and the step to the data is DDIM's, which at alpha = 1, sigma = 0 returns x0.
        self._single = self.order > 1
        self._final_x0 = self._single and float(rest[-1]) < sde.t_min
        body = rest[:-1] if self._final_x0 else rest
        # From infinite noise a data-prediction multistep plan keeps the first evaluation as its first node, laid at
        # t_max (ei_toolkit/zero_snr.py: the state is moved there by the exact step with x0 frozen), as ei.sample
        self._keep = bool(self._offset and not self._single and len(body) > 1 and float(body[0]) < sde.t_max
                          and keeps_terminal_evaluation(self.method, None))
        if self._keep:
            body = torch.cat([torch.tensor([float(sde.t_max)], dtype=torch.float64), body])
        self._body = body
        plan = plan_for(self.method, sde, body) if len(body) > 1 else None
        if plan is not None and not isinstance(plan, (MultistepPlan, RungeKuttaPlan)):
            raise ValueError(f"{self.method.name!r} makes a {type(plan).__name__}, which EIScheduler cannot step")
        if not self._single:
            evals = grid[:-1]
        else:  # (from zero terminal SNR the first entry is the one evaluation at infinite noise)
            stages = plan.eval_times if plan is not None else torch.empty(0, dtype=torch.float64)
            evals = torch.cat([grid[:self._offset], stages, body[-1:] if self._final_x0 else body[:0]])
        evals = self._round(evals)
        below = evals < sde.t_min - 1e-4  # a stage inside the last step, on the way to the data (slack: round-off)
        if bool(below.any()):
            bad = float(evals[below][0])
            raise ValueError(f"{self.method.name!r} evaluates the model at t = {bad:g}, below the first training "
                             f"timestep {sde.t_min:g}; start the timesteps' last step at or above {sde.t_min:g}")
        a, s = sde.alpha_sigma(evals)
        self._ab = list(zip(a.tolist(), s.tolist(), strict=True))
        self._grid, self._plan, self._subplans = grid, plan, {}
        if isinstance(plan, RungeKuttaPlan):
            self._stages = [(i, k) for i in range(plan.steps) for k in range(len(plan.stage_psi[i]))]
        elif self._single:
            self._stages = []
        with np.errstate(divide="ignore"):
            rho = np.where(a.numpy() > 0, s.numpy() / np.where(a.numpy() > 0, a.numpy(), 1.0), np.inf)
        end_rho = float(sde.rho(grid[-1:]))
        self._timesteps_cpu = (evals * self._scale).to(torch.float32)
        self.timesteps = self._timesteps_cpu.to(device=device)
        if self._flow:  # flow schedulers' sigmas: sigma itself, ending with the data's 0
            self.sigmas = torch.cat([s, grid[-1:]]).to(torch.float32)
        else:
            self.sigmas = torch.tensor([*rho.tolist(), end_rho], dtype=torch.float32)
        self.num_inference_steps = len(grid) - 1
        self._step_index = None
        self._begin_index = None
        self._reset_run()

    def _reset_run(self) -> None:
        self._hist: list[torch.Tensor] = []
        self._restart = 0
        self._last = -2
        self._x_prev: torch.Tensor | None = None
        self._rk_x: torch.Tensor | None = None
        self._rk_ks: list[torch.Tensor] = []

    def _end(self) -> float:
        return self.sde.t0 if self.config.final_sigmas_type == "zero" else self.sde.t_min

    def _top(self) -> float:
        """Where generated grids start: the SDE's last time (zero terminal SNR: the last finite one, moved to
        t_terminal afterwards)."""
        return self.sde.t_max

    def _named_grid(self, n: int) -> torch.Tensor:
        sde, cfg, end = self.sde, self.config, self._end()
        flag = next((f for f in SIGMA_FLAGS if cfg[f]), None)
        if cfg.grid is not None or (flag is None and cfg.timestep_spacing is None):
            name = cfg.grid or self.method.default_grid
            if cfg.final_sigmas_type == "zero":  # n - 1 steps to t_min, then the step to the data (uniform_logrho
                # does this itself): the model is never asked below its first training timestep
                head = (time_grid(sde, name, n - 1, self._top(), sde.t_min) if n > 1
                        else torch.tensor([self._top()], dtype=torch.float64))
                grid = torch.cat([head, torch.tensor([end], dtype=torch.float64)])
            else:
                grid = time_grid(sde, name, n, self._top(), end)
        elif flag is not None:
            count = n + 1 if cfg.final_sigmas_type == "sigma_min" else n
            grid = self._sigma_grid(flag, count)
            if cfg.final_sigmas_type == "zero":
                grid = torch.cat([grid, torch.tensor([end], dtype=torch.float64)])
        else:
            return self._spaced_grid(n)
        return grid if sde.t_terminal is None else terminal_grid(grid, sde.t_terminal)

    def _sigma_grid(self, flag: str, count: int) -> torch.Tensor:
        """``count`` times from t_max to t_min, spaced in rho = sigma / alpha per ``flag``."""
        sde = self.sde
        hi, lo = sde.rho_max, sde.rho_min
        if count == 1:
            return torch.tensor([self._top()], dtype=torch.float64)
        u = np.linspace(0.0, 1.0, count)
        if flag == "use_karras_sigmas":  # Karras et al. 2022, eq. (5), rho = 7
            rho = (hi ** (1 / 7) + u * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7
        elif flag == "use_beta_sigmas":  # Lee et al. 2024, "Beta sampling is all you need", Beta(0.6, 0.6)
            import scipy.stats

            rho = lo + scipy.stats.beta.ppf(1 - u, 0.6, 0.6) * (hi - lo)
        else:  # exponential sigmas / uniform lambda: uniform in log rho
            rho = np.exp(np.log(hi) + u * (np.log(lo) - np.log(hi)))
        t = sde.t_of_rho(torch.as_tensor(rho, dtype=torch.float64).clamp(lo, hi))
        t[0], t[-1] = self._top(), sde.t_min
        return t

    def _spaced_grid(self, n: int) -> torch.Tensor:
        """DPMSolverMultistepScheduler's integer timesteps for ``timestep_spacing``, then the end."""
        cfg, total = self.config, self.sde.num_timesteps
        if cfg.timestep_spacing == "linspace":
            ts = np.linspace(0, total - 1, n + 1).round()[::-1][:-1]
        elif cfg.timestep_spacing == "leading":
            ratio = total // (n + 1)
            ts = (np.arange(0, n + 1) * ratio).round()[::-1][:-1] + int(cfg.steps_offset)
        else:  # trailing
            ts = np.arange(total, 0, -total / n).round() - 1
        ts = np.unique(ts)[::-1].astype(np.float64)  # n > N gives repeats: dropped, as diffusers does
        return self._custom_grid(torch.as_tensor(ts.copy()))

    def _as_times(self, name: str, values: Any) -> torch.Tensor:
        try:
            t = torch.as_tensor(np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values,
                                           dtype=np.float64)).flatten()
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a sequence of numbers; got {values!r}") from None
        if t.numel() < 1 or bool(torch.isnan(t).any()):
            raise ValueError(f"{name} must be a non-empty sequence of numbers; got {values!r}")
        return t

    def _times_of_sigmas(self, sigmas: torch.Tensor) -> torch.Tensor:
        sde = self.sde
        out = torch.empty_like(sigmas)
        inf = torch.isinf(sigmas) & (sigmas > 0)
        if bool(inf.any()):
            if sde.t_terminal is None or not bool(inf[0]) or bool(inf[1:].any()):
                raise ValueError("sigmas: only the first may be inf, and only on a zero-terminal-SNR schedule")
            out[0] = sde.t_terminal
        fin = ~inf
        if bool((sigmas[fin] < 0).any()) or bool((sigmas[fin] > sde.rho_max * (1 + 1e-6)).any()):  # float32 slack
            raise ValueError(f"sigmas must lie in [0, {sde.rho_max:.6g}] (rho = sigma / alpha at t_max); got "
                             f"{sigmas.tolist()}")
        out[fin] = sde.t_of_rho(sigmas[fin].clamp(max=sde.rho_max))
        return out

    def _custom_grid(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps (decreasing) plus the end, checked against the domain."""
        sde, end = self.sde, self._end()
        if len(t) > 1 and not bool((t[1:] < t[:-1]).all()):
            raise ValueError(f"timesteps must be strictly decreasing; got {t.tolist()}")
        first = 1 if sde.t_terminal is not None and float(t[0]) == sde.t_terminal else 0
        body = t[first:]
        if bool((body > sde.t_max).any()) or bool((t < sde.t0).any()):
            term = "" if sde.t_terminal is None else f" or start at t_terminal = {sde.t_terminal:g}"
            raise ValueError(f"timesteps must lie in [{sde.t0:g}, {sde.t_max:g}]{term}; got {t.tolist()}")
        if float(t[-1]) > end:
            t = torch.cat([t, torch.tensor([end], dtype=torch.float64)])
        if len(t) < 2:
            raise ValueError(f"the timesteps end where the run ends (t = {end:g}); give at least one step")
        return t

    # -- stepping ---------------------------------------------------------------------------------------------

    def index_for_timestep(self, timestep: Any, schedule_timesteps: torch.Tensor | None = None) -> int:
        """The index of ``timestep`` in the schedule (of its second occurrence if it occurs twice, as in
        diffusers: a singlestep schedule repeats a step's end as the next step's start)."""
        t = self._timestep_value(timestep)
        sched = self.timesteps if schedule_timesteps is None else schedule_timesteps
        sched = self._timesteps_cpu if schedule_timesteps is None and self._grid is not None else sched
        hits = (torch.as_tensor(sched).detach().to("cpu", torch.float64) == t).nonzero().flatten()
        if len(hits) == 0:
            raise ValueError(f"timestep {t:g} is not one of the scheduler's timesteps ({self._show()}); pass the "
                             "timesteps of set_timesteps")
        return int(hits[1] if len(hits) > 1 else hits[0])

    def _show(self) -> str:
        ts = self.timesteps.tolist()
        return ", ".join(f"{v:g}" for v in ts[:4]) + (", ..." if len(ts) > 4 else "")

    @staticmethod
    def _timestep_value(timestep: Any) -> float:
        if isinstance(timestep, torch.Tensor):
            flat = timestep.detach().flatten()
            if flat.numel() == 0 or not (flat.is_floating_point() or flat.dtype in (torch.int32, torch.int64)):
                raise TypeError(f"timestep must be a number or a tensor of one; got {timestep!r}")
            if flat.numel() > 1 and not bool((flat == flat[0]).all()):
                raise ValueError(f"timestep must be one value (a batch of equal timesteps at most); got {timestep!r}")
            return float(flat[0].to(torch.float32))
        if isinstance(timestep, bool) or not isinstance(timestep, (int, float, np.number)):
            raise TypeError(f"timestep must be a number or a tensor of one; got {type(timestep).__name__} "
                            f"{timestep!r}")
        return float(np.float32(timestep))

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True) -> EISchedulerOutput | tuple:
        """One model evaluation: the state at the next timestep (``prev_sample``) and the data prediction.
        ``generator`` (or ``variance_noise``) feeds stochastic methods."""
        if self._grid is None:
            raise RuntimeError("call set_timesteps(num_inference_steps) before step()")
        i = self._step_index
        if i is None:  # the run's first step: its position from the timestep, or the pipeline's begin index
            i = self.index_for_timestep(timestep) if self._begin_index is None else self._begin_index
        if i >= len(self.timesteps):
            raise RuntimeError(f"step() called past the last of {len(self.timesteps)} timesteps; call set_timesteps "
                               "again to start a new run")
        # Reading a device tensor waits for the device: after the first step, a timestep on a GPU is trusted
        # (no host-device synchronisation per step); Python numbers and CPU tensors are checked every step.
        on_device = isinstance(timestep, torch.Tensor) and timestep.device.type != "cpu"
        t = float(self._timesteps_cpu[i]) if on_device and self._step_index is not None else \
            self._timestep_value(timestep)
        if t != float(self._timesteps_cpu[i]):
            raise ValueError(f"step() got timestep {t:g}, but the run is at timesteps[{i}] = "
                             f"{float(self._timesteps_cpu[i]):g}; pass the scheduler's timesteps in order (to start "
                             "mid-schedule, call set_begin_index or pass that timestep first)")
        if not isinstance(sample, torch.Tensor) or not isinstance(model_output, torch.Tensor):
            raise TypeError("model_output and sample must be tensors")
        if (model_output.shape != sample.shape and self.config.variance_type in ("learned", "learned_range")
                and model_output.ndim > 1 and model_output.shape[1] == 2 * sample.shape[1]):
            model_output = model_output[:, : sample.shape[1]]
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output has shape {tuple(model_output.shape)}; expected {tuple(sample.shape)} "
                             "(the shape of sample)")
        work = sample.dtype if sample.dtype in (torch.float32, torch.float64) else torch.float32
        x, out = sample.to(work), model_output.to(work)
        a, s = self._ab[i]
        if i < self._offset:  # zero terminal SNR: the exact step from rho = inf
            check_prediction(self.prediction)
            x0 = self._threshold(to_x0(self.prediction, out, x, a, s))
            if self._keep:  # to t_max, then the plan's first step with this x0 as its first evaluation
                a1, s1 = (float(v) for v in self.sde.alpha_sigma(self._body[:1]))
                # the plan's first answer: this x0, or for a plan on eps (EMS) the noise it implies at t_max, x
                x0, prev = self._multistep(0, infinite_noise_step(x, x0, a1, s1), out, a, s,
                                           self._noise(generator, variance_noise),
                                           given=(x0, x0 if self._plan.target == "x0" else x))
            else:
                a1, s1 = (float(v) for v in self.sde.alpha_sigma(self._grid[1:2]))
                e = terminal_mixing(self.method)
                z = self._noise(generator, variance_noise)(0, x) if e != 1.0 else None
                prev = infinite_noise_step(x, x0, a1, s1, e, z)
        elif self._single:
            x0, prev = self._stage(i - self._offset, x, out, a, s)
        else:
            x0, prev = self._multistep(i - self._offset + self._keep, x, out, a, s,
                                       self._noise(generator, variance_noise))
        self._step_index = i + 1
        prev, x0 = prev.to(sample.dtype), x0.to(sample.dtype)
        if not return_dict:
            return (prev, x0)
        return EISchedulerOutput(prev_sample=prev, pred_original_sample=x0)

    def _convert(self, out: torch.Tensor, x: torch.Tensor, a: float, s: float, target: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, e): the data prediction (thresholded / clipped as configured) and what the plan combines."""
        x0 = to_x0(self.prediction, out, x, a, s)
        modified = self.config.thresholding or self.config.clip_sample
        if modified:
            x0 = self._threshold(x0)
        if target == "x0":
            return x0, x0
        return x0, ((x - a * x0) / s if modified else to_eps(self.prediction, out, x, a, s))

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if cfg.thresholding:  # diffusers' s = clamp(quantile, 1, sample_max_value); x0 -> clamp(x0, -s, s) / s
            m = float(cfg.sample_max_value)
            if m >= 1:  # the quantile of clamp(|x0|, m) is min(quantile, m): Imagen's rule on the clamped x0
                x0 = threshold_x0(x0.clamp(-m, m), dynamic=float(cfg.dynamic_thresholding_ratio), max_value=1.0)
            else:
                x0 = x0.clamp(-m, m) / m
        if cfg.clip_sample:
            x0 = x0.clamp(-float(cfg.clip_sample_range), float(cfg.clip_sample_range))
        return x0

    def _noise(self, generator: Any, variance_noise: torch.Tensor | None) -> Any:
        def draw(i: int, x: torch.Tensor) -> torch.Tensor:
            if variance_noise is not None:
                if variance_noise.shape != x.shape:
                    raise ValueError(f"variance_noise has shape {tuple(variance_noise.shape)}; expected "
                                     f"{tuple(x.shape)}")
                return variance_noise.to(device=x.device, dtype=x.dtype)
            return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)

        return draw

    def _subplan(self, restart: int) -> MultistepPlan:
        """The plan on the grid from step ``restart`` on (the lower-order start after a jump in the run)."""
        if restart == 0:
            return self._plan
        hit = self._subplans.get(restart)
        if hit is None:
            hit = self._subplans[restart] = plan_for(self.method, self.sde, self._body[restart:])
        return hit

    def _multistep(self, j: int, x: torch.Tensor, out: torch.Tensor, a: float, s: float, noise: Any,
                   given: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Step j of the plan with the model output ``out`` at (x, a, s), or with ``given`` = (its data prediction,
        the plan's target value)."""
        if self._plan is None:  # a lone step from infinite noise was the whole run
            raise RuntimeError("no steps left in this run")
        x0, e = given if given is not None else self._convert(out, x, a, s, self._plan.target)
        if j != self._last + 1:  # the history is not contiguous: start again at lower order
            self._hist, self._restart, self._x_prev = [], j, None
        plan = self._subplan(self._restart)
        k = j - self._restart
        self._hist.append(plan.entry(k, x, e))
        if plan.corrects and self._x_prev is not None:
            x = plan.correct(k - 1, self._x_prev, self._hist)  # the corrected state replaces the predicted one
        self._x_prev = x
        self._last = j
        return x0, plan.step(k, x, self._hist, noise)

    def _stage(self, i: int, x: torch.Tensor, out: torch.Tensor, a: float, s: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self._plan
        if i == len(self._stages):  # the last step, to the data: DDIM's, x_next = x0
            x0, _ = self._convert(out, x, a, s, "x0")
            self._last = i
            return x0, x0.clone()
        step, stage = self._stages[i]
        if stage == 0:
            self._rk_x, self._rk_ks = x, []
        elif self._last != i - 1 or self._rk_x is None:
            raise RuntimeError(f"{self.method.name!r} runs stage by stage: timesteps[{i}] is stage {stage} of a step; "
                               "start at a step's first stage (a multiple of scheduler.order)")
        x0, k = self._convert(out, x, a, s, plan.target)
        self._rk_ks.append(k)
        self._last = i
        base, ks = self._rk_x, self._rk_ks
        if stage + 1 < len(plan.stage_psi[step]):
            nxt = stage + 1
            return x0, combine(base, plan.stage_psi[step][nxt], list(zip(plan.stage_weights[step][nxt], ks,
                                                                         strict=False)))
        return x0, combine(base, plan.psi[step], list(zip(plan.weights[step], ks, strict=True)))

    # -- noising and model inputs -----------------------------------------------------------------------------

    def _marginal(self, timesteps: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(timesteps, (str, bool)):
            raise TypeError(f"timesteps must be numbers; got {timesteps!r}")
        t = self._as_times("timesteps", timesteps) / self._scale
        term = self.sde.t_terminal
        ok = ((t >= self.sde.t0) & (t <= self.sde.t_max)) | (t == term if term is not None else False)
        if not bool(ok.all()):
            raise ValueError(f"timesteps must lie in the schedule's domain [{self.sde.t0:g}, "
                             f"{term if term is not None else self.sde.t_max:g}]; got {t.tolist()}")
        a, s = self.sde.alpha_sigma(t)
        shape = (-1, *([1] * (like.ndim - 1))) if t.numel() > 1 else (1,) * max(like.ndim, 1)
        if t.numel() > 1 and t.numel() != like.shape[0]:
            raise ValueError(f"timesteps: one per sample ({like.shape[0]}) or one for all; got {t.numel()}")
        return (a.to(like.device, like.dtype).view(shape), s.to(like.device, like.dtype).view(shape))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise at model timesteps (one per sample, or one for all)."""
        if noise.shape != original_samples.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {tuple(original_samples.shape)}")
        a, s = self._marginal(timesteps, original_samples)
        return a * original_samples + s * noise.to(original_samples)

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: Any) -> torch.Tensor:
        """The v-prediction target alpha(t) noise - sigma(t) x0 (Salimans & Ho 2022); for flow matching the
        velocity noise - x0 (Liu et al. 2023), whatever the time."""
        a, s = self._marginal(timesteps, sample)
        if self._flow:
            return noise.to(sample) - sample
        return a * noise.to(sample) - s * sample

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The model takes x itself (a VP schedule in x needs no input scaling)."""
        return sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs: Any) -> None:
        """As diffusers' ``save_pretrained``; an EMS method's statistics are written next to the config as
        :data:`STATISTICS_FILE`, and the saved config names that file (read back by :meth:`from_pretrained`)."""
        if self.config.get("statistics") is None:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        folder = Path(save_directory)
        if folder.is_file():
            raise ValueError(f"save_directory {str(folder)!r} is a file; give a folder")
        folder.mkdir(parents=True, exist_ok=True)
        self.method.statistics.save(folder / STATISTICS_FILE)
        live = self._internal_dict
        self._internal_dict = FrozenDict({**live, "statistics": STATISTICS_FILE})
        try:
            return super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)
        finally:
            self._internal_dict = live

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None = None,
                        subfolder: str | None = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """As diffusers' ``from_pretrained``. A ``statistics`` file named in the config is read from the scheduler's
        own folder only (where :meth:`save_pretrained` put it): from a local folder, a relative name inside it (an
        absolute name, ``..`` or a link leading out of the folder is refused); from a hub repo id, the file of that
        name in the same repo, revision and subfolder, through huggingface_hub's download and cache
        (``cache_dir``, ``revision``, ``local_files_only``, ``token`` ... apply), never a path relative to the
        working directory. ``statistics=`` given here is a path of the caller's and is read as given."""
        if "statistics" not in kwargs and pretrained_model_name_or_path is not None:
            hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
            try:
                named = cls.load_config(pretrained_model_name_or_path, subfolder=subfolder, **hub).get("statistics")
            except Exception:  # no readable config: diffusers' loader below reports that
                named = None
            if named is not None:
                kwargs["statistics"] = _statistics_in_folder(pretrained_model_name_or_path, subfolder, named, hub)
        return super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder,
                                       return_unused_kwargs=return_unused_kwargs, **kwargs)

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """As diffusers' ``from_config``; keyword arguments EIScheduler does not take are reported, not dropped."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown = sorted(k for k in kwargs if k not in known and not k.startswith("_"))
        if unknown:
            logger.warning(f"EIScheduler.from_config: {unknown} are not EIScheduler options and are ignored; valid: "
                           f"{sorted(known)}")
        cfg = config if isinstance(config, dict) else dict(getattr(config, "config", config) or {})
        # a flow scheduler's config: named so (saved configs), flow sigmas, or a shift without betas (a live
        # FlowMatchEulerDiscreteScheduler config has neither a class name nor betas)
        flow = (str(cfg.get("_class_name", "")) in FLOW_SCHEDULERS or bool(cfg.get("use_flow_sigmas"))
                or cfg.get("prediction_type") == "flow_prediction"
                or ("shift" in cfg and "beta_start" not in cfg and "prediction_type" not in cfg))
        if flow and kwargs.get("prediction_type", "flow_prediction") == "flow_prediction":
            kwargs.setdefault("prediction_type", "flow_prediction")
            if "method" not in cfg:  # a flow scheduler's config names no method of ours
                kwargs.setdefault("method", FLOW_METHOD)
            if cfg.get("use_flow_sigmas") and "shift" not in cfg:  # DPM-Solver / UniPC flow configs
                kwargs.setdefault("shift", float(cfg.get("flow_shift", 1.0)))
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

