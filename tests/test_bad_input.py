"""Every bad input gets a clear error naming the argument and what was expected."""

import numpy as np
import pytest
import torch

import ei_toolkit as ei


def test_drift_that_depends_on_x_is_rejected():
    with pytest.raises(ValueError, match=r"drift must be a function of t alone.*depends on x"):
        ei.LinearSDE(drift="-x * t", diffusion="1", t_max=1.0)


def test_diffusion_that_is_not_a_function_of_t_alone_is_rejected():
    with pytest.raises(ValueError, match=r"diffusion must be a function of t alone.*depends on x"):
        ei.LinearSDE(drift="-1", diffusion="sqrt(1 + x**2)", t_max=1.0)


def test_undeclared_parameter_names_the_symbol_and_the_fix():
    with pytest.raises(ValueError, match=r"depends on beta.*beta=1.0"):
        ei.LinearSDE(drift="-beta / 2", diffusion="sqrt(beta)", t_max=1.0)


def test_undefined_function_is_rejected():
    with pytest.raises(ValueError, match=r"diffusion uses undefined function\(s\) beta"):
        ei.LinearSDE(drift="-1", diffusion="sqrt(beta(t))", t_max=1.0)


def test_unparsable_coefficient_is_rejected():
    with pytest.raises(ValueError, match=r"drift could not be parsed"):
        ei.LinearSDE(drift="-(t +", diffusion="1", t_max=1.0)


def test_non_positive_diffusion_on_the_window_is_rejected():
    with pytest.raises(ValueError, match=r"diffusion must be real and positive on the domain .*G\(0\) = -0.5"):
        ei.LinearSDE(drift="-1", diffusion="t - 0.5", t_max=1.0)
    with pytest.raises(ValueError, match=r"diffusion must be real and positive"):
        ei.LinearSDE(drift="-1", diffusion="sqrt(t - 0.5)", t_max=1.0, sigma_init=1.0)


def test_rho_that_is_not_strictly_monotone_is_rejected():
    with pytest.raises(ValueError, match=r"rho = sigma/alpha must be strictly increasing.*near t = 1"):
        ei.LinearSDE.from_marginals(sigma="t * (2 - t)", t_max=1.5)


def test_window_with_t_min_not_below_t_max_is_rejected():
    with pytest.raises(ValueError, match=r"t_min must be less than t_max; got t_min=1.0, t_max=1.0"):
        ei.VPSDE(t_min=1.0)
    with pytest.raises(ValueError, match=r"t_max must be greater than t0"):
        ei.LinearSDE(drift="-1", diffusion="1", t_max=0.0)
    with pytest.raises(ValueError, match=r"t_min must be a time where sigma > 0"):
        ei.LinearSDE(drift="-1", diffusion="1", t_max=1.0, t_min=0.0)


def test_time_outside_the_domain_is_rejected():
    sde = ei.VPSDE()
    with pytest.raises(ValueError, match=r"t must lie in the SDE's domain \[0, 1\]; got 1.5"):
        sde.alpha(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match=r"t must lie in the SDE's domain"):
        sde.sigma(-0.1)
    with pytest.raises(ValueError, match=r"s must lie in the SDE's domain"):
        sde.psi(0.5, 2.0)
    with pytest.raises(ValueError, match=r"rho must lie in rho's range"):
        sde.t_of_rho(torch.tensor([1e6]))


def test_nan_time_is_reported_not_propagated():
    with pytest.raises(ValueError, match=r"got nan"):
        ei.VPSDE().rho(torch.tensor([0.5, float("nan")]))


def test_bad_builtin_parameters_are_rejected():
    with pytest.raises(ValueError, match=r"beta_min must be a finite positive number; got -1"):
        ei.VPSDE(beta_min=-1)
    with pytest.raises(ValueError, match=r"sigma_max must be greater than sigma_min"):
        ei.VESDE(sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(ValueError, match=r"t_max must be < 1 for the cosine schedule"):
        ei.CosineVPSDE(t_max=1.0)
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        ei.DiscreteVP(np.array([0.1, 1.5]))
    with pytest.raises(ValueError, match=r"alphas_cumprod must lie in \(0, 1\) and be strictly decreasing"):
        ei.DiscreteVP.from_alphas_cumprod([0.9, 0.95])


def test_bad_parameters_and_marginals_are_rejected():
    with pytest.raises(TypeError, match=r"parameter b must be a real number"):
        ei.LinearSDE(drift="-b", diffusion="1", t_max=1.0, b="x")
    with pytest.raises(ValueError, match=r"parameter name 'rho' is reserved"):
        ei.LinearSDE(drift="-rho", diffusion="1", t_max=1.0, rho=1.0)
    with pytest.raises(ValueError, match=r"alpha must equal 1 at t0"):
        ei.LinearSDE.from_marginals(sigma="t", alpha="2 - t", t_max=1.0)
    with pytest.raises(ValueError, match=r"sigma_init must be a real number >= 0"):
        ei.LinearSDE(drift="-1", diffusion="1", t_max=1.0, sigma_init=-0.5)
    with pytest.raises(TypeError, match=r"t must be a real tensor"):
        ei.VPSDE().alpha(torch.tensor([0.5j]))
