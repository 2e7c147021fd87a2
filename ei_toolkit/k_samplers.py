"""Our methods with k-diffusion's sampler signature, for k-diffusion scripts and the UIs built on it (ComfyUI).

``sampler(model, x, sigmas, extra_args=None, callback=None, disable=None)``: ``model(x, sigma, **extra_args)`` is a
k-diffusion denoiser (it returns the denoised x0, with x = x0 + sigma eps), ``sigmas`` a decreasing schedule that
may end in 0 (e.g. ``k_diffusion.sampling.get_sigmas_karras``). Inside, this is the VE process alpha = 1, sigma = t
(``ei.EDM`` with t_max the first sigma and t_min the last nonzero one; its data time t0 is 0): the sigmas are an
explicit grid, the denoiser an x0-model. A last step into sigma = 0 is the method's own step when it evaluates the
model at positive sigmas only (every multistep method: the x0 forms and the one-point steps end in x0 itself);
methods with a stage at the step's end (Runge-Kutta: ``heun``) run to the last nonzero sigma and take the one-point
step x = denoised from there, as k-diffusion's Heun and DPM-2 do.

``callback`` gets k-diffusion's dict ``{'x', 'i', 'sigma', 'sigma_hat', 'denoised'}`` once per step, at the step's
first evaluation (``x`` the state the model saw there; ``sigma_hat`` = ``sigma``: no churn); ``disable`` switches
off the tqdm bar (None: off when not on a terminal, as tqdm does); ``extra_args`` go to the denoiser.

:data:`SAMPLERS` holds ``sample_<name>`` for every registered fixed-grid method and alias (``-`` as ``_``),
stochastic DDIM included; :func:`sampler` builds one for any method object (e.g. an :class:`~ei_toolkit.EMSAdams`,
with the ``sde`` its statistics were estimated for). k-diffusion itself is not imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from .integrators import ALIASES, INTEGRATORS, Integrator, Method, get_integrator
from .integrators.base import RungeKuttaPlan, plan_for
from .integrators.ems import EMSAdams
from .sde import LinearSDE
from .sde.builtins import EDM

Denoiser = Callable[..., torch.Tensor]


class KSampler(Protocol):
    """k-diffusion's sampler signature."""

    def __call__(self, model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                 callback: Callable[[dict[str, Any]], None] | None = None, disable: bool | None = None
                 ) -> torch.Tensor: ...


