"""Test problems with an exact score, for convergence tests and accuracy benchmarks."""

from .problems import PROBLEMS, GaussianMixture, get_problem, sliced_wasserstein

__all__ = ["PROBLEMS", "GaussianMixture", "get_problem", "sliced_wasserstein"]
