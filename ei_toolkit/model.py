"""Diffusion models as the integrators see them: what a model predicts, its conversion to eps and to the data
prediction x0, x0 thresholding, and :class:`ModelEvaluator`, which calls a model, checks what it returns and
converts it (docs/math.md section 7).

A model is any callable ``model(x, t)``: ``x`` a batch (batch first), ``t`` a 1-D tensor of the batch size in
the SDE's own time units; it returns a tensor shaped like ``x`` holding eps, x0, v, the score or, for rectified flow
(:class:`~ei_toolkit.RectifiedFlow`), the velocity ``flow``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .errors import NumericalError

if TYPE_CHECKING:
    pass

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PREDICTIONS = ("eps", "x0", "v", "score", "flow")
TARGETS = ("eps", "x0")  # what an integrator consumes
Scalar = torch.Tensor | float


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")
    return prediction


def check_flow_sde(sde: Any, times: torch.Tensor | None = None) -> None:
    """prediction='flow' (the velocity z - x0 of rectified flow) needs alpha + sigma = 1 at the evaluation times."""
    if getattr(sde, "is_matrix", False):
        raise ValueError("prediction='flow' needs a scalar SDE with alpha + sigma = 1 (ei.RectifiedFlow())")
    if times is None or not len(times):
        return
    t = times.to(torch.float64)
    a, s = sde.alpha_sigma(t) if hasattr(sde, "alpha_sigma") else (sde.alpha(t), sde.sigma(t))
    if not bool(((a + s - 1).abs() <= 1e-9).all()):
        raise ValueError("prediction='flow' (the velocity dx/dt = z - x0 of a flow-matching model) needs the "
                         "rectified-flow path alpha = 1 - t, sigma = t: use ei.RectifiedFlow()")


def to_eps(prediction: str, out: torch.Tensor, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
    """eps from a model output (docs/math.md section 7): x = alpha x0 + sigma eps."""
    if prediction == "eps":
        return out
    if prediction == "x0":
        return (x - alpha * out) / sigma
    if prediction == "score":
        return out * -sigma
    if prediction == "v":  # v = alpha eps - sigma x0 with alpha^2 + sigma^2 = 1
        return out * alpha + x * sigma
    if prediction == "flow":  # velocity u = eps - x0 with alpha + sigma = 1 (rectified flow): eps = x + alpha u
        return x + out * alpha
    raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def to_x0(prediction: str, out: torch.Tensor, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> torch.Tensor:
    """The data prediction x0 from a model output (docs/math.md section 7)."""
    if prediction == "x0":
        return out
    if prediction == "eps":
        return (x - sigma * out) / alpha
    if prediction == "score":
        return (x + (sigma * sigma) * out) / alpha
    if prediction == "v":
        return x * alpha - out * sigma
    if prediction == "flow":  # x0 = x - sigma u (Liu et al. 2023; diffusers' flow_prediction)
        return x - out * sigma
    raise ValueError(f"unknown prediction {prediction!r}; valid: {', '.join(PREDICTIONS)}")


def threshold_x0(x0: torch.Tensor, clip: float | None = None, dynamic: float | None = None,
                 max_value: float = 1.0) -> torch.Tensor:
    """Clamp x0 to [-clip, clip]; or, with ``dynamic`` = a percentile p in (0, 1), per sample
    s = max(max_value, quantile(|x0|, p)), x0 -> clamp(x0, -s, s) * max_value / s (Saharia et al., "Imagen",
    2022: dynamic thresholding)."""
    if dynamic is not None:
        flat = x0.reshape(x0.shape[0], -1).abs().float()
        s = torch.quantile(flat, dynamic, dim=1).clamp_min(max_value).to(x0.dtype)
        s = s.view(-1, *([1] * (x0.ndim - 1)))
        x0 = torch.maximum(torch.minimum(x0, s), -s) * (max_value / s)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    return x0


def check_threshold_args(clip_x0: float | None, dynamic_threshold: float | None) -> None:
    if clip_x0 is not None and (isinstance(clip_x0, bool) or not isinstance(clip_x0, (int, float))
                                or not clip_x0 > 0):
        raise ValueError(f"clip_x0 must be a positive number; got {clip_x0!r}")
    if dynamic_threshold is not None and (isinstance(dynamic_threshold, bool)
                                          or not isinstance(dynamic_threshold, (int, float))
                                          or not 0 < dynamic_threshold < 1):
        raise ValueError(f"dynamic_threshold must be a percentile in (0, 1), e.g. 0.995; got {dynamic_threshold!r}")


_TIMES: OrderedDict[tuple, tuple] = OrderedDict()
_TIMES_SIZE = 64


def _times_on(sde: Any, times: torch.Tensor, device: torch.device, dtype: torch.dtype) -> tuple:
    """Per (SDE, times, device, dtype), by value: the times on the device (one host-to-device copy, reused by every
    sampling run) and alpha, sigma there as Python floats (None for matrix SDEs)."""
    key = (sde.key, times.numpy().tobytes(), device, dtype)
    hit = _TIMES.get(key)
    if hit is not None:
        _TIMES.move_to_end(key)
        return hit
    if getattr(sde, "is_matrix", False):
        a = s = None
        vp = False
    else:
        at, st = sde.alpha(times), sde.sigma(times)
        a, s = at.tolist(), st.tolist()
        vp = bool(torch.allclose(at * at + st * st, torch.ones_like(at), atol=1e-6))
    hit = (times.to(device=device, dtype=dtype), a, s, vp)
    _TIMES[key] = hit
    if len(_TIMES) > _TIMES_SIZE:
        _TIMES.popitem(last=False)
    return hit


class ModelEvaluator:
    """Calls ``model(x, t)``, checks its output (shape, dtype, finite values) and converts it to what an integrator
    consumes: eps, or the data prediction x0 (docs/math.md section 7), with optional x0 clipping / dynamic
    thresholding. Counts evaluations in :attr:`nfe`.

    ``model_dtype`` is the dtype the model is called with (default: the state's); the state itself may be kept in a
    wider working precision, and the model's output is cast back to it.

    Two ways to call it: :meth:`bind` prepares the evaluation times of a plan once and returns ``eps_fn(x, k)``
    (no host-device synchronisation per call on a GPU: non-finite outputs are collected on the device and
    reported by :meth:`check` after the loop); ``evaluator(x, t)`` evaluates at any time, for black-box solvers.
    """

    def __init__(self, model: Model, sde: Any, prediction: str = "eps", *, clip_x0: float | None = None,
                 dynamic_threshold: float | None = None, model_dtype: torch.dtype | None = None) -> None:
        if not callable(model):
            raise TypeError("model must be callable as model(x, t)")
        check_prediction(prediction)
        check_threshold_args(clip_x0, dynamic_threshold)
        if getattr(sde, "is_matrix", False) and (prediction != "eps" or clip_x0 is not None
                                                 or dynamic_threshold is not None):
            raise ValueError(f"matrix SDEs take eps-models (eps = -R_t^T score) without x0 thresholding; got "
                             f"prediction={prediction!r}, clip_x0={clip_x0!r}, dynamic_threshold={dynamic_threshold!r}")
        if prediction == "flow":
            check_flow_sde(sde, torch.tensor([sde.t_min, sde.t_max], dtype=torch.float64))
        self.model, self.sde, self.prediction = model, sde, prediction
        self.clip_x0, self.dynamic_threshold = clip_x0, dynamic_threshold
        self.model_dtype = model_dtype
        self.nfe = 0
        self._pending: list[tuple[torch.Tensor, int]] = []
        self._times: torch.Tensor | None = None

    # -- one evaluation ---------------------------------------------------------------------------------------

    def _call(self, x: torch.Tensor, t: torch.Tensor, where: float | int) -> torch.Tensor:
        """The checked raw model output in x's dtype. ``where`` is the time (a float), or the index of the time in
        the bound times (an int); on a GPU the finiteness check is deferred to :meth:`check`."""
        model_dtype = self.model_dtype or x.dtype
        out = self.model(x if x.dtype == model_dtype else x.to(model_dtype), t)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model must return a tensor; got {type(out).__name__}")
        if out.shape != x.shape:
            raise ValueError(f"the model returned shape {tuple(out.shape)}; expected {tuple(x.shape)} (the shape of x)")
        if out.dtype != model_dtype:
            raise TypeError(f"the model returned dtype {out.dtype}; expected {model_dtype} (the dtype it was called "
                            "with)")
        self.nfe += 1
        # One reduction instead of an element-wise isfinite: any NaN or inf makes the sum non-finite (accumulated
        # in at least float32, so a large finite half-precision output does not overflow).
        total = out.sum(dtype=torch.float64 if out.dtype == torch.float64 else torch.float32)
        if x.device.type == "cpu":
            if not math.isfinite(total.item()) and not bool(torch.isfinite(out).all()):  # not an overflow of the sum
                self._raise(self.nfe - 1, where)
        else:
            self._pending.append((total, where))
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def _convert(self, out: torch.Tensor, x: torch.Tensor, a: Scalar | None, s: Scalar | None,
                 target: str) -> torch.Tensor:
        if a is None:  # matrix SDE: eps-models only
            return out
        if self.clip_x0 is None and self.dynamic_threshold is None:
            return (to_eps if target == "eps" else to_x0)(self.prediction, out, x, a, s)
        x0 = threshold_x0(to_x0(self.prediction, out, x, a, s), self.clip_x0, self.dynamic_threshold)
        return x0 if target == "x0" else (x - a * x0) / s

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, target: str = "eps", *,
                 alpha: float | None = None, sigma: float | None = None) -> torch.Tensor:
        """eps (or x0) at time ``t`` (a float or a 0-d / 1-element tensor; float64 coefficients). ``alpha`` and
        ``sigma`` at t may be passed by a caller that has them."""
        tt = float(t.detach()) if isinstance(t, torch.Tensor) else float(t)
        tb = torch.full((x.shape[0],), tt, dtype=_time_dtype(x.dtype), device=x.device)
        out = self._call(x, tb, tt)
        if getattr(self.sde, "is_matrix", False):
            return out
        if self.prediction == target and self.clip_x0 is None and self.dynamic_threshold is None:
            return out
        if alpha is None or sigma is None:
            t64 = torch.tensor(tt, dtype=torch.float64)
            alpha, sigma = float(self.sde.alpha(t64)), float(self.sde.sigma(t64))
        return self._convert(out, x, alpha, sigma, target)

    # -- at a plan's evaluation times ---------------------------------------------------------------------------

    def bind(self, times: torch.Tensor, x: torch.Tensor, target: str = "eps") -> Callable[[torch.Tensor, int],
                                                                                          torch.Tensor]:
        """``eps_fn(x, k)``: the model's eps (or x0, per ``target``) at ``times[k]``, for a plan's run."""
        if target not in TARGETS:
            raise ValueError(f"target must be one of {', '.join(TARGETS)}; got {target!r}")
        t_dev, alpha, sigma, vp = _times_on(self.sde, times, x.device, _time_dtype(x.dtype))
        if self.prediction == "v" and not vp:
            raise ValueError("prediction='v' needs a variance-preserving SDE (alpha^2 + sigma^2 = 1)")
        if self.prediction == "flow":
            check_flow_sde(self.sde, times)
        batch = x.shape[0]
        plain = alpha is None or (self.prediction == target and self.clip_x0 is None
                                  and self.dynamic_threshold is None)

        t_batch = [t_dev[k].expand(batch) for k in range(len(t_dev))]  # views, made once per run

        def eps_fn(y: torch.Tensor, k: int) -> torch.Tensor:
            out = self._call(y, t_batch[k], k)
            if plain:
                return out
            return self._convert(out, y, alpha[k], sigma[k], target)

        self._times = times
        return eps_fn

    def _raise(self, k: int, where: float | int) -> None:
        if isinstance(where, int) and self._times is not None:
            where = float(self._times[where])
        at = f" (t = {where:.6g})" if isinstance(where, float) else ""
        raise NumericalError(f"the model output is not finite at evaluation {k}{at}")

    def check(self) -> None:
        """Report a non-finite model output collected on the device (one synchronisation, after the loop)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        flags = torch.isfinite(torch.stack([p[0] for p in pending])).cpu()
        if not bool(flags.all()):
            k = int((~flags).nonzero()[0])
            self._raise(self.nfe - len(pending) + k, pending[k][1])


def _time_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32
