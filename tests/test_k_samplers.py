"""ei_toolkit.k_samplers against k-diffusion's own samplers, on the same sigmas and the same exact denoiser (a 2-D
Gaussian mixture), in float64; the aliases against their canonical methods; sample/solve's per-step callback.

Round-off analysis for "the same update": two float64 programs evaluating the same step formula in different
orders differ by a few units of roundoff u = 2^-52 of the largest value in the step (|x| and |sigma d| <= S, the
largest state magnitude of the run), a handful of operations per step; a difference made at one step is carried
by the later steps with a gain bounded by the step map's Lipschitz constant, of order one for this mixture's
probability flow (its denoiser's Jacobian Cov[x0 | x] / sigma^2 <= 1 for components of unit width at the sigmas
used). So after n steps the states differ by at most about n * 16 u S: that is tol() below (measured: at most
8e-16, 1e-4 of it; the closest pairs that are not the same update differ by 0.06 to 0.12).
"""

import sys
from pathlib import Path

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit import k_samplers
from ei_toolkit.integrators import ALIAS_NOTES, ALIASES, get_integrator, register_alias
from ei_toolkit.testing import get_problem

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))  # peers.load_k_diffusion_sampling, as test_compare

U = torch.finfo(torch.float64).eps
PROBLEM = get_problem("gmm2d")
EPS_MODEL = PROBLEM.eps_model(ei.EDM())  # exact eps of the mixture under alpha = 1, sigma = t, any window


def denoiser(x: torch.Tensor, sigma: torch.Tensor, **extra: object) -> torch.Tensor:
    """k-diffusion's denoiser of the mixture: x0 = x - sigma eps."""
    assert not extra or set(extra) == {"cond"}
    return x - sigma.view(-1, *([1] * (x.ndim - 1))) * EPS_MODEL(x, sigma)


def K():
    from peers import load_k_diffusion_sampling

    try:
        return load_k_diffusion_sampling()
    except ImportError:
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion)")


def test_loading_k_diffusion_leaves_no_stand_in_modules():
    """benchmarks/peers.py imports k_diffusion.sampling with stand-in torchvision modules where torchvision cannot be
    imported; left in sys.modules they made importlib.util.find_spec("torchvision") raise ValueError (no __spec__),
    which diffusers' availability check calls, so tests/test_diffusers.py failed after this file in one process."""
    import importlib.util

    K()
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        module = sys.modules.get(name)
        assert module is None or module.__spec__ is not None, name
    importlib.util.find_spec("torchvision")  # raised ValueError: torchvision.__spec__ is None


