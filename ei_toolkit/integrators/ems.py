"""An exponential integrator whose linear part and extrapolated quantity are fitted to the model: empirical model
statistics (EMS), the idea of DPM-Solver-v3 (Zheng et al. 2023), derived in docs/math.md section 4.11.

In lam = -log rho the probability-flow ODE is dx/dlam = (dlog alpha/dlam) x - sigma eps. For any scalar l(lam),
f = sigma eps - l x gives dx/dlam = (dlog alpha/dlam - l) x - f; if along trajectories f' ~ s f + b (s scalar, b
shaped like one sample), g = e^{-S} f - B with S = int s, B = int e^{-S} b is nearly constant, and

    x_{i+1} = (E_{i+1} / E_i) x_i - E_{i+1} int_{lam_i}^{lam_{i+1}} E^{-1} e^{S} (g + B) dlam,  E = alpha e^{-L},

L = int l. The method interpolates g in lam through the last evaluations (an exponential Adams method, optionally
corrected with the next evaluation as in section 4.8) and integrates the rest exactly for the tabulated l, s, b
(natural cubic splines in lam through the table's nodes). (l, s, b) = (0, dlog sigma/dlam, 0) is the eps form in log
rho, (1, dlog alpha/dlam, 0) the x0 form; :func:`ei_toolkit.model_statistics` estimates them from the model.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..grids import HIGH_DIM, vp_or_logrho
from .base import (
    EpsFn,
    Integrator,
    MultistepPlan,
    NoiseSource,
    PredictorCorrectorPlan,
    SolveRequest,
    StepCallback,
    _flatten,
    combine,
)
from .kernels import half_lambda

STATS_FORMAT = "ei_toolkit-model-statistics"
STATS_VERSION = 3  # 2: a content digest (sha256) and the model's id; 3: the bootstrap error and the shrinkage
READABLE_VERSIONS = (2, 3)
"""Versions :meth:`ModelStatistics.load` reads (a version-2 file: statistics without an error estimate)."""
MAX_NODES = 100_000
"""At most this many nodes of lam in a statistics file."""
MAX_TABLE_ELEMENTS = 1 << 27
"""At most this many elements of b (nodes x one sample's elements; 1 GiB in float64) in a statistics file."""
MAX_STATISTICS_BYTES = MAX_TABLE_ELEMENTS * 8 + 10 * MAX_NODES * 8 + (1 << 20)
"""A statistics file larger than this is refused before it is read."""
_KEYS = {"format", "version", "sde", "samples", "model", "sha256", "lam", "l", "s", "b"}
_ERROR_KEYS = {"bootstrap", "error", "base", "l_std", "s_std", "b_std", "weights"}  # version 3
BASES = ("eps", "x0")
"""The plain forms that :func:`ei_toolkit.model_statistics` shrinks towards: (l, s, b) = (0, dlog sigma/dlam, 0)
and (1, dlog alpha/dlam, 0)."""
_GL_X, _GL_W = np.polynomial.legendre.leggauss(8)


def _sde_tag(sde: Any) -> str:
    return f"{type(sde).__name__}:{hashlib.sha256(repr(sde.key).encode()).hexdigest()[:16]}"


@dataclass(frozen=True, eq=False)
class ModelStatistics:
    """Tables of l, s (scalars) and b (shaped like one sample) on increasing nodes ``lam`` of -log rho, for one SDE
    (``sde``: its class and a digest of its derivation) and one model (``model``: the id of the model they were
    estimated from, :func:`ei_toolkit.grid_opt.model_id`; None if unknown). Made by
    :func:`ei_toolkit.model_statistics`; ``samples`` is the calibration batch size. ``sha256`` is the digest of
    the content (values, shapes, SDE, samples, model, error estimate), kept in the saved file and checked when it is
    loaded; ``digest`` identifies the values alone (plans are cached by it).

    The statistics' own error (docs/math.md section 4.11), None when not estimated: ``bootstrap`` resamples of
    the draws gave ``l_std``, ``s_std`` (per node, of the fitted values before shrinkage) and ``b_std`` (per node,
    the RMS over b's elements); ``error`` is their summary (:func:`ei_toolkit.statistics.relative_error`);
    ``base`` ("eps" or "x0") is the plain form the tables were shrunk towards, with ``weights`` (3, nodes) the
    weights of l, s, b (1: the fitted value, 0: the base value), None if not shrunk."""

    lam: torch.Tensor
    l: torch.Tensor  # noqa: E741 (the paper's name)
    s: torch.Tensor
    b: torch.Tensor
    sde: str
    samples: int
    model: str | None = None
    bootstrap: int = 0
    error: float | None = None
    base: str | None = None
    l_std: torch.Tensor | None = None
    s_std: torch.Tensor | None = None
    b_std: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    sha256: str = field(init=False)
    digest: str = field(init=False)

    def __post_init__(self) -> None:
        lam = torch.as_tensor(self.lam, dtype=torch.float64).flatten()
        k = lam.numel()
        if k < 2 or not bool(torch.isfinite(lam).all()) or not bool((lam[1:] > lam[:-1]).all()):
            raise ValueError("statistics: lam must hold at least 2 finite, increasing values")
        tables = {"l": self.l, "s": self.s}
        for name, v in tables.items():
            v = torch.as_tensor(v, dtype=torch.float64).flatten()
            if v.numel() != k or not bool(torch.isfinite(v).all()):
                raise ValueError(f"statistics: {name} must hold {k} finite values (one per node of lam)")
            object.__setattr__(self, name, v)
        b = torch.as_tensor(self.b, dtype=torch.float64)
        if b.ndim < 2 or b.shape[0] != k or not bool(torch.isfinite(b).all()):
            raise ValueError(f"statistics: b must be finite, shaped ({k}, *sample shape)")
        if not isinstance(self.sde, str) or (self.model is not None and (not isinstance(self.model, str)
                                                                         or not self.model)):
            raise ValueError("statistics: sde must be a string and model a non-empty string or None")
        object.__setattr__(self, "lam", lam)
        object.__setattr__(self, "b", b.contiguous())
        object.__setattr__(self, "samples", int(self.samples))
        self._check_error(k)
        values, sha = _digests(self.lam, self.l, self.s, self.b, self.sde, self.samples, self.model,
                               self._error_fields())
        object.__setattr__(self, "sha256", sha)
        object.__setattr__(self, "digest", values)

    def _check_error(self, k: int) -> None:
        """The error estimate: all of bootstrap (>= 2), error, l_std, s_std, b_std or none; base and weights
        together, and only with an error estimate."""
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise ValueError(f"statistics: bootstrap must be a non-negative integer; got {self.bootstrap!r}")
        stds = (self.l_std, self.s_std, self.b_std)
        if self.bootstrap == 0:
            if self.error is not None or any(v is not None for v in stds) or self.base is not None \
                    or self.weights is not None:
                raise ValueError("statistics: error, l_std, s_std, b_std, base and weights need bootstrap >= 2")
            return
        if self.bootstrap < 2 or self.error is None or any(v is None for v in stds):
            raise ValueError("statistics: bootstrap >= 2 comes with error, l_std, s_std and b_std")
        err = self.error
        if isinstance(err, bool) or not isinstance(err, (int, float)) or not (math.isfinite(err) and err >= 0):
            raise ValueError(f"statistics: error must be a finite number >= 0; got {err!r}")
        object.__setattr__(self, "error", float(err))
        for name, v in zip(("l_std", "s_std", "b_std"), stds, strict=True):
            v = torch.as_tensor(v, dtype=torch.float64).flatten()
            if v.numel() != k or not bool(torch.isfinite(v).all()) or bool((v < 0).any()):
                raise ValueError(f"statistics: {name} must hold {k} finite values >= 0 (one per node of lam)")
            object.__setattr__(self, name, v)
        if (self.base is None) != (self.weights is None) or (self.base is not None and self.base not in BASES):
            raise ValueError(f"statistics: base must be one of {BASES} with weights, or None without; got "
                             f"{self.base!r}")
        if self.weights is not None:
            w = torch.as_tensor(self.weights, dtype=torch.float64)
            if tuple(w.shape) != (3, k) or not bool(((w >= 0) & (w <= 1)).all()):
                raise ValueError(f"statistics: weights must be shaped (3, {k}) with values in [0, 1]")
            object.__setattr__(self, "weights", w.contiguous())

    def _error_fields(self) -> tuple[Any, ...] | None:
        if self.bootstrap == 0:
            return None
        return (self.bootstrap, self.error, self.base, self.l_std, self.s_std, self.b_std, self.weights)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.b.shape[1:])

    def save(self, path: str | Path) -> Path:
        """Write the tables (torch.save of plain tensors and strings, with the content digest ``sha256``;
        :meth:`load` reads them with ``weights_only=True`` and checks everything, docs/untrusted_files.md)."""
        path = Path(path)
        doc = {"format": STATS_FORMAT, "version": STATS_VERSION, "sde": self.sde, "samples": int(self.samples),
               "model": self.model, "sha256": self.sha256, "lam": self.lam, "l": self.l, "s": self.s, "b": self.b,
               "bootstrap": self.bootstrap, "error": self.error, "base": self.base, "l_std": self.l_std,
               "s_std": self.s_std, "b_std": self.b_std, "weights": self.weights}
        torch.save(doc, path)
        return path

    @classmethod
    def load(cls, path: str | Path, *, sde: Any | None = None, model: Any | None = None) -> ModelStatistics:
        """The statistics saved at ``path`` (a regular file; see docs/untrusted_files.md for what is checked before
        anything is allocated); every failure is a ValueError naming the file. With ``sde`` refused unless they
        were made for it; with ``model`` (a model or its id string) refused unless they were estimated from it."""
        stats = _load_checked(Path(path))
        if sde is not None:
            stats.check_sde(sde)
        if model is not None:
            stats.check_model(model, where=str(path))
        return stats

    def check_sde(self, sde: Any) -> None:
        if _sde_tag(sde) != self.sde:
            raise ValueError(f"these model statistics were estimated for the SDE {self.sde}, not for {_sde_tag(sde)}; "
                             "estimate them again with ei_toolkit.model_statistics for this SDE")

    def check_model(self, model: Any, *, where: str = "these model statistics") -> None:
        """Refuse (ValueError) unless the statistics were estimated from ``model`` (a model or its id string)."""
        from ..files import model_id

        want = model_id(model)
        if self.model is None:
            raise ValueError(f"{where}: the statistics record no model, so they cannot be checked against {want!r}; "
                             "estimate them again with ei_toolkit.model_statistics (which records it), or load them "
                             "without model= to use them unchecked")
        if self.model != want:
            raise ValueError(f"{where}: the statistics were estimated from the model {self.model!r}, not from "
                             f"{want!r}; estimate them again with ei_toolkit.model_statistics for this model")


