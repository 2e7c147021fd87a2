"""Other libraries' samplers (diffusers, k-diffusion), driven on the same SDE and model as ours, as peers for
the accuracy harness :func:`ei_toolkit.compare.run_comparison`.

Benchmark code, not part of the installed package: ``load_k_diffusion_sampling`` may register stand-in
torchvision modules in ``sys.modules``, which a library must never do. Both libraries are imported lazily
(``pip install -e .[bench]`` and ``pip install --no-deps k-diffusion``). Each peer follows the harness's
contract ``peer(model, x, sde, nfe) -> (x_end, t_end, nfe_used)`` and needs a
:class:`~ei_toolkit.DiscreteVP` schedule (diffusers takes its betas); ``t_end`` is read off the sampler's
final noise level.

Import from a script in this folder with ``from peers import available_peers``; from elsewhere, put this
folder on ``sys.path`` first.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch

from ei_toolkit import DiscreteVP, LinearSDE
from ei_toolkit.compare import Model, Peer


def _check(sde: LinearSDE) -> DiscreteVP:
    if not isinstance(sde, DiscreteVP):
        raise TypeError(f"the diffusers / k-diffusion peers need a DiscreteVP schedule, not {type(sde).__name__}")
    return sde


def _ddpm_config(sde: DiscreteVP) -> dict[str, object]:
    return {"num_train_timesteps": sde.num_timesteps, "trained_betas": sde.betas.double().numpy().tolist()}


def _diffusers_peer(cls_name: str, **config: object) -> Peer:
    def run(model: Model, x: torch.Tensor, sde: LinearSDE, nfe: int) -> tuple[torch.Tensor, float, int]:
        import diffusers

        sde = _check(sde)
        sched = getattr(diffusers, cls_name)(**_ddpm_config(sde), **config)
        sched.set_timesteps(nfe)
        x = x * sched.init_noise_sigma
        used = 0
        for t in sched.timesteps:
            tb = torch.full((x.shape[0],), float(t), dtype=x.dtype)
            out = model(sched.scale_model_input(x, t), tb)
            used += 1
            x = sched.step(out, t, x).prev_sample
        return x, _end_time(sched, sde), used

    run.__name__ = cls_name
    return run


def _end_time(sched: object, sde: DiscreteVP) -> float:
    """The time a diffusers scheduler ends at: its final sigma, or DDIM's final alpha."""
    sigmas = getattr(sched, "sigmas", None)
    if sigmas is not None and len(sigmas) == len(sched.timesteps) + 1:
        rho = float(sigmas[-1])
    else:  # DDIM: the last step lands on final_alpha_cumprod
        a = float(sched.final_alpha_cumprod)
        rho = ((1 - a) / a) ** 0.5
    return float(sde.t_of_rho(torch.tensor(max(rho, sde.rho_min), dtype=torch.float64)))


def load_k_diffusion_sampling() -> types.ModuleType:
    """k_diffusion.sampling without the package's __init__ (which imports models, torchvision, wandb...).

    k_diffusion.utils imports torchvision's functional transforms only for image helpers that the samplers
    never call; where torchvision cannot be imported (the CPU torch here has no matching torchvision), empty
    stand-in modules are registered in ``sys.modules`` for that one import.
    """
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: pip install --no-deps k-diffusion")
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:
        for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
            sys.modules.setdefault(name, types.ModuleType(name))
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(Path(p)) for p in spec.submodule_search_locations]
    sys.modules.setdefault("k_diffusion", pkg)
    return importlib.import_module("k_diffusion.sampling")


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, p: float = 7.0) -> torch.Tensor:
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min``, uniform in sigma^(1/p) (Karras et al. 2022,
    eq. 5), in float64 and without k-diffusion's appended zero. Built here rather than with
    ``k_diffusion.sampling.get_sigmas_karras``, which computes in torch's default dtype."""
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / p), sigma_max ** (1 / p)
    return (hi + ramp * (lo - hi)) ** p