def karras(n: int, zero: bool = True) -> torch.Tensor:
    """k-diffusion's Karras sigmas (its get_sigmas_karras, in float64), optionally without the final 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = 0.002 ** (1 / 7), 80.0 ** (1 / 7)
    s = (hi + ramp * (lo - hi)) ** 7
    return torch.cat([s, s.new_zeros(1)]) if zero else s


def start(n: int = 16, seed: int = 0) -> torch.Tensor:
    return PROBLEM.sample_marginal(ei.EDM(), 80.0, n, torch.Generator().manual_seed(seed)).double()


def recorded(fn, sigmas, x, **kw):
    steps = []
    out = fn(denoiser, x.clone(), sigmas, callback=lambda d: steps.append(d), disable=True, **kw)
    return out, steps


def tol(steps: list[dict], out: torch.Tensor) -> float:
    scale = max(max(float(d["x"].abs().max()) for d in steps), float(out.abs().max()))
    return 16 * len(steps) * U * scale


# (ours, k-diffusion's) pairs that are the same update step for step
SAME = [("ddim", "sample_euler"), ("euler", "sample_euler"), ("x0-logrhoab1-mid", "sample_dpmpp_2m"),
        ("dpmpp_2m", "sample_dpmpp_2m"), ("heun", "sample_heun"), ("lms", "sample_lms")]


@pytest.mark.parametrize("zero", [True, False], ids=["to-zero", "to-sigma-min"])
@pytest.mark.parametrize(("ours", "theirs"), SAME, ids=[f"{a}={b}" for a, b in SAME])
def test_step_for_step_equal_to_k_diffusion(ours, theirs, zero):
    """The state, sigma and denoised x0 that the callback reports agree at every step, and so do the results."""
    sigmas = karras(10, zero)
    x = start()
    a, sa = recorded(k_samplers.sampler(ours), sigmas, x)
    b, sb = recorded(getattr(K(), theirs), sigmas, x)
    assert [d["i"] for d in sa] == [d["i"] for d in sb] == list(range(len(sigmas) - 1))
    bound = tol(sb, b)
    for da, db in zip(sa, sb, strict=True):
        assert set(da) == set(db) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert float(da["sigma"]) == float(db["sigma"]) and float(da["sigma_hat"]) == float(db["sigma_hat"])
        for key in ("x", "denoised"):
            assert da[key].dtype == db[key].dtype == torch.float64
            assert float((da[key] - db[key]).abs().max()) <= bound, (da["i"], key)
    assert float((a - b).abs().max()) <= bound


def test_the_named_entry_points_and_extra_args():
    sigmas, x = karras(6), start(4)
    assert k_samplers.sample_dpmpp_2m is k_samplers.SAMPLERS["dpmpp_2m"]
    assert k_samplers.sample_x0_logrhoab1_mid.__name__ == "sample_x0_logrhoab1_mid"
    seen = []

    def model(y, sigma, cond=None):
        seen.append(cond)
        return denoiser(y, sigma)

    k_samplers.sample_logrhoab2(model, x, sigmas, extra_args={"cond": "c"}, disable=True)
    assert seen == ["c"] * 6
    with pytest.raises(AttributeError):
        k_samplers.sample_nonexistent  # noqa: B018
    with pytest.raises(ValueError, match="chooses its own steps"):
        k_samplers.sampler("adaptive")
    with pytest.raises(ValueError, match="strictly decreasing"):
        k_samplers.sample_ddim(denoiser, x, torch.tensor([1.0, 2.0, 0.0]), disable=True)
    with pytest.raises(ValueError, match="positive"):
        k_samplers.sample_ddim(denoiser, x, torch.tensor([1.0, 0.0, -1.0]), disable=True)


def test_every_sampler_runs_and_converges_on_the_mixture():
    """Every fixed-grid method and alias, deterministic: on Karras sigmas to 0 its error against the exact flow
    (DOP853 to sigma = 1e-9, where x differs from x(0) by ~1e-9 |eps|) falls at least 3-fold from 8 to 32 steps (a
    first-order method: about 4-fold; measured 3.4 to 590) and is below 0.1 at 32 (measured 5e-5 to 0.067)."""
    x = start(32, seed=1)
    sde = ei.EDM(1e-9, 80.0)
    ref = PROBLEM.reference(sde, x, 80.0, 1e-9)
    for name, fn in k_samplers.SAMPLERS.items():
        if name == "sddim":  # stochastic: test_stochastic_ddim_draws_from_the_mixture
            continue
        errs = [float((fn(denoiser, x, karras(n), disable=True) - ref).abs().max()) for n in (8, 32)]
        assert errs[1] < errs[0] / 3 and errs[1] < 0.1, (name, errs)


def test_stochastic_ddim_draws_from_the_mixture():
    """sddim (lam = 1, the DDPM posterior) from exact noise: the samples' sliced Wasserstein distance to fresh data
    is near the distance between two data draws of the same size; a generator makes it repeatable."""
    from ei_toolkit.testing.problems import sliced_wasserstein

    x = start(2000, seed=2)
    fn = k_samplers.sampler("sddim", generator=torch.Generator().manual_seed(0))
    out = fn(denoiser, x, karras(30), disable=True)
    again = k_samplers.sampler("sddim", generator=torch.Generator().manual_seed(0))(denoiser, x, karras(30),
                                                                                    disable=True)
    assert torch.equal(out, again)
    data = PROBLEM.sample_data(2000, torch.Generator().manual_seed(3)).double()
    floor = sliced_wasserstein(PROBLEM.sample_data(2000, torch.Generator().manual_seed(4)).double(), data)
    assert sliced_wasserstein(out, data) < 3 * floor + 0.02


def test_ems_runs_as_a_k_sampler_on_the_sde_of_its_statistics():
    sde = ei.EDM(0.002, 80.0)
    calib = PROBLEM.sample_marginal(sde, 80.0, 64, torch.Generator().manual_seed(5)).double()
    stats = ei.model_statistics(EPS_MODEL, calib, sde, nodes=40)
    ems = ei.EMSAdams(stats)
    x = start(8)
    sigmas = karras(12)
    out = k_samplers.sampler(ems, sde=sde)(denoiser, x, sigmas, disable=True)
    ours = ei.sample(lambda y, t: denoiser(y, t), x, sde, method=ems, grid=sigmas, prediction="x0")
    torch.testing.assert_close(out, ours, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="pass sde="):
        k_samplers.sampler(ems)(denoiser, x, sigmas, disable=True)


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_an_alias_is_its_canonical_method(alias):
    """Same object, same result; the note says whether the update is the same ("exact") or the closest."""
    canonical = ALIASES[alias]
    assert get_integrator(alias) is ei.INTEGRATORS[canonical] and alias not in ei.INTEGRATORS
    assert ALIAS_NOTES[alias].startswith(("exact", "closest"))
    sde = ei.DiscreteVP.linear()
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, sde.t_max, 8, torch.Generator().manual_seed(0))
    sol = ei.solve(model, x, sde, method=alias, nfe=12)
    assert sol.stats["method"] == canonical
    assert torch.equal(sol.x, ei.sample(model, x, sde, method=canonical, nfe=12))


def test_aliases_cannot_shadow_methods_and_typos_suggest_them():
    with pytest.raises(ValueError, match="cannot shadow"):
        register_alias("ddim", "tab0", "exact")
    with pytest.raises(ValueError, match="exists"):
        register_alias("dpmpp_2m", "tab0", "exact")
    with pytest.raises(ValueError, match="is an alias of"):
        ei.register(ei.integrators.DDIM.__new__(type("Alias", (ei.integrators.DDIM,), {"name": "unipc"})))
    with pytest.raises(ValueError, match="did you mean 'dpmpp_2m'"):
        ei.sample(EPS_MODEL, start(2), ei.EDM(), method="dpmpp2m")


def test_sample_and_solve_report_each_step_to_a_callback():
    sde = ei.DiscreteVP.linear()
    model = PROBLEM.eps_model(sde)
    x = PROBLEM.sample_marginal(sde, sde.t_max, 4, torch.Generator().manual_seed(0))
    for method in ("logrhoab2", "x0-logrhoab1-mid-pc", "rhork-heun", "sddim"):
        seen: list = []
        kw = {"generator": torch.Generator().manual_seed(0)} if method == "sddim" else {}
        sol = ei.solve(model, x, sde, method=method, nfe=8, trajectory=True,
                       callback=lambda i, t, s, seen=seen: seen.append((i, t, s.clone())), **kw)
        assert [i for i, _, _ in seen] == list(range(1, len(sol.times)))
        assert [t for _, t, _ in seen] == sol.times[1:].tolist()
        for i, _, s in seen:
            assert torch.equal(s, sol.trajectory[i])
    with pytest.raises(ValueError, match="fixed-grid"):
        ei.sample(model, x, sde, method="torchdiffeq:dopri5", callback=lambda i, t, s: None)
    with pytest.raises(TypeError, match="callable"):
        ei.sample(model, x, sde, callback=3)


def test_sample_has_solves_explicit_signature_and_the_package_is_typed():
    import inspect

    a, b = inspect.signature(ei.sample).parameters, inspect.signature(ei.solve).parameters
    assert list(a) == list(b) and all(a[k].default == b[k].default and a[k].kind == b[k].kind for k in a)
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in a.values())
    assert (Path(ei.__file__).parent / "py.typed").is_file()
