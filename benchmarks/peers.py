"""Other libraries' samplers (diffusers, k-diffusion), driven on the same SDE and model as ours, as peers for the
accuracy harnesses (:func:`ei_toolkit.compare.run_comparison`, ``bench_accuracy.py``, ``bench_guided.py``).

Each peer follows the harness's contract ``peer(model, x, sde, nfe) -> (x_end, t_end, nfe_used)``: ``model(x, t)``
is an eps-model of ``sde`` (any scalar :class:`~ei_toolkit.LinearSDE`), ``x`` the state at ``sde.t_max``; the peer
integrates to ``sde.t_min`` and returns where it stopped, that time, and the number of model calls it made (counted
by the wrapper around ``model``, not taken from the library).

**diffusers** (DPM-Solver++ multistep 2M/3M and singlestep 2S/3S, UniPC bh1/bh2; Lu et al. 2022, Zhao et al. 2023)
is driven on the grids of the official DPM-Solver code (``skip_type``): ``time-uniform``, ``time-quadratic`` and
``logSNR`` (uniform in lambda = -log rho), plus Karras sigmas. The official code is not a pip package; its grids
are rebuilt here from its definitions, in the SDE's continuous time (for a DiscreteVP, the official discrete-time
wrapper's t = (n + 1) / N is our quadratic_t's offset t0 = -1). A scheduler only knows the VP form
x = alpha x0 + sigma eps with alpha = 1 / sqrt(1 + s^2), sigma = s alpha (its ``sigmas`` are our rho), so any
linear SDE is driven in the rescaled state x / sqrt(alpha^2 + sigma^2), whose probability-flow ODE is the same
dy/drho = eps (docs/math.md section 3): the wrapper rescales, looks up t(rho) and calls the model. After
``set_timesteps`` the scheduler's ``sigmas`` (float64) and ``timesteps`` are replaced by the grid, and
``set_begin_index(0)`` starts its step counter; the grid ends at rho(t_min) ("sigma_min"), never at 0.
Singlestep solvers follow the official step structure: the NFE is split into steps of order 3 (or 2), the last
one or two of lower order (DPM-Solver's ``singlestep`` orders), the outer points are the grid's at the cumulative
orders (``logSNR``: a logSNR grid with as many points as steps), and the inner stages sit at lambda fractions
1/2 (2S) and 1/3, 2/3 (3S); the scheduler's ``order_list`` is set to match. Precision: the states are float64 and
so are the sigmas; ``DPMSolverMultistepScheduler.step`` casts the state to float32 for its update (the other two
schedulers do not), a relative rounding of ~1e-7 per step, far below the errors compared.

**k-diffusion** (lms, dpmpp_2m, dpmpp_3m_sde with eta = 0, heun, euler) runs in its own frame y = x / alpha,
sigma = rho, on Karras sigmas (p = 7) from rho(t_max) to rho(t_min) without the final zero, in float64.

Benchmark code, not part of the installed package: ``load_k_diffusion_sampling`` may register stand-in torchvision
modules in ``sys.modules``, which a library must never do. Both libraries are imported lazily (``pip install -e
.[bench]`` and ``pip install --no-deps k-diffusion``). Import from a script in this folder with ``from peers import
available_peers``; from elsewhere, put this folder on ``sys.path`` first.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path

import torch

from ei_toolkit import LinearSDE, time_grid
from ei_toolkit.compare import Model, Peer

# The official DPM-Solver skip types (and Karras sigmas) as grids of ei_toolkit.GRIDS.
PEER_GRIDS = {"time-uniform": "uniform_t", "time-quadratic": "quadratic_t", "logSNR": "uniform_logrho",
              "karras": "karras"}


def _check(sde: LinearSDE) -> LinearSDE:
    if not isinstance(sde, LinearSDE):
        raise TypeError(f"the peers need a scalar ei_toolkit.LinearSDE; got {type(sde).__name__}")
    return sde


def _f64(v: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


def singlestep_orders(nfe: int, order: int) -> list[int]:
    """The orders of the steps of official DPM-Solver's singlestep schedule for ``nfe`` evaluations (sum = nfe):
    order-``order`` steps, the last one or two of lower order."""
    if order == 3:
        k = nfe // 3 + 1
        if nfe % 3 == 0:
            return [3] * (k - 2) + [2, 1]
        return [3] * (k - 1) + [nfe % 3]
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    if order == 1:
        return [1] * nfe
    raise ValueError(f"order must be 1, 2 or 3; got {order}")


def singlestep_times(sde: LinearSDE, grid: str, nfe: int, order: int) -> tuple[torch.Tensor, list[int]]:
    """(the nfe + 1 times at which a singlestep DPM-Solver evaluates, ending at t_min; diffusers' order list)."""
    orders = [o for o in singlestep_orders(nfe, order) if o > 0]
    t0, t1 = sde.t_max, sde.t_min
    if PEER_GRIDS[grid] == "uniform_logrho":
        outer = time_grid(sde, "uniform_logrho", len(orders), t0, t1)
    else:
        full = time_grid(sde, PEER_GRIDS[grid], nfe, t0, t1)
        idx = torch.cumsum(torch.tensor([0, *orders]), 0)
        outer = full[idx]
    lr = sde.rho(outer).log()
    times, order_list = [], []
    for i, o in enumerate(orders):
        times.append(outer[i])
        fracs = [0.5] if o == 2 else [1 / 3, 2 / 3] if o == 3 else []
        for r in fracs:
            times.append(sde.t_of_rho((lr[i] + r * (lr[i + 1] - lr[i])).exp()))
        order_list += list(range(1, o + 1))
    times.append(outer[-1])
    return torch.stack([_f64(t) for t in times]), order_list


class _Counted:
    """eps of the model at (scheduler state, rho), the state rescaled to the SDE's own frame; counts calls."""

    def __init__(self, model: Model, sde: LinearSDE) -> None:
        self.model, self.sde, self.calls = model, sde, 0

    def scale(self, t: torch.Tensor) -> float:
        """sqrt(alpha^2 + sigma^2) at t: x = scale * (the scheduler's VP-form state)."""
        return float(torch.hypot(self.sde.alpha(t), self.sde.sigma(t)))

    def __call__(self, x_vp: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        tb = t.to(x_vp.dtype).expand(x_vp.shape[0])
        return self.model(x_vp * self.scale(t), tb)


def diffusers_peer(cls_name: str, grid: str, order: int, **config: object) -> Peer:
    """A diffusers multistep or singlestep scheduler ``cls_name`` of ``order`` on the grid ``grid`` (a key of
    :data:`PEER_GRIDS`), with ``config`` passed to the scheduler (see the module docstring)."""
    if grid not in PEER_GRIDS:
        raise ValueError(f"unknown peer grid {grid!r}; valid: {', '.join(PEER_GRIDS)}")
    single = "Singlestep" in cls_name

    def run(model: Model, x: torch.Tensor, sde: LinearSDE, nfe: int) -> tuple[torch.Tensor, float, int]:
        import diffusers

        sde = _check(sde)
        if single:
            times, order_list = singlestep_times(sde, grid, nfe, order)
        else:
            times = time_grid(sde, PEER_GRIDS[grid], nfe, sde.t_max, sde.t_min)
        sched = getattr(diffusers, cls_name)(solver_order=order, **{"final_sigmas_type": "sigma_min", **config})
        sched.set_timesteps(nfe)
        sched.sigmas = sde.rho(times).to(torch.float64)
        sched.timesteps = times[:-1].clone()
        sched.num_inference_steps = nfe
        if single:
            sched.order_list = order_list
        sched.set_begin_index(0)
        f = _Counted(model, sde)
        y = x.double() / f.scale(times[0])
        for i in range(nfe):
            eps = f(y, times[i])
            y = sched.step(eps, sched.timesteps[i], y).prev_sample
        if f.calls != nfe:
            raise AssertionError(f"{cls_name}: {f.calls} model calls for nfe={nfe}")
        return (y * f.scale(times[-1])).to(x.dtype), float(times[-1]), f.calls

    run.__name__ = f"{cls_name}_{grid}"
    return run


def load_k_diffusion_sampling() -> types.ModuleType:
    """k_diffusion.sampling without the package's __init__ (which imports models, torchvision, wandb...).

    k_diffusion.utils imports torchvision's functional transforms only for image helpers that the samplers
    never call; where torchvision cannot be imported (the CPU torch here has no matching torchvision), empty
    stand-in modules are registered in ``sys.modules`` for that one import and removed after it: left there, a
    stand-in without ``__spec__`` made every later ``importlib.util.find_spec("torchvision")`` raise (diffusers'
    availability check does it), so a diffusers test failed after a k-diffusion one in the same process.
    """
    if "k_diffusion.sampling" in sys.modules:
        return sys.modules["k_diffusion.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: pip install --no-deps k-diffusion")
    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    added: list[str] = []
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:
        for name in names:
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]  # type: ignore[attr-defined]
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(Path(p)) for p in spec.submodule_search_locations]
    sys.modules.setdefault("k_diffusion", pkg)
    try:
        return importlib.import_module("k_diffusion.sampling")
    finally:
        for name in added:  # k_diffusion.utils keeps its reference; nothing else sees a stand-in
            sys.modules.pop(name, None)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, p: float = 7.0) -> torch.Tensor:
    """``n`` noise levels from ``sigma_max`` down to ``sigma_min``, uniform in sigma^(1/p) (Karras et al. 2022,
    eq. 5), in float64 and without k-diffusion's appended zero. Built here rather than with
    ``k_diffusion.sampling.get_sigmas_karras``, which computes in torch's default dtype."""
    ramp = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / p), sigma_max ** (1 / p)
    return (hi + ramp * (lo - hi)) ** p


