"""The diffusion SDEs of the literature, each a thin definition on top of :class:`LinearSDE`.

Each gives F and G (or its marginals, where the literature defines it by them) and a default sampling
window [t_min, t_max]; everything else is derived by the same layer as a user's SDE.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Hashable

import numpy as np
import sympy as sp
import torch

from .derive import T
from .linear import LinearSDE
from .tables import PiecewiseLinear, TableFunction, TableImpl, table_function

_LINEAR_BETA = "beta_min + (beta_max - beta_min) * t"


class VPSDE(LinearSDE):
    """Variance-preserving SDE with linear beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1]:
    F = -beta/2, G = sqrt(beta) (Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021).

    Default window: t_min = 1e-3 (the score-SDE sampling epsilon), t_max = 1.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float = 1e-3, t_max: float = 1.0):
        _positive(beta_min=beta_min, beta_max=beta_max)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        super().__init__(drift=f"-({_LINEAR_BETA}) / 2", diffusion=f"sqrt({_LINEAR_BETA})", t_max=t_max,
                         t_min=t_min, beta_min=self.beta_min, beta_max=self.beta_max)


class SubVPSDE(LinearSDE):
    """Sub-VP SDE (Song et al. 2021): F = -beta/2, G = sqrt(beta (1 - exp(-2 int_0^t beta))); its marginal
    std is 1 - alpha^2. Default window: t_min = 1e-3, t_max = 1."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float = 1e-3, t_max: float = 1.0):
        _positive(beta_min=beta_min, beta_max=beta_max)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        discount = "1 - exp(-2 * beta_min * t - (beta_max - beta_min) * t**2)"
        super().__init__(drift=f"-({_LINEAR_BETA}) / 2", diffusion=f"sqrt(({_LINEAR_BETA}) * ({discount}))",
                         t_max=t_max, t_min=t_min, beta_min=self.beta_min, beta_max=self.beta_max)


class CosineVPSDE(LinearSDE):
    """VP SDE of the cosine schedule (Nichol & Dhariwal, "Improved DDPM", 2021), given by its marginal
    alpha(t)^2 = f(t) / f(0), f(t) = cos^2((t + s) / (1 + s) pi / 2), sigma^2 = 1 - alpha^2, t in [0, 1).

    alpha vanishes at t = 1, so the default t_max is 0.9946 (as in DPM-Solver, rho(t_max) ~ 119);
    t_min = 1e-3.
    """

    def __init__(self, s: float = 0.008, *, t_min: float = 1e-3, t_max: float = 0.9946):
        _positive(s=s)
        if not t_max < 1:
            raise ValueError(f"t_max must be < 1 for the cosine schedule (alpha(1) = 0); got {t_max}")
        self.s = float(s)
        # alpha = cos(u) / cos(u0); 1 - alpha^2 = sin(u - u0) sin(u + u0) / cos(u0)^2, written so that sigma
        # keeps full relative precision near t = 0.
        u, u0 = "(t + s) / (1 + s) * pi / 2", "s / (1 + s) * pi / 2"
        alpha = f"cos({u}) / cos({u0})"
        sigma = f"sqrt(sin({u} - {u0}) * sin({u} + {u0})) / cos({u0})"
        self._init_marginals(sigma, alpha, log_alpha=None, t_max=t_max, t_min=t_min, t0=0.0, s=self.s)


class VESDE(LinearSDE):
    """Variance-exploding SDE (Song et al. 2021): F = 0, G = sigma_min r^t sqrt(2 log r), r = sigma_max /
    sigma_min, with sigma_init = sigma_min so that sigma(t) = sigma_min r^t exactly.

    Default window: t_min = 1e-5 (the score-SDE sampling epsilon), t_max = 1.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, *, t_min: float = 1e-5,
                 t_max: float = 1.0):
        _positive(sigma_min=sigma_min, sigma_max=sigma_max)
        if not sigma_max > sigma_min:
            raise ValueError(f"sigma_max must be greater than sigma_min; got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        diffusion = "sigma_min * (sigma_max / sigma_min)**t * sqrt(2 * log(sigma_max / sigma_min))"
        super().__init__(drift=0, diffusion=diffusion, sigma_init="sigma_min", t_max=t_max, t_min=t_min,
                         sigma_min=self.sigma_min, sigma_max=self.sigma_max)


class EDM(LinearSDE):
    """The EDM parameterisation (Karras et al., "Elucidating the Design Space...", 2022): alpha = 1,
    sigma(t) = t, so F = 0 and G = sqrt(2 t). Window [sigma_min, sigma_max], default [0.002, 80]."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0):
        _positive(sigma_min=sigma_min, sigma_max=sigma_max)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._init_marginals("t", log_alpha=None, t_max=self.sigma_max, t_min=self.sigma_min, t0=0.0)
        self.parameters = {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class RectifiedFlow(LinearSDE):
    """Rectified flow / flow matching (Liu et al., "Flow Straight and Fast", ICLR 2023; Lipman et al., "Flow Matching
    for Generative Modeling", ICLR 2023; Esser et al., "Scaling Rectified Flow Transformers" (SD3), ICML 2024):
    x_t = (1 - t) x0 + t z, so alpha = 1 - t, sigma = t, rho = t / (1 - t), F = -1 / (1 - t),
    G^2 = 2 t / (1 - t), on t in [0, 1]. Time is sigma, what flow models are conditioned on (diffusers passes
    1000 sigma as the timestep).

    Zero SNR at t = 1: :attr:`t_terminal` = 1 is the time of pure noise (alpha = 0, rho = inf), where sampling starts
    by default through the exact first step of :mod:`ei_toolkit.zero_snr` (the Euler step of the velocity
    ODE from t = 1, which is exact there for frozen x0). The SDE's domain ends at ``t_max`` (default 1 - 1e-4,
    rho = 9999), the last finite-rho time: grids are laid from it and their first point moved to 1. ``t_min``
    (default 1e-3, diffusers' smallest sigma for 1000 training steps) is the model's smallest time; t0 = 0 is the
    data, reached by a last step into rho = 0 with ``t_end=0``, where ``ei.sample`` ends by default
    (:attr:`ends_at_data`). A velocity model, v = dx/dt = z - x0, is ``prediction="flow"`` (x0 = x - t v,
    eps = x + (1 - t) v: docs/math.md section 7).
    """

    t_terminal: float = 1.0
    ends_at_data = True  # ei.sample without t_end runs to t0 = 0 (the data), as flow pipelines do (sigma = 0)
    # sample()'s default for flow models, benchmarks/choose_default.py --flow-raw (benchmarks/results/default.md): per
    # NFE, among the configurations within 1.5x the best peer on each of bench_flow.py's four mixtures, the lowest
    # max(geometric-mean ratio, worst ratio on a trained flow model below grids.HIGH_DIM elements per sample:
    # digits-flow), the two targets of issues 21 and 26, at NFE 5, 10, 20; the switches placed by the mixtures at NFE 8
    # and 15; (largest nfe, method, grid). DEFAULTS_BY_NFE_HIGH_DIM: the
    # rule on the flow models at or above it (patches-flow, 768), whose velocity needs steps at high noise, as SD3
    # shifts its schedule for larger images. Candidates spend one evaluation per step (choose_default.every_budget):
    # x0-tss2, 0.99x the best peer at NFE 10 there, loses its order on the last step at odd budgets.
    # x0-tab2 is DEIS's tAB on the data prediction (Adams in t): against the flow_matching package's Runge-Kutta steps
    # on uniform time, the best peer from NFE 15, the log-rho methods lost up to 6x on a mixture, it stays within 1.7x.
    DEFAULTS_BY_NFE: tuple[tuple[int | None, str, str], ...] = (
        (6, "x0-tab2", "quadratic_t"), (12, "logrhoab1-pc", "quadratic_t"), (None, "x0-tab2", "quadratic_t"))
    DEFAULTS_BY_NFE_HIGH_DIM: tuple[tuple[int | None, str, str], ...] = (
        (7, "x0-logrhoab2-pc", "sd3_shift"), (None, "ipndm", "uniform_logrho"))

    def __init__(self, *, t_min: float = 1e-3, t_max: float = 1.0 - 1e-4):
        if isinstance(t_max, bool) or not isinstance(t_max, (int, float)) or not 0 < t_max < 1:
            raise ValueError(f"t_max must lie in (0, 1): alpha = 1 - t vanishes at t = 1, the terminal time where "
                             f"sampling starts; got {t_max!r}")
        self._init_marginals("t", "1 - t", log_alpha=None, t_max=float(t_max), t_min=t_min, t0=0.0)
        self.parameters = {}

    @property
    def key(self) -> Hashable:
        return (*super().key, ("t_terminal", self.t_terminal))

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha = 1 - t and sigma = t on [0, 1], t_terminal = 1 included; float64 for Python numbers, else t's dtype
        and device."""
        t = self._time(t)
        self._check_range(t, self.t0, self.t_terminal, "t", "[t0, t_terminal]")
        return 1 - t, t.clone()

    def default_method(self, nfe: int, *, high_dim: bool = False) -> tuple[str, str]:
        """sample()'s default (method, grid) for a flow model with ``nfe`` evaluations (:attr:`DEFAULTS_BY_NFE`; for
        data of ``grids.HIGH_DIM`` elements per sample or more, ``high_dim=True``: :attr:`DEFAULTS_BY_NFE_HIGH_DIM`;
        ``ei.sampling.default_method`` decides from the data size)."""
        table = self.DEFAULTS_BY_NFE_HIGH_DIM if high_dim else self.DEFAULTS_BY_NFE
        return next((m, g) for top, m, g in table if top is None or nfe <= top)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min:g}, t_max={self.t_max:g})"