def _digests(lam: torch.Tensor, l: torch.Tensor, s: torch.Tensor, b: torch.Tensor, sde: str,  # noqa: E741
             samples: int, model: str | None, error: tuple[Any, ...] | None = None) -> tuple[str, str]:
    """(the values' digest, 24 hex digits: what a plan depends on; the content's SHA-256, with the model and the
    error estimate too: without one, the version-2 digest)."""
    h = hashlib.sha256()
    for v in (lam, l, s, b):
        h.update(v.contiguous().numpy().tobytes())
    h.update(repr((tuple(b.shape), sde, int(samples))).encode())
    values = h.hexdigest()[:24]
    h.update(repr(("model", model)).encode())
    if error is not None:
        bootstrap, err, base, *tables = error
        h.update(repr(("error", int(bootstrap), float(err).hex(), base)).encode())
        for t in tables:
            h.update(b"-" if t is None else t.contiguous().numpy().tobytes())
    return values, h.hexdigest()


def _load_checked(path: Path) -> ModelStatistics:
    """Read a statistics file as untrusted input: a regular file of bounded size; a zip whose members are stored
    (not compressed) and declare no more bytes than the file holds; torch.load with ``weights_only=True``; exactly
    the expected keys and types; every tensor float64, contiguous, owning exactly its storage, within
    :data:`MAX_NODES` / :data:`MAX_TABLE_ELEMENTS`; consistent shapes; the content digest."""
    import zipfile

    from ..files import check_tensor, open_regular

    what = "statistics file"
    try:
        f = open_regular(path, what, max_bytes=MAX_STATISTICS_BYTES)
    except FileNotFoundError:
        raise ValueError(f"{what} {str(path)!r}: no such file") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        try:
            with zipfile.ZipFile(f) as z:
                members = z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise ValueError(f"{what} {str(path)!r} is not saved ei_toolkit model statistics (not a torch.save zip "
                             f"archive: {e})") from None
        if len(members) > 64 or any(m.compress_type != zipfile.ZIP_STORED for m in members) \
                or sum(m.file_size for m in members) > size:
            raise ValueError(f"{what} {str(path)!r} is not saved ei_toolkit model statistics (its zip members are "
                             "compressed, too many, or declare more bytes than the file holds)")
        f.seek(0)
        try:
            doc = torch.load(f, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError:  # torch's message advises weights_only=False: never for a file of unknown origin
            raise ValueError(f"{what} {str(path)!r} was refused by the weights-only unpickler: it holds objects other "
                             "than tensors and plain data, which saved statistics never do") from None
        except Exception as e:  # truncated, text, empty
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise ValueError(f"{what} {str(path)!r} cannot be read as saved ei_toolkit model statistics "
                             f"({type(e).__name__}{': ' + first if first else ''})") from None
    if not isinstance(doc, dict) or doc.get("format") != STATS_FORMAT:
        raise ValueError(f"{what} {str(path)!r} is not saved ei_toolkit model statistics (expected format "
                         f"{STATS_FORMAT!r})")
    version = doc.get("version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ValueError(f"{what} {str(path)!r}: unsupported statistics version {version!r} (this version reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))}; version 1 files carry no digest: estimate them "
                         "again)")
    keys = _KEYS if version == 2 else _KEYS | _ERROR_KEYS
    if set(doc) != keys:
        raise ValueError(f"{what} {str(path)!r}: expected the keys {sorted(keys)} (version {version}); got "
                         f"{sorted(map(str, doc))}")
    text_ok = all(isinstance(doc[k], str) and 0 < len(doc[k]) <= 1000 for k in ("sde", "sha256"))
    model_ok = doc["model"] is None or (isinstance(doc["model"], str) and 0 < len(doc["model"]) <= 1000)
    if not (text_ok and model_ok):
        raise ValueError(f"{what} {str(path)!r}: sde, sha256 must be short strings, model a short string or None")
    samples = doc["samples"]
    if isinstance(samples, bool) or not isinstance(samples, int) or not 0 < samples < 2**62:
        raise ValueError(f"{what} {str(path)!r}: samples must be a positive integer; got {samples!r}")
    where = f"{what} {str(path)!r}"
    lam = check_tensor(doc["lam"], "lam", where, dtype=torch.float64, ndim=1, max_numel=MAX_NODES)
    k = lam.numel()
    tabs = [check_tensor(doc[n], n, where, dtype=torch.float64, ndim=1, max_numel=MAX_NODES) for n in ("l", "s")]
    b = check_tensor(doc["b"], "b", where, dtype=torch.float64, ndim=range(2, 10), max_numel=MAX_TABLE_ELEMENTS)
    if any(t.numel() != k for t in tabs) or b.shape[0] != k or min(b.shape) < 1:
        raise ValueError(f"{where}: lam, l, s must hold one value per node and b be shaped (nodes, *sample shape); "
                         f"got {k}, {[t.numel() for t in tabs]}, {tuple(b.shape)}")
    extra = _checked_error_fields(doc, where, k) if version == 3 else {}
    error = None if not extra or extra["bootstrap"] == 0 else tuple(
        extra[n] for n in ("bootstrap", "error", "base", "l_std", "s_std", "b_std", "weights"))
    _, sha = _digests(lam, tabs[0], tabs[1], b, doc["sde"], samples, doc["model"], error)
    if sha != doc["sha256"]:
        raise ValueError(f"{where} is corrupt: its content does not match its digest (sha256 {doc['sha256'][:16]}..., "
                         f"computed {sha[:16]}...); estimate the statistics again or restore the file")
    try:
        return ModelStatistics(lam=lam, l=tabs[0], s=tabs[1], b=b, sde=doc["sde"], samples=samples,
                               model=doc["model"], **extra)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _checked_error_fields(doc: dict[str, Any], where: str, k: int) -> dict[str, Any]:
    """The version-3 error fields of a statistics file, types and sizes checked before anything is computed."""
    from ..files import check_tensor

    boot, err, base = doc["bootstrap"], doc["error"], doc["base"]
    if isinstance(boot, bool) or not isinstance(boot, int) or not 0 <= boot < 2**31:
        raise ValueError(f"{where}: bootstrap must be a non-negative integer; got {boot!r}")
    if not (err is None or (isinstance(err, float) and math.isfinite(err) and err >= 0)):
        raise ValueError(f"{where}: error must be a finite float >= 0 or None; got {err!r}")
    if base is not None and base not in BASES:
        raise ValueError(f"{where}: base must be one of {BASES} or None; got {base!r}")
    out: dict[str, Any] = {"bootstrap": boot, "error": err, "base": base}
    for name in ("l_std", "s_std", "b_std"):
        v = doc[name]
        out[name] = None if v is None else check_tensor(v, name, where, dtype=torch.float64, ndim=1,
                                                         max_numel=MAX_NODES)
    w = doc["weights"]
    out["weights"] = None if w is None else check_tensor(w, "weights", where, dtype=torch.float64, ndim=2,
                                                          max_numel=3 * MAX_NODES)
    for name in ("l_std", "s_std", "b_std"):
        if out[name] is not None and out[name].numel() != k:
            raise ValueError(f"{where}: {name} must hold one value per node ({k}); got {out[name].numel()}")
    if out["weights"] is not None and tuple(out["weights"].shape) != (3, k):
        raise ValueError(f"{where}: weights must be shaped (3, {k}); got {tuple(out['weights'].shape)}")
    return out