def k_diffusion_peer(fn_name: str, evals_per_step: int, **kwargs: object) -> Peer:
    """k-diffusion's ``sample_<fn_name>`` on Karras sigmas (``kwargs`` go to the sampler)."""

    def run(model: Model, x: torch.Tensor, sde: LinearSDE, nfe: int) -> tuple[torch.Tensor, float, int]:
        sde = _check(sde)
        K = load_k_diffusion_sampling()
        steps = max(1, nfe // evals_per_step)
        sigmas = karras_sigmas(sde.rho_min, sde.rho_max, steps + 1).to(x.dtype)
        used = [0]

        def denoiser(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s = sigma.to(torch.float64).reshape(-1)
            t = sde.t_of_rho(s.clamp(sde.rho_min, sde.rho_max))
            a = sde.alpha(t).to(y.dtype).view(-1, *([1] * (y.ndim - 1)))
            used[0] += 1
            eps = model(a * y, t.to(y.dtype).expand(y.shape[0]))
            return y - s.to(y.dtype).view(-1, *([1] * (y.ndim - 1))) * eps

        extra: dict[str, object] = dict(kwargs)
        if fn_name.endswith("_sde"):  # eta = 0: deterministic; no Brownian tree needed
            extra.setdefault("noise_sampler", lambda s, t: torch.zeros_like(x))
        y = x / sde.alpha(_f64(sde.t_max)).item()
        y = getattr(K, f"sample_{fn_name}")(denoiser, y, sigmas, disable=True, **extra)
        t_end = float(sde.t_of_rho(sigmas[-1].double()))
        return y * sde.alpha(_f64(t_end)).item(), t_end, used[0]

    run.__name__ = fn_name
    return run


# (label, diffusers class, order, config)
DIFFUSERS_SOLVERS: list[tuple[str, str, int, dict[str, object]]] = [
    ("DPM++2M", "DPMSolverMultistepScheduler", 2, {"algorithm_type": "dpmsolver++"}),
    ("DPM++3M", "DPMSolverMultistepScheduler", 3, {"algorithm_type": "dpmsolver++"}),
    ("DPM++2S", "DPMSolverSinglestepScheduler", 2, {"algorithm_type": "dpmsolver++", "lower_order_final": True}),
    ("DPM++3S", "DPMSolverSinglestepScheduler", 3, {"algorithm_type": "dpmsolver++", "lower_order_final": True}),
    ("UniPC-bh1-2", "UniPCMultistepScheduler", 2, {"solver_type": "bh1"}),
    ("UniPC-bh1-3", "UniPCMultistepScheduler", 3, {"solver_type": "bh1"}),
    ("UniPC-bh2-2", "UniPCMultistepScheduler", 2, {"solver_type": "bh2"}),
    ("UniPC-bh2-3", "UniPCMultistepScheduler", 3, {"solver_type": "bh2"}),
]
K_DIFFUSION_SOLVERS: list[tuple[str, str, int, dict[str, object]]] = [
    ("lms", "lms", 1, {}),
    ("dpmpp_2m", "dpmpp_2m", 1, {}),
    ("dpmpp_3m_sde eta=0", "dpmpp_3m_sde", 1, {"eta": 0.0}),
    ("heun", "heun", 2, {}),
    ("euler", "euler", 1, {}),
]


def _build() -> dict[str, Peer]:
    peers: dict[str, Peer] = {}
    for label, cls, order, cfg in DIFFUSERS_SOLVERS:
        for grid in PEER_GRIDS:
            peers[f"diffusers {label} / {grid}"] = diffusers_peer(cls, grid, order, **cfg)
    for label, fn, evals, kw in K_DIFFUSION_SOLVERS:
        peers[f"k-diffusion {label} / karras"] = k_diffusion_peer(fn, evals, **kw)
    return peers


PEERS: dict[str, Peer] = _build()


def available_peers(select: Callable[[str], bool] | None = None) -> dict[str, Peer]:
    """The peers whose library can be imported here (those whose name passes ``select``, if given)."""
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
    return {k: v for k, v in out.items() if select is None or select(k)}