class DiscreteVP(LinearSDE):
    """A DDPM-style tabulated VP schedule, in the model's own time units.

    ``betas`` (length N) give alphas_cumprod[n] = prod_{i <= n} (1 - betas[i]); time n = 0..N-1 is the
    model's timestep and alpha(n) = sqrt(alphas_cumprod[n]), sigma = sqrt(1 - alpha^2). log alpha is
    interpolated piecewise linearly between integer times (as DPM-Solver does), and the data sits at
    t0 = -1, where alpha = 1 (diffusers' ``set_alpha_to_one``). Default window [0, N - 1]; ``t_max`` beyond
    the table is an error (nothing is extrapolated).

    Zero terminal SNR (Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", WACV 2024):
    a last beta of 1 (alphas_cumprod[-1] = 0), or ``rescale_zero_snr=True`` to rescale the betas so. Then the
    SDE's domain ends at t_max = N - 2, the last time with alpha > 0, and :attr:`t_terminal` = N - 1 is the
    time of infinite noise (alpha = 0, sigma = 1, rho = inf), where sampling starts by default. Only the
    data prediction x0 is defined there (x0 = -v for a v-model), so the first step is the exact
    exponential-integrator step from rho = inf with x0 frozen, x_next = alpha_next x0 + sigma_next x
    (docs/math.md section 5 with rho_t -> inf); :func:`ei_toolkit.sample` takes it through
    :func:`ei_toolkit.zero_snr.solve_from_infinite_noise`.
    """

    t_terminal: float | None = None

    def __init__(self, betas: torch.Tensor | np.ndarray | list[float], *, t_min: float = 0.0,
                 t_max: float | None = None, rescale_zero_snr: bool = False):
        b = np.asarray(torch.as_tensor(betas, dtype=torch.float64).cpu().numpy() if isinstance(betas, torch.Tensor)
                       else betas, dtype=np.float64)
        if b.ndim != 1 or len(b) < 2:
            raise ValueError(f"betas must be a 1-D sequence of length >= 2; got shape {b.shape}")
        if not isinstance(rescale_zero_snr, bool):
            raise TypeError(f"rescale_zero_snr must be True or False; got {rescale_zero_snr!r}")
        if not np.all((b[:-1] > 0) & (b[:-1] < 1)) or not 0 < b[-1] <= 1:
            raise ValueError("betas must lie in (0, 1) (the last may be 1: zero terminal SNR)")
        if rescale_zero_snr:
            b = rescale_zero_terminal_snr(b)
        with np.errstate(divide="ignore"):
            log_alpha = np.concatenate([[0.0], 0.5 * np.cumsum(np.log1p(-b))])
        self._init_from_log_alpha(log_alpha, t_min, t_max)
        self.betas = torch.as_tensor(b)

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor | np.ndarray | list[float], *, t_min: float = 0.0,
                            t_max: float | None = None) -> DiscreteVP:
        """Build from a table of alphas_cumprod (strictly decreasing, in (0, 1); the last may be 0: zero
        terminal SNR)."""
        a = np.asarray(alphas_cumprod.detach().cpu().double().numpy() if isinstance(alphas_cumprod, torch.Tensor)
                       else alphas_cumprod, dtype=np.float64)
        if a.ndim != 1 or len(a) < 2:
            raise ValueError(f"alphas_cumprod must be a 1-D sequence of length >= 2; got shape {a.shape}")
        if not (np.all(a[:-1] > 0) and np.all(a < 1) and a[-1] >= 0 and np.all(np.diff(a) < 0)):
            raise ValueError("alphas_cumprod must lie in (0, 1) and be strictly decreasing (the last may be 0: zero "
                             "terminal SNR)")
        self = cls.__new__(cls)
        with np.errstate(divide="ignore"):
            self._init_from_log_alpha(np.concatenate([[0.0], 0.5 * np.log(a)]), t_min, t_max)
        self.betas = torch.as_tensor(1 - a / np.concatenate([[1.0], a[:-1]]))
        return self

    def _init_from_log_alpha(self, log_alpha: np.ndarray, t_min: float, t_max: float | None) -> None:
        n = len(log_alpha) - 1  # table entries at t = 0..n-1; log_alpha[0] is the data time t0 = -1
        zero_snr = not np.isfinite(log_alpha[-1])
        finite = log_alpha[:-1] if zero_snr else log_alpha
        last = float(len(finite) - 2)  # the last time with alpha > 0
        if zero_snr and n < 3:
            raise ValueError("a zero-terminal-SNR table needs at least 3 entries (two with alpha > 0)")
        if t_max is not None:
            if isinstance(t_max, bool) or not isinstance(t_max, (int, float)) or not math.isfinite(t_max):
                raise ValueError(f"t_max must be a finite real number; got {t_max!r}")
            if t_max > last:
                where = (f"alpha > 0 up to t = {last:g}; t = {n - 1} is the zero-SNR time t_terminal, where "
                         "sampling starts by default" if zero_snr else f"the table ends at t = {last:g}")
                raise ValueError(f"t_max = {t_max:g} lies beyond the table ({where}); DiscreteVP does not "
                                 "extrapolate")
        la = _discrete_log_alpha(np.ascontiguousarray(finite).tobytes())
        self._init_marginals(sp.sqrt(1 - sp.exp(2 * la(T))), log_alpha=la(T), t0=-1.0, t_min=t_min,
                             t_max=last if t_max is None else float(t_max))
        self.num_timesteps = n
        with np.errstate(over="ignore"):
            self.alphas_cumprod = torch.as_tensor(np.exp(2 * log_alpha[1:]))
        self.parameters = {"num_timesteps": n}
        # infinite noise is the start of sampling unless the window was cut short
        self.t_terminal = float(n - 1) if zero_snr and self.t_max == last else None

    @property
    def zero_terminal_snr(self) -> bool:
        """Whether the table ends at infinite noise (alphas_cumprod[-1] = 0)."""
        return self.t_terminal is not None

    @property
    def key(self) -> Hashable:
        base = super().key
        return base if self.t_terminal is None else (*base, ("t_terminal", self.t_terminal))

    def alpha_sigma(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha(t) and sigma(t) on the whole table, :attr:`t_terminal` included (alpha = 0, sigma = 1 there);
        float64 for Python numbers, else t's dtype and device."""
        t = self._time(t)
        if self.t_terminal is None:
            return self.alpha(t), self.sigma(t)
        at_end = t == self.t_terminal
        inner = torch.where(at_end, torch.full_like(t, self.t_max), t)
        a, s = self.alpha(inner), self.sigma(inner)
        return torch.where(at_end, torch.zeros_like(a), a), torch.where(at_end, torch.ones_like(s), s)

    def __repr__(self) -> str:
        extra = ", zero terminal SNR" if self.t_terminal is not None else ""
        return f"{type(self).__name__}(num_timesteps={getattr(self, 'num_timesteps', '?')}{extra})"

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, *,
               rescale_zero_snr: bool = False) -> DiscreteVP:
        """The DDPM linear schedule (Ho et al. 2020): betas evenly spaced from beta_start to beta_end
        (rescaled to zero terminal SNR with ``rescale_zero_snr=True``)."""
        return cls(np.linspace(beta_start, beta_end, num_timesteps), rescale_zero_snr=rescale_zero_snr)


