"""Other libraries' samplers, driven on the same SDE and model for side-by-side accuracy comparisons.

Optional: diffusers and k-diffusion are imported lazily (``pip install ei_toolkit[bench]`` and
``pip install --no-deps k-diffusion``). Each peer is a function ``peer(model, x, sde, nfe)`` on a
:class:`~ei_toolkit.DiscreteVP` schedule that returns ``(x_end, t_end, nfe_used)``, where ``t_end`` is the
time the sampler actually ends at (read off its final noise level), so that it is compared with the exact
ODE solution at that very time.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path

import torch

from .sde import DiscreteVP

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Peer = Callable[[Model, torch.Tensor, DiscreteVP, int], tuple[torch.Tensor, float, int]]


def _ddpm_config(sde: DiscreteVP) -> dict:
    return {"num_train_timesteps": sde.num_timesteps, "trained_betas": sde.betas.double().numpy().tolist()}


def _diffusers_peer(cls_name: str, **config: object) -> Peer:
    def run(model: Model, x: torch.Tensor, sde: DiscreteVP, nfe: int) -> tuple[torch.Tensor, float, int]:
        import diffusers

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
    never call; where torchvision cannot be imported (the CPU torch file here has no matching torchvision),
    an empty stand-in module is registered for that one import.
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


def _k_diffusion_peer(fn_name: str, evals_per_step: int) -> Peer:
    def run(model: Model, x: torch.Tensor, sde: DiscreteVP, nfe: int) -> tuple[torch.Tensor, float, int]:
        K = load_k_diffusion_sampling()
        steps = max(1, nfe // evals_per_step)
        # Karras sigmas (rho = 7) from rho(t_max) to rho(t_min), without the appended zero: ends at t_min.
        previous = torch.get_default_dtype()
        torch.set_default_dtype(x.dtype if x.dtype == torch.float64 else torch.float32)  # sigmas in x's precision
        try:
            sigmas = K.get_sigmas_karras(steps + 1, sde.rho_min, sde.rho_max, rho=7.0, device="cpu")[:-1]
        finally:
            torch.set_default_dtype(previous)
        sigmas = sigmas.to(x.dtype)
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
