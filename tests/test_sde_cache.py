"""The derivation cache is bounded and keyed by value; LinearSDE.key identifies an SDE by value."""

import gc
import weakref

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.sde import builtins, derivation


@pytest.fixture
def small_cache(monkeypatch):
    monkeypatch.setattr(derivation.CACHE, "maxsize", 3)
    derivation.CACHE.clear()
    yield derivation.CACHE
    derivation.CACHE.clear()


def test_the_cache_has_a_documented_bound():
    assert derivation.CACHE_SIZE == 32
    assert derivation.CACHE.maxsize == derivation.CACHE_SIZE


def test_cache_stays_at_its_bound_and_an_evicted_sde_keeps_working(small_cache):
    first = ei.VPSDE(beta_max=11.0)
    t = torch.linspace(first.t_min, first.t_max, 17, dtype=torch.float64)
    before = first.rho(t)
    for k in range(6):
        ei.VPSDE(beta_max=12.0 + k)
        assert len(small_cache) == min(k + 2, 3)
    assert len(small_cache) == 3
    again = ei.VPSDE(beta_max=11.0)  # evicted: derived anew, equal values
    assert again._b is not first._b
    torch.testing.assert_close(first.rho(t), before, rtol=0, atol=0)  # the old object holds its own derivation
    torch.testing.assert_close(again.rho(t), before, rtol=1e-15, atol=0)
    assert first.t_of_rho(first.rho(t)).sub(t).abs().max() < 1e-12


def test_a_recently_used_derivation_is_kept(small_cache):
    a = ei.VPSDE(beta_max=11.0)
    ei.VPSDE(beta_max=12.0)
    ei.VPSDE(beta_max=13.0)
    assert ei.VPSDE(beta_max=11.0)._b is a._b  # a hit moves it to the front
    ei.VPSDE(beta_max=14.0)  # evicts 12, the least recently used
    assert ei.VPSDE(beta_max=11.0)._b is a._b


def dead_after_eviction(make):
    """Build an SDE, drop it, evict its derivation, and report whether its derivation and tables were freed."""
    sde = make()
    refs = [weakref.ref(sde._b)] + [weakref.ref(impl.table) for impl in sde._b.tables if impl.table is not None]
    assert len(refs) > 1
    del sde
    for k in range(4):
        ei.VPSDE(beta_max=30.0 + k)
    builtins._discrete_log_alpha_owned.cache_clear()
    gc.collect()
    return [r() is None for r in refs]


def test_evicted_derivations_and_their_tables_are_freed(small_cache):
    # sympy's own caches keep the (small) function classes of tables; the tables must not stay with them
    betas = np.linspace(1e-4, 0.02, 500)
    betas[-1] += 1.234e-7  # a table no other test builds
    assert all(dead_after_eviction(lambda: ei.DiscreteVP(betas)))
    numeric = dict(drift="-a/sqrt(1 + t**3)", diffusion="sqrt(b)*exp(t/4)", t_max=1.0, a=1.234567, b=2.0)
    assert all(dead_after_eviction(lambda: ei.LinearSDE(**numeric)))


def test_keys_are_equal_for_equal_arguments_and_differ_otherwise():
    a, b = ei.VPSDE(beta_max=20.0), ei.VPSDE(beta_max=20.0)
    assert a.key == b.key and hash(a.key) == hash(b.key)
    assert ei.VPSDE(beta_max=20.5).key != a.key
    assert ei.VPSDE(beta_max=20.0, t_min=2e-3).key != a.key
    assert ei.VPSDE(beta_max=20.0, t_max=0.9).key != a.key
    assert ei.SubVPSDE().key != ei.VPSDE().key
    beta = "beta_min + (beta_max - beta_min) * t"
    lin = dict(drift=f"-({beta}) / 2", diffusion=f"sqrt({beta})", t_max=1.0, t_min=1e-3, beta_min=0.1, beta_max=20.0)
    assert ei.LinearSDE(**lin).key == ei.LinearSDE(**lin).key
    assert ei.LinearSDE(**lin).key != ei.VPSDE().key  # another class
    assert ei.EDM().key == ei.EDM().key != ei.EDM(sigma_max=60.0).key
    assert ei.CosineVPSDE().key != ei.CosineVPSDE(s=0.01).key


def test_discrete_tables_are_keyed_by_their_values():
    betas = np.linspace(1e-4, 0.02, 300)
    a = ei.DiscreteVP(betas)
    b = ei.DiscreteVP(betas.copy())
    assert a.key == b.key and a._b is b._b
    other = betas.copy()
    other[17] *= 1.000001
    assert ei.DiscreteVP(other).key != a.key
    # by value, not by object: the same table after every cache was emptied gives the same key
    derivation.CACHE.clear()
    builtins._discrete_log_alpha_owned.cache_clear()
    c = ei.DiscreteVP(betas)
    assert c.key == a.key and c._b is not a._b


def test_keys_work_as_dict_keys():
    plans = {ei.VPSDE().key: "plan"}
    assert plans[ei.VPSDE().key] == "plan"
    assert ei.VPSDE(beta_min=0.2).key not in plans
