"""Test problems with an exact score, high-accuracy reference solutions, and the convergence-order helper that the
project's own order tests use (and that a user runs on an integrator of their own)."""

from .convergence import ConvergenceResult, convergence_order
from .problems import PROBLEMS, GaussianMixture, get_problem, sliced_wasserstein
from .reference import reference_solution

__all__ = ["PROBLEMS", "ConvergenceResult", "GaussianMixture", "convergence_order", "get_problem",
           "reference_solution", "sliced_wasserstein"]