def _k_diffusion_peer(fn_name: str, evals_per_step: int) -> Peer:
    def run(model: Model, x: torch.Tensor, sde: LinearSDE, nfe: int) -> tuple[torch.Tensor, float, int]:
        sde = _check(sde)
        K = load_k_diffusion_sampling()
        steps = max(1, nfe // evals_per_step)
        # Karras sigmas (p = 7) from rho(t_max) to rho(t_min), no final zero: the sampler ends at t_min.
        sigmas = karras_sigmas(sde.rho_min, sde.rho_max, steps + 1).to(x.dtype)
        used = [0]

        def denoiser(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s = sigma.to(torch.float64).reshape(-1)
            t = sde.t_of_rho(s.clamp(sde.rho_min, sde.rho_max))
            a = sde.alpha(t).to(y.dtype).view(-1, *([1] * (y.ndim - 1)))
            used[0] += 1
            eps = model(a * y, t.to(y.dtype).expand(y.shape[0]))
            return y - s.to(y.dtype).view(-1, *([1] * (y.ndim - 1))) * eps

        y = x / sde.alpha(torch.tensor(sde.t_max, dtype=torch.float64)).item()
        y = getattr(K, fn_name)(denoiser, y, sigmas, disable=True)
        t_end = float(sde.t_of_rho(sigmas[-1].double()))
        return y * sde.alpha(torch.tensor(t_end, dtype=torch.float64)).item(), t_end, used[0]

    run.__name__ = fn_name
    return run


PEERS: dict[str, Peer] = {
    "diffusers DDIM": _diffusers_peer("DDIMScheduler", set_alpha_to_one=False, timestep_spacing="trailing"),
    "diffusers DEIS-2": _diffusers_peer("DEISMultistepScheduler", solver_order=2),
    "diffusers DEIS-3": _diffusers_peer("DEISMultistepScheduler", solver_order=3),
    "diffusers DEIS-2 karras": _diffusers_peer("DEISMultistepScheduler", solver_order=2, use_karras_sigmas=True),
    "diffusers DEIS-3 karras": _diffusers_peer("DEISMultistepScheduler", solver_order=3, use_karras_sigmas=True),
    "diffusers DPM++2M": _diffusers_peer("DPMSolverMultistepScheduler", solver_order=2, final_sigmas_type="sigma_min"),
    "diffusers DPM++3M": _diffusers_peer("DPMSolverMultistepScheduler", solver_order=3, final_sigmas_type="sigma_min"),
    "diffusers DPM++2M karras": _diffusers_peer("DPMSolverMultistepScheduler", solver_order=2,
                                                final_sigmas_type="sigma_min", use_karras_sigmas=True),
    "diffusers DPM++3M karras": _diffusers_peer("DPMSolverMultistepScheduler", solver_order=3,
                                                final_sigmas_type="sigma_min", use_karras_sigmas=True),
    "diffusers UniPC": _diffusers_peer("UniPCMultistepScheduler", final_sigmas_type="sigma_min"),
    "diffusers UniPC karras": _diffusers_peer("UniPCMultistepScheduler", final_sigmas_type="sigma_min",
                                              use_karras_sigmas=True),
    "k-diffusion euler": _k_diffusion_peer("sample_euler", 1),
    "k-diffusion heun": _k_diffusion_peer("sample_heun", 2),
    "k-diffusion lms": _k_diffusion_peer("sample_lms", 1),
    "k-diffusion dpmpp_2m": _k_diffusion_peer("sample_dpmpp_2m", 1),
}


def available_peers() -> dict[str, Peer]:
    """The peers whose library can be imported here."""
    out = {}
    try:
        import diffusers  # noqa: F401

        out.update({k: v for k, v in PEERS.items() if k.startswith("diffusers")})
    except ImportError:
        pass
    try:
        load_k_diffusion_sampling()
        out.update({k: v for k, v in PEERS.items() if k.startswith("k-diffusion")})
    except Exception:
        pass
    return out