class _Tables:
    """l, s, b as natural cubic splines in lam through the nodes (twice continuously differentiable, so that g is
    smooth enough for the declared orders); L = int l and S = int s exactly (the splines' antiderivatives) and
    B = int e^{-S} b by Gauss-Legendre on each piece between nodes, all from lam[0]."""

    def __init__(self, st: ModelStatistics) -> None:
        from scipy.interpolate import CubicSpline

        self.lam = st.lam.numpy()
        self.l = CubicSpline(self.lam, st.l.numpy(), bc_type="natural")
        self.s = CubicSpline(self.lam, st.s.numpy(), bc_type="natural")
        self.b = CubicSpline(self.lam, st.b.reshape(len(self.lam), -1).numpy(), axis=0, bc_type="natural")
        self._L, self._S = self.l.antiderivative(), self.s.antiderivative()
        k = np.arange(len(self.lam) - 1)
        self.B = np.concatenate([np.zeros((1, self.b.c.shape[-1])),
                                 np.cumsum(self._b_integrals(k, self.lam[1:]), axis=0)])

    def L_at(self, v: np.ndarray) -> np.ndarray:
        return self._L(v) - self._L(self.lam[0])

    def S_at(self, v: np.ndarray) -> np.ndarray:
        return self._S(v) - self._S(self.lam[0])

    def _b_integrals(self, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """int_{lam_k}^{v} e^{-S} b for each (k, v) with lam_k <= v within node k's piece: (n, d)."""
        a = self.lam[k]
        h = np.maximum(v - a, 0.0)[:, None]
        q = a[:, None] + 0.5 * h * (_GL_X + 1.0)  # (n, nodes)
        w = 0.5 * h * _GL_W * np.exp(-self.S_at(q))
        bq = self.b(q.ravel()).reshape(*q.shape, -1)
        return np.einsum("ng,ngd->nd", w, bq)

    def B_at(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        k = np.clip(np.searchsorted(self.lam, v, side="right") - 1, 0, len(self.lam) - 2)
        return self.B[k] + self._b_integrals(k, v)

    def pieces(self, a: float, b: float) -> list[tuple[float, float]]:
        """[a, b] split at the table's nodes (the splines are polynomials on each piece)."""
        inner = self.lam[(self.lam > a) & (self.lam < b)]
        cuts = np.concatenate([[a], inner, [b]])
        return list(zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True))


def _lagrange(nodes: Sequence[float], v: np.ndarray) -> list[np.ndarray]:
    out = []
    for j, nj in enumerate(nodes):
        p = np.ones_like(v)
        for m, nm in enumerate(nodes):
            if m != j:
                p = p * (v - nm) / (nj - nm)
        out.append(p)
    return out


@dataclass(frozen=True, eq=False)
class EMSPlan(PredictorCorrectorPlan):
    """A predictor(-corrector) plan on g_k = u_k eps_k + v_k x_k (the model's eps at the k-th evaluation and the state
    it was evaluated at) with a bias per step: x_{i+1} = psi_i x_i + sum_j w_ij g_{i-j} + beta_i, corrected to
    psi_i x_i + sum_j c_ij g_{i+1-j} + gamma_i (beta, gamma shaped (steps, *sample shape), float64). ``history``
    given to :meth:`run` holds g (u eps + v x at the earlier grid points), not eps."""

    u: tuple[float, ...] = ()
    v: tuple[float, ...] = ()
    beta: torch.Tensor | None = None
    gamma: torch.Tensor | None = None
    corrected: bool = True

    def coefficients(self) -> Any:
        yield from super().coefficients()
        yield from _flatten((self.u, self.v))
        for t in (self.beta, self.gamma):
            if t is not None and t.numel():
                yield float(t.abs().max())

    def _biases(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """beta and gamma on x's device and dtype (moved once per device and dtype); None for the round-off
        surrogate of conditioning.py (a state without sample dimensions: the biases do not change d x_end / d e)."""
        if x.ndim == 1:
            return None
        if tuple(x.shape[1:]) != tuple(self.beta.shape[1:]):  # a step-by-step driver (a diffusers pipeline) would
            # otherwise broadcast them onto another sample shape
            raise ValueError(f"x has samples shaped {tuple(x.shape[1:])}, but these model statistics are for samples "
                             f"shaped {tuple(self.beta.shape[1:])}")
        cache = self._device_cache
        key = ("bias", x.device, x.dtype)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = (self.beta.to(device=x.device, dtype=x.dtype),
                                self.gamma.to(device=x.device, dtype=x.dtype))
        return hit

    def step(self, i: int, x: torch.Tensor, hist: list[torch.Tensor], noise: NoiseSource | None = None,
             psi: Sequence[Any] | None = None, weights: Sequence[Sequence[Any]] | None = None) -> torch.Tensor:
        out = super().step(i, x, hist, noise, psi, weights)
        biases = self._biases(x)
        return out if biases is None else out.add_(biases[0][i])

    def correct(self, i: int, x_prev: torch.Tensor, hist: list[torch.Tensor], psi: Sequence[Any] | None = None,
                corrector: Sequence[Sequence[Any]] | None = None) -> torch.Tensor:
        out = super().correct(i, x_prev, hist, psi, corrector)
        biases = self._biases(x_prev)
        return out if biases is None else out.add_(biases[1][i])

    @property
    def corrects(self) -> bool:
        return self.corrected

    def entry(self, i: int, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """g_i = u_i eps_i + v_i x_i: what the history holds (the biases enter in :meth:`step` / :meth:`correct`)."""
        return combine(e, self.u[i], [(self.v[i], x)])

    def run(self, x: torch.Tensor, eps_fn: EpsFn, *, start: int = 0, history: Sequence[torch.Tensor] = (),
            callback: StepCallback | None = None, noise: NoiseSource | None = None) -> torch.Tensor:
        """The shared multistep (or predictor-corrector) loop; ``history`` holds g (:meth:`entry`), not eps."""
        if x.ndim > 1 and tuple(x.shape[1:]) != tuple(self.beta.shape[1:]):
            raise ValueError(f"x has samples shaped {tuple(x.shape[1:])}, but these model statistics are for samples "
                             f"shaped {tuple(self.beta.shape[1:])}")
        loop = PredictorCorrectorPlan.run if self.corrected else MultistepPlan.run
        return loop(self, x, eps_fn, start=start, history=history, callback=callback, noise=noise)


class EMSAdams(Integrator):
    """The exponential Adams method on model-fitted statistics (module docstring): ``points`` past evaluations
    (1-4) interpolated in lam, corrected with the next evaluation unless ``corrector=False`` (UniPC's idea, no
    extra evaluation). Order ``points`` (+1 with the corrector) for fixed statistics. Pass the object as
    ``method=`` to :func:`ei_toolkit.solve` / ``sample`` / :func:`ei_toolkit.optimize_grid`."""

    evals_per_step = 1
    default_grid = "quadratic_t"  # for variance-preserving SDEs; uniform_logrho for the others (times())
    NAMES = tuple(f"ems-logrhoab{k}{pc}" for k in range(4) for pc in ("-pc", ""))
    """The names the method takes (``name``): ``ems-logrhoab<points - 1>``, ``-pc`` with the corrector."""

    @classmethod
    def named(cls, name: str, statistics: ModelStatistics) -> EMSAdams:
        """The method called ``name`` (one of :attr:`NAMES`) on ``statistics``: how a config or a command line,
        which hold names, not objects, choose it."""
        if name not in cls.NAMES:
            raise ValueError(f"unknown EMS method {name!r}; valid: {', '.join(cls.NAMES)}")
        return cls(statistics, points=int(name[len("ems-logrhoab")]) + 1, corrector=name.endswith("-pc"))

    def __init__(self, statistics: ModelStatistics, points: int = 2, corrector: bool = True) -> None:
        if not isinstance(statistics, ModelStatistics):
            raise TypeError(f"statistics must be ei_toolkit.ModelStatistics (from ei_toolkit.model_statistics); got "
                            f"{type(statistics).__name__}")
        if isinstance(points, bool) or not isinstance(points, int) or not 1 <= points <= 4:
            raise ValueError(f"points must be an integer from 1 to 4; got {points!r}")
        if not isinstance(corrector, bool):
            raise TypeError(f"corrector must be True or False; got {corrector!r}")
        self._statistics = statistics
        self.statistics_digest = statistics.digest
        self.points, self.corrector = points, corrector
        self.name = f"ems-logrhoab{points - 1}" + ("-pc" if corrector else "")
        self.order = points + (1 if corrector else 0)

    def grid_for(self, request: SolveRequest) -> str:
        if request.grid is not None:
            return request.grid
        return self.default_grid_for(request.sde, request.x[0].numel())

    @staticmethod
    def default_grid_for(sde: Any, dim: int) -> str:
        """The grid EMS runs on without ``grid=``: ``quadratic_t`` for variance-preserving SDEs and flows,
        ``uniform_logrho`` for VE / EDM (:func:`~ei_toolkit.grids.vp_or_logrho`), and for flow models of
        :data:`~ei_toolkit.grids.HIGH_DIM` elements per sample or more (the patch UNet's velocity, like sampling's
        default there, wants steps at high noise: on quadratic_t EMS was 1.19-8.3x its base method on its own grid,
        benchmarks/results/ems_trained.md)."""
        if getattr(sde, "ends_at_data", False) and dim >= HIGH_DIM:
            return "uniform_logrho"
        return vp_or_logrho(sde)

    @property
    def keeps_terminal_evaluation(self) -> bool:
        """From infinite noise, whether the first evaluation (t = 1) is the plan's first node at t_max, as for the
        data-prediction plans (:func:`ei_toolkit.zero_snr.keeps_terminal_evaluation`): with one point only. On the
        flow mixtures (benchmarks/bench_flow_ems.py, calibrated grids) keeping it took EMS at NFE 5 (one point) from
        0.59x to 0.49x the best peer in geometric mean; with two points at NFE 20 it made two mixtures 9x worse (the
        node at t_max is far from the next in log rho, and the two-point extrapolation from it is not mild)."""
        return self.points == 1

    @property
    def statistics(self) -> ModelStatistics:
        return self._statistics

    @property
    def base_method(self) -> str:
        """The registered method this one modifies: the same points and corrector on the plain form the statistics
        were shrunk towards (x0 if they were not shrunk), whose statistics are (l, s, b) = (1, dlog alpha/dlam, 0)
        or (0, dlog sigma/dlam, 0) (docs/math.md section 4.11): ``ddim`` for one point without the corrector,
        ``[x0-]logrhoab<points - 1>[-pc]`` otherwise (a name of ``ei.INTEGRATORS`` when registered)."""
        if (self.points, self.corrector) == (1, False):
            return "ddim"
        prefix = "logrhoab" if self._statistics.base == "eps" else "x0-logrhoab"
        return f"{prefix}{self.points - 1}" + ("-pc" if self.corrector else "")

    def plan(self, sde: Any, grid: torch.Tensor) -> EMSPlan:
        """The plan on ``grid``. A last grid point at the data (rho = 0, beyond every table) makes the last step the
        data prediction at the last finite point, x0 = (x - sigma eps) / alpha, i.e. DDIM's step into the data."""
        st = self._statistics
        if getattr(sde, "is_matrix", False):
            raise ValueError(f"{self.name} needs a scalar SDE (its statistics are tabulated in log rho)")
        st.check_sde(sde)
        to_data = not float(sde.rho(grid[-1:])[0]) > 0
        body = grid[:-1] if to_data else grid  # the points with a finite lam: every evaluation, and the end if finite
        lam = half_lambda(sde, body)
        lo, hi = float(st.lam[0]), float(st.lam[-1])
        tol = 1e-6 * max(1.0, hi - lo)  # round-off of the ends, not a user's wider span
        if not (np.isfinite(lam).all() and lam[0] >= lo - tol and lam[-1] <= hi + tol):
            raise ValueError(f"{self.name}: the grid spans -log rho from {lam[0]:.4g} to {lam[-1]:.4g}, outside the "
                             f"statistics' range [{lo:.4g}, {hi:.4g}]; estimate them over this time span "
                             "(ei_toolkit.model_statistics(..., t_start=, t_end=))")
        lam = np.clip(lam, lo, hi)
        tab = _Tables(st)
        alpha = sde.alpha(body).numpy()
        sigma = sde.sigma(body).numpy()
        L, S = tab.L_at(lam), tab.S_at(lam)
        logE = np.log(alpha) - L
        u = np.exp(-S) * sigma
        lk = tab.l(lam)
        v = -np.exp(-S) * lk
        Bn = tab.B_at(lam)  # (len(body), d)
        steps = len(grid) - 1
        psi, weights, corr = [], [], []
        beta = np.zeros((steps, Bn.shape[1]))
        gamma = np.zeros_like(beta)
        for i in range(len(body) - 1):
            p = min(self.points, i + 1)
            pred_nodes = [lam[i - j] for j in range(p)]
            corr_nodes = [lam[i + 1], *pred_nodes]
            qs, ws = [], []
            for a, b in tab.pieces(lam[i], lam[i + 1]):
                qs.append(0.5 * (b - a) * _GL_X + 0.5 * (b + a))
                ws.append(0.5 * (b - a) * _GL_W)
            q, wq = np.concatenate(qs), np.concatenate(ws)
            e_next = math.exp(logE[i + 1])
            kern = wq * np.exp(-(np.log(_alpha_at(sde, q)) - tab.L_at(q)) + tab.S_at(q)) * e_next  # E_{i+1}/E e^S
            psi.append(math.exp(logE[i + 1] - logE[i]))
            bias = -(kern @ tab.B_at(q))
            w = [-float(kern @ basis) for basis in _lagrange(pred_nodes, q)]
            c = [-float(kern @ basis) for basis in _lagrange(corr_nodes, q)]
            # g_k = u eps + v x - B_k: the -B_k parts of the history are known vectors, folded into the bias
            beta[i] = bias - sum(wj * Bn[i - j] for j, wj in enumerate(w))
            gamma[i] = bias - c[0] * Bn[i + 1] - sum(cj * Bn[i - j] for j, cj in enumerate(c[1:]))
            weights.append(tuple(w))
            corr.append(tuple(c))
        if to_data:  # x0 = (x - sigma eps) / alpha with eps = (g - v x) / u: sigma / u = e^S, sigma v / u = -l
            k = len(body) - 1
            psi.append(float((1.0 - lk[k]) / alpha[k]))
            weights.append((float(-math.exp(S[k]) / alpha[k]),))
            corr.append(())  # the last step is never corrected
        evals = steps  # one evaluation per step, at grid[:-1]
        shape = (steps, *st.sample_shape)
        return EMSPlan(grid=grid, psi=tuple(psi), weights=tuple(weights), eval_times=grid[:-1].clone(),
                       target="eps", corrector=tuple(corr), u=tuple(u[:evals].tolist()), v=tuple(v[:evals].tolist()),
                       beta=torch.from_numpy(beta).reshape(shape), gamma=torch.from_numpy(gamma).reshape(shape),
                       corrected=self.corrector)


def _alpha_at(sde: Any, lam: np.ndarray) -> np.ndarray:
    t = sde.t_of_rho(torch.from_numpy(np.exp(-lam)))
    return sde.alpha(t).numpy()