def rescale_zero_terminal_snr(betas: np.ndarray | torch.Tensor | list[float]) -> np.ndarray:
    """Betas rescaled to zero terminal SNR (Lin et al. 2024, algorithm 1): sqrt(alphas_cumprod) is shifted so
    that its last value is 0 and scaled so that its first is unchanged; float64."""
    b = np.asarray(torch.as_tensor(betas, dtype=torch.float64).numpy(), dtype=np.float64)
    root = np.sqrt(np.cumprod(1 - b))
    first, last = root[0], root[-1]
    root = (root - last) * first / (first - last)
    ac = root**2
    alphas = np.concatenate([ac[:1], ac[1:] / ac[:-1]])
    return 1 - alphas


def _discrete_log_alpha(log_alpha_bytes: bytes) -> type[TableFunction]:
    """The piecewise-linear log-alpha of a table as a sympy function (one class per distinct table while
    cached); its ``value_key`` is the SHA-256 digest of the table, which keys the derivation by value."""
    return _discrete_log_alpha_owned(log_alpha_bytes)[0]


@functools.lru_cache(maxsize=32)
def _discrete_log_alpha_owned(log_alpha_bytes: bytes) -> tuple[type[TableFunction], list[TableImpl]]:
    """The function class and the implementations it needs (owned by this cache while the entry lives, and
    by each derivation that uses them)."""
    values = np.frombuffer(log_alpha_bytes, dtype=np.float64).copy()
    nodes = np.arange(len(values), dtype=np.float64) - 1.0
    table = PiecewiseLinear(nodes, values)
    digest = hashlib.sha256(log_alpha_bytes).hexdigest()
    short = digest[:8]
    owner: list[TableImpl] = []
    slope = table_function(f"discrete_log_alpha_slope_{short}", table.slope_numpy, table.slope_torch, owner,
                           derivative=lambda x: sp.S.Zero, table=table, value_key=("slope", digest))
    fn = table_function(f"discrete_log_alpha_{short}", table.numpy, table.torch, owner,
                        derivative=lambda x: slope(x), table=table, value_key=("log_alpha", digest))
    fn._inverse = table_function(f"discrete_log_alpha_inverse_{short}", table.inverse_numpy, table.inverse_torch,
                                 owner, derivative=lambda x: 1 / slope(fn._inverse(x)), table=table,
                                 value_key=("inverse", digest))
    return fn, owner


def _positive(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and v > 0 and np.isfinite(v)):
            raise ValueError(f"{name} must be a finite positive number; got {v!r}")
