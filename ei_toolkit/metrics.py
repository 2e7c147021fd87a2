"""Sample-quality metrics: the Frechet distance between two feature distributions (Heusel et al. 2017, the FID
formula) and its digits instance, FD in the features of the shipped digits classifier
(:mod:`ei_toolkit.models.classifier`) against the 360 held-out digits. ``benchmarks/bench_digits.py`` and
:func:`ei_toolkit.generate.evaluate_shards` both use these functions.

Statistics are accumulated in float64 by Chan et al.'s pairwise update, so the features of any number of shards
are reduced one batch at a time; the covariance is the unbiased one plus 1e-6 I (ReLU features can have dead
units, which would make it singular).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from .errors import NumericalError

REGULARISATION = 1e-6


@dataclass
class FeatureStatistics:
    """Running mean and centred scatter matrix of feature vectors (float64); ``update`` with (B, D) batches."""

    dim: int
    n: int = 0
    mean: np.ndarray | None = None
    scatter: np.ndarray | None = None

    def update(self, features: np.ndarray | torch.Tensor) -> FeatureStatistics:
        f = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
        f = f.astype(np.float64, copy=False)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"features must have shape (batch, {self.dim}); got {f.shape}")
        if not np.isfinite(f).all():
            raise NumericalError("features hold NaN or inf (non-finite samples?)")
        m = len(f)
        if m == 0:
            return self
        mean_b = f.mean(0)
        scatter_b = (f - mean_b).T @ (f - mean_b)
        if self.n == 0:
            self.n, self.mean, self.scatter = m, mean_b, scatter_b
            return self
        n = self.n + m
        delta = mean_b - self.mean
        self.scatter = self.scatter + scatter_b + np.outer(delta, delta) * (self.n * m / n)
        self.mean = self.mean + delta * (m / n)
        self.n = n
        return self

    def covariance(self) -> np.ndarray:
        """Unbiased covariance plus ``REGULARISATION`` I."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors; got {self.n}")
        return self.scatter / (self.n - 1) + REGULARISATION * np.eye(self.dim)


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance + 1e-6 I) of (N, D) features, in float64."""
    stats = FeatureStatistics(dim=int(features.shape[1])).update(features)
    return stats.mean, stats.covariance()


Stats = tuple[np.ndarray, np.ndarray]


def frechet_distance(a: Stats | np.ndarray | torch.Tensor, b: Stats | np.ndarray | torch.Tensor) -> float:
    """Frechet distance |m_a - m_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)) between two Gaussians, each given by
    (mean, covariance) or by an (N, D) array of features (Heusel et al. 2017, eq. 6)."""
    from scipy import linalg

    (ma, ca), (mb, cb) = (_as_stats(v) for v in (a, b))
    if ma.shape != mb.shape:
        raise ValueError(f"feature dimensions differ: {ma.shape[0]} and {mb.shape[0]}")
    product = linalg.sqrtm(ca @ cb)
    if np.iscomplexobj(product):
        imag = float(np.abs(product.imag).max())
        if imag > 1e-3 * max(1.0, float(np.abs(product.real).max())):
            warnings.warn(f"frechet_distance: sqrtm(C_a C_b) has an imaginary part of {imag:.2e}; its real part is "
                          f"used", RuntimeWarning, stacklevel=2)
        product = product.real
    value = float(((ma - mb) ** 2).sum() + np.trace(ca + cb - 2 * product))
    if not np.isfinite(value):
        raise NumericalError(f"the Frechet distance is not finite ({value})")
    return value


def _as_stats(v: Stats | np.ndarray | torch.Tensor) -> Stats:
    if isinstance(v, tuple):
        m, c = (np.asarray(u.detach().cpu() if isinstance(u, torch.Tensor) else u, dtype=np.float64) for u in v)
        if m.ndim != 1 or c.shape != (m.shape[0], m.shape[0]):
            raise ValueError(f"statistics must be (mean (D,), covariance (D, D)); got {m.shape} and {c.shape}")
        return m, c
    if v.ndim != 2:
        raise ValueError(f"features must be (N, D) or (mean, covariance); got shape {tuple(v.shape)}")
    return feature_statistics(v)


def digits_features(x: torch.Tensor, classifier: torch.nn.Module | None = None, batch: int = 4096) -> torch.Tensor:
    """Penultimate features (N, 64) of the shipped digits classifier for digits x (N, 1, 8, 8) in [-1, 1]."""
    from .models.classifier import load_digits_classifier

    if not isinstance(x, torch.Tensor) or x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be digits of shape (N, 1, 8, 8); got {got}")
    net = classifier if classifier is not None else load_digits_classifier()
    device = next(net.parameters()).device
    with torch.no_grad():
        parts = [net.features(x[i:i + batch].to(device)).cpu() for i in range(0, len(x), batch)]
    return torch.cat(parts) if parts else torch.empty(0, 64)


def digits_reference() -> Stats:
    """(mean, covariance) of the shipped classifier's features over the held-out digits (shipped with it)."""
    from .models.classifier import held_out_statistics

    mean, cov, _ = held_out_statistics()
    return mean.double().numpy(), cov.double().numpy()


def digits_frechet_distance(x: torch.Tensor) -> float:
    """FD of digits x (N, 1, 8, 8) in [-1, 1] against the held-out digits, in the shipped classifier's features
    (the metric of ``benchmarks/results/digits.md``). Non-finite samples raise NumericalError."""
    if not bool(torch.isfinite(x).all()):
        raise NumericalError("the samples hold NaN or inf")
    return frechet_distance(digits_features(x), digits_reference())