def check_sigmas(sigmas: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """The schedule as a float64 CPU tensor: at least 2 finite values, strictly decreasing, positive but the last
    (which may be 0); else a ValueError."""
    s = torch.as_tensor(sigmas).detach().to(device="cpu", dtype=torch.float64).flatten()
    if s.numel() < 2:
        raise ValueError(f"sigmas needs at least 2 noise levels (one step); got {s.numel()}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"sigmas must be finite; got {s.tolist()}")
    if not bool((s[1:] < s[:-1]).all()):
        raise ValueError(f"sigmas must be strictly decreasing; got {s.tolist()}")
    if not (s[-1] >= 0 and (s[:-1] > 0).all()):
        raise ValueError(f"sigmas must be positive (the last may be 0); got {s.tolist()}")
    return s


def ve_process(sigmas: torch.Tensor) -> EDM:
    """The VE process the sigmas run on: EDM(last nonzero sigma, first sigma) (half the first for one step to 0)."""
    top = float(sigmas[0])
    low = float(sigmas[-2] if sigmas[-1] == 0 else sigmas[-1])
    return EDM(low if low < top else 0.5 * top, top)


def _check_sde(sde: Any, sigmas: torch.Tensor) -> LinearSDE:
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"sde must be an ei_toolkit.LinearSDE with alpha = 1 and sigma = t (ei.EDM); got "
                        f"{type(sde).__name__}")
    probe = torch.tensor([sde.t_min, sde.t_max], dtype=torch.float64)
    if sde.t0 != 0 or not (torch.allclose(sde.alpha(probe), torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-12)
                           and torch.allclose(sde.sigma(probe), probe, rtol=1e-12, atol=0)):
        raise ValueError("sde must be a VE process with alpha = 1, sigma = t and t0 = 0 (ei.EDM): the sigmas are its "
                         "times")
    if float(sigmas[0]) > sde.t_max:
        raise ValueError(f"sigmas start at {float(sigmas[0]):g}, above the sde's t_max = {sde.t_max:g}")
    return sde


def run(method: str | Method, model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor | Sequence[float],
        extra_args: dict[str, Any] | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
        disable: bool | None = None, *, sde: LinearSDE | None = None, generator: torch.Generator | None = None,
        lam: float | None = None, eta: float | None = None) -> torch.Tensor:
    """Sample with ``method`` from ``x`` at ``sigmas[0]`` along ``sigmas`` (module docstring); ``sde`` is the VE
    process (default: :func:`ve_process` of the sigmas; EMS needs the one its statistics were estimated for);
    ``generator``, ``lam``, ``eta`` for stochastic DDIM (noise from the global RNG without a generator)."""
    from .sampling import solve

    chosen = get_integrator(method)
    if not isinstance(chosen, Integrator):
        raise ValueError(f"{chosen.name!r} chooses its own steps; a k-diffusion sampler runs on the given sigmas "
                         f"(fixed-grid methods only)")
    s = check_sigmas(sigmas)
    if isinstance(chosen, EMSAdams) and sde is None:
        raise ValueError(f"{chosen.name}: pass sde=, the ei.EDM its statistics were estimated for (the sigmas must "
                         f"lie in its window)")
    sde = ve_process(s) if sde is None else _check_sde(sde, s)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor; got {type(x).__name__}")
    kwargs = dict(extra_args or {})
    grid = s
    if s[-1] == 0 and float(plan_for(chosen.for_nfe(None, len(s) - 1), sde, s).eval_times.min()) <= 0.0:
        grid = s[:-1]  # a stage at sigma = 0 (Runge-Kutta): the last step is x = denoised, from the last sigma > 0
    steps = len(grid) - 1
    plan = plan_for(chosen.for_nfe(None, steps), sde, grid) if steps else None
    if isinstance(plan, RungeKuttaPlan):
        starts = [0]
        for stages in plan.stage_psi:
            starts.append(starts[-1] + len(stages))
        first_eval = {k: i for i, k in enumerate(starts[:-1])}
    else:
        first_eval = {i: i for i in range(steps)}
    sig = s.tolist()
    count = [0]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(s) - 1, disable=disable)

    def denoise(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model(y, t, **kwargs)
        i = first_eval.get(count[0])
        count[0] += 1
        if callback is not None and i is not None:
            sigma = torch.as_tensor(sig[i], dtype=s.dtype)
            callback({"x": y, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": out})
        return out

    try:
        if steps:
            x = solve(denoise, x, sde, method=chosen, grid=grid, prediction="x0", generator=generator, lam=lam,
                      eta=eta, callback=lambda i, t, state: bar.update(1)).x
        if steps < len(s) - 1:  # the step into sigma = 0 from the last nonzero sigma: x0 frozen, x = denoised
            i = len(s) - 2
            t = x.new_full((x.shape[0],), sig[i])
            out = model(x, t, **kwargs)
            if callback is not None:
                sigma = torch.as_tensor(sig[i], dtype=s.dtype)
                callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": out})
            x = out
            bar.update(1)
    finally:
        bar.close()
    return x


def sampler(method: str | Method, *, sde: LinearSDE | None = None, **options: Any) -> KSampler:
    """A k-diffusion sampler function running ``method`` (a registered name or alias, or a method object such as
    an :class:`~ei_toolkit.EMSAdams`); ``sde`` and ``options`` (``generator``, ``lam``, ``eta``) go to :func:`run`."""
    chosen = get_integrator(method)
    if not isinstance(chosen, Integrator):
        raise ValueError(f"{chosen.name!r} chooses its own steps; a k-diffusion sampler runs on the given sigmas "
                         f"(fixed-grid methods only)")
    unknown = set(options) - {"generator", "lam", "eta"}
    if unknown:
        raise TypeError(f"unknown sampler options {sorted(unknown)}; valid: generator, lam, eta")

    def sample_fn(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict[str, Any] | None = None,
                  callback: Callable[[dict[str, Any]], None] | None = None, disable: bool | None = None
                  ) -> torch.Tensor:
        return run(chosen, model, x, sigmas, extra_args, callback, disable, sde=sde, **options)

    label = method if isinstance(method, str) else chosen.name
    sample_fn.__name__ = sample_fn.__qualname__ = "sample_" + _identifier(label)
    sample_fn.__doc__ = (f"ei_toolkit's {chosen.name} as a k-diffusion sampler (ei_toolkit.k_samplers): "
                         "sampler(model, x, sigmas, extra_args=None, callback=None, disable=None).")
    return sample_fn


def _identifier(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def _build() -> dict[str, KSampler]:
    names = [n for n, m in INTEGRATORS.items() if isinstance(m, Integrator)] + list(ALIASES)
    return {_identifier(n): sampler(n) for n in names}


SAMPLERS: dict[str, KSampler] = _build()
"""``sample_<name>`` by name (``-`` and other non-identifier characters as ``_``): every registered fixed-grid
method (stochastic DDIM ``sddim`` included) and every alias of :data:`ei_toolkit.integrators.ALIASES`."""


def __getattr__(name: str) -> KSampler:
    # ei.k_samplers.sample_dpmpp_2m, sample_x0_logrhoab1_mid, ... (methods registered later included)
    key = name.removeprefix("sample_")
    if name.startswith("sample_"):
        if key in SAMPLERS:
            return SAMPLERS[key]
        named = [n for n, m in INTEGRATORS.items() if isinstance(m, Integrator)] + list(ALIASES)
        match = next((n for n in named if _identifier(n) == key), None)
        if match is not None:
            return sampler(match)
    raise AttributeError(f"module 'ei_toolkit.k_samplers' has no attribute {name!r}")


__all__ = ["SAMPLERS", "KSampler", "check_sigmas", "run", "sampler", "ve_process"]
