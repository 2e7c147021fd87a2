"""EMS that cannot make things worse (issue 26 item 3; docs/math.md section 4.11): the bootstrap error of
ei.model_statistics, the shrinkage of noisy tables to the plain x0 / eps form, the number of draws, the held-out
check of statistics and of calibrated grids, and the new fields of the statistics file."""

import math
import warnings

import numpy as np
import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.grid_opt import HeldoutCheckFailed, heldout_check
from ei_toolkit.integrators.ems import STATS_FORMAT
from ei_toolkit.statistics import base_statistics, check_statistics
from ei_toolkit.testing import get_problem

SDE = ei.VPSDE()
MIX = get_problem("gmm16")
MODEL = MIX.eps_model(SDE)


def _stats(model, n, seed=99, **kw):
    xs = MIX.sample_marginal(SDE, SDE.t_max, n, torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ei.model_statistics(model, xs, SDE, nodes=kw.pop("nodes", 60), **kw)


def _noisy(scale=0.05, seed=5):
    """The exact eps plus fresh noise at every call: what a statistics estimate sees of a noisy network."""
    gen = torch.Generator().manual_seed(seed)

    def model(x, t):
        return MODEL(x, t) + scale * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return model


@pytest.fixture(scope="module")
def heldout():
    x = MIX.sample_marginal(SDE, SDE.t_max, 24, torch.Generator().manual_seed(3))
    return x, MIX.reference(SDE, x, SDE.t_max, SDE.t_min)


def _err(method, x, ref, nfe, grid=None):
    try:
        out = ei.solve(MODEL, x, SDE, method=method, nfe=nfe, grid=grid).x
    except ei.NumericalError:  # diverged
        return math.inf
    return float((out - ref).reshape(len(x), -1).pow(2).mean(1).sqrt().median())


def test_noisy_statistics_are_shrunk_to_the_base_method(heldout):
    """Statistics of a noisy model from 16 draws: l is noise (the central differences divide the model's noise by
    the step) and takes the x0 form's value 1, as does b at most nodes; s keeps its fitted value, whose deviation
    from dlog alpha/dlam is real (the regression of f' on f = -alpha x0). EMS then differs from its base method
    x0-logrhoab1-pc by that s alone, which moves the error by a few percent (seeded, deterministic: 1.05x / 0.98x
    at NFE 10 / 20): bound 1.1x. Unshrunk, the same statistics diverge or are far worse than the base method."""
    x, ref = heldout
    raw = _stats(_noisy(), 16, shrink=None)
    st = _stats(_noisy(), 16)
    assert st.base == "x0" and float(st.weights[0].max()) == 0.0 and float(st.weights[2].mean()) < 0.5
    ems = ei.EMSAdams(st, 2)
    assert ems.base_method == "x0-logrhoab1-pc"
    for nfe in (10, 20):
        base = _err("x0-logrhoab1-pc", x, ref, nfe, grid="quadratic_t")
        assert _err(ems, x, ref, nfe) <= 1.1 * base, nfe
        assert _err(ei.EMSAdams(raw, 2), x, ref, nfe) > 1.1 * base, nfe


def test_clean_statistics_from_many_draws_keep_the_fitted_values():
    st = _stats(MODEL, 256)
    raw = _stats(MODEL, 256, shrink=None)
    assert float(st.weights[:2].min()) == 1.0 and float(st.weights[2].mean()) >= 0.8
    assert torch.equal(st.l, raw.l) and torch.equal(st.s, raw.s)
    kept = st.weights[2] == 1.0
    assert torch.allclose(st.b[kept], raw.b[kept], rtol=0, atol=1e-12)
    assert st.error < 0.05 and raw.error == st.error


def test_the_bootstrap_error_falls_like_one_over_sqrt_draws():
    """Three batch sizes a factor 4 apart: the slope of log error against log draws is -1/2 up to the bootstrap's
    own scatter (32 resamples: ~13% per figure, so +-0.2 in the slope)."""
    n = np.array([16, 64, 256])
    errs = np.array([_stats(MODEL, int(k), shrink=None, nodes=40).error for k in n])
    slope = np.polyfit(np.log(n), np.log(errs), 1)[0]
    assert -0.75 < slope < -0.3, (errs, slope)


def test_few_draws_warn_and_tolerance_adds_draws():
    xs = MIX.sample_marginal(SDE, SDE.t_max, 8, torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match=r"relative bootstrap error [0-9.]+ > 0.05 with 8 draws"):
        ei.model_statistics(MODEL, xs, SDE, nodes=40)
    pool = MIX.sample_marginal(SDE, SDE.t_max, 256, torch.Generator().manual_seed(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        st = ei.model_statistics(MODEL, pool, SDE, nodes=40, tolerance=0.5)
    assert st.samples == 64 and st.error <= 0.5  # converged at the first check: no more draws evaluated
    with pytest.warns(UserWarning, match=r"with 128 draws"):
        st = ei.model_statistics(MODEL, pool[:128], SDE, nodes=40, tolerance=1e-4)
    assert st.samples == 128


def test_heldout_check_catches_corrupted_statistics(heldout):
    x, ref = heldout
    st = _stats(MODEL, 64)
    ems, report = check_statistics(MODEL, st, x, SDE, nfe=10, reference=ref)
    assert isinstance(ems, ei.EMSAdams) and report.passed and report.evaluations == 20
    bad = ei.ModelStatistics(lam=st.lam, l=st.l, s=st.s + 1.5, b=st.b, sde=st.sde, samples=st.samples,
                             model=st.model)
    with pytest.raises(HeldoutCheckFailed, match=r"held-out check FAILED at NFE 10"):
        check_statistics(MODEL, bad, x, SDE, nfe=10, reference=ref)
    with pytest.warns(UserWarning, match="falling back to the base method x0-logrhoab1-pc"):
        method, report = check_statistics(MODEL, bad, x, SDE, nfe=10, reference=ref, on_failure="fallback")
    assert method == "x0-logrhoab1-pc" and not report.passed and report.ratio > 1
    # EMS on the base statistics is its base method (stands in where none is registered: 4 points + corrector)
    base4 = ei.EMSAdams(base_statistics(st, SDE), 1, False)
    assert torch.allclose(ei.solve(MODEL, x, SDE, method=base4, nfe=8).x,
                          ei.solve(MODEL, x, SDE, method="ddim", nfe=8, grid="quadratic_t").x, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="on_failure"):
        check_statistics(MODEL, st, x, SDE, nfe=10, reference=ref, on_failure="ignore")


def test_heldout_check_catches_a_bad_grid(heldout):
    x, ref = heldout
    m = "x0-logrhoab1-pc"
    bad = torch.cat([torch.linspace(SDE.t_max, 0.9 * SDE.t_max, 10, dtype=torch.float64),
                     torch.tensor([SDE.t_min], dtype=torch.float64)])
    tie = heldout_check(MODEL, x, SDE, method=m, nfe=10, reference=ref)  # the default grid against itself
    assert tie.passed and tie.ratio == 1.0
    report = heldout_check(MODEL, x, SDE, method=m, nfe=10, grid=bad, reference=ref)
    assert not report.passed and report.ratio > 10 and "FAILED" in report.describe()
    xc = MIX.sample_marginal(SDE, SDE.t_max, 8, torch.Generator().manual_seed(4))
    grid, info = ei.optimize_grid(MODEL, xc, SDE, method=m, nfe=5, max_solves=12, heldout=x,
                                  on_failure="fallback", return_info=True)
    assert info["nfe_heldout"] == info["heldout"].evaluations > 10 and len(grid) == 6
    with pytest.raises(ValueError, match="on_failure"):
        ei.optimize_grid(MODEL, xc, SDE, method=m, nfe=5, heldout=x, on_failure="warn")
    with pytest.raises(ValueError, match="heldout"):
        ei.optimize_grid(MODEL, xc, SDE, method=m, nfe=5, heldout=x[:1])


def test_calibration_and_checks_keep_no_autograd_graph(heldout):
    """optimize_grid, heldout_check and model_statistics call a network with trainable parameters hundreds of times;
    with autograd on, each solve kept its whole graph (bench_ems_trained on the patch UNet reached 23.7 GB). The
    model below records whether gradients were enabled at any call."""
    x, _ = heldout
    weight = torch.nn.Parameter(torch.ones(()))
    seen = []

    def model(xt, t):
        seen.append(torch.is_grad_enabled())
        return MODEL(xt, t) * weight

    xc = MIX.sample_marginal(SDE, SDE.t_max, 4, torch.Generator().manual_seed(4))
    grid = ei.optimize_grid(model, xc, SDE, method="x0-logrhoab1-pc", nfe=5, max_solves=4, heldout=x,
                            on_failure="fallback")
    report = heldout_check(model, x, SDE, method="x0-logrhoab1-pc", nfe=5)  # its own adaptive reference
    st = _stats(model, 4, nodes=8)
    assert seen and not any(seen)
    assert not grid.requires_grad and report.evaluations > 10 and not st.l.requires_grad


def test_shipped_digits_model_few_draws_no_worse_than_base():
    """The shipped digits model (DiscreteVP.linear, eps): statistics from 16 draws, shrunk, pass the held-out check
    at NFE 10 and 20 against x0-logrhoab1-pc (measured 0.37x / 0.30x with 16 draws)."""
    from ei_toolkit.models import load_digits_model

    sde = ei.DiscreteVP.linear()
    model = load_digits_model("cpu")
    xs = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(99))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        st = ei.model_statistics(model, xs, sde, nodes=100)
    x = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = ei.solve(model, x.double(), sde, method="adaptive", options={"rtol": 1e-7, "atol": 1e-7}).x
    for nfe in (10, 20):
        _, report = check_statistics(model, st, x, sde, nfe=nfe, reference=ref)
        assert report.ratio < 1.0, report.describe()


def test_save_load_round_trip_and_old_files(tmp_path):
    st = _stats(MODEL, 16, nodes=20)
    back = ei.ModelStatistics.load(st.save(tmp_path / "s.pt"), sde=SDE)
    for name in ("lam", "l", "s", "b", "l_std", "s_std", "b_std", "weights"):
        assert torch.equal(getattr(back, name), getattr(st, name)), name
    assert (back.bootstrap, back.error, back.base, back.sha256) == (st.bootstrap, st.error, st.base, st.sha256)
    old = ei.ModelStatistics(lam=st.lam, l=st.l, s=st.s, b=st.b, sde=st.sde, samples=st.samples, model=st.model)
    doc = {"format": STATS_FORMAT, "version": 2, "sde": old.sde, "samples": old.samples, "model": old.model,
           "sha256": old.sha256, "lam": old.lam, "l": old.l, "s": old.s, "b": old.b}
    torch.save(doc, tmp_path / "v2.pt")
    v2 = ei.ModelStatistics.load(tmp_path / "v2.pt")
    assert v2.bootstrap == 0 and v2.error is None and v2.sha256 == old.sha256


def _v3(st, **change):
    doc = {"format": STATS_FORMAT, "version": 3, "sde": st.sde, "samples": st.samples, "model": st.model,
           "sha256": st.sha256, "lam": st.lam, "l": st.l, "s": st.s, "b": st.b, "bootstrap": st.bootstrap,
           "error": st.error, "base": st.base, "l_std": st.l_std, "s_std": st.s_std, "b_std": st.b_std,
           "weights": st.weights}
    doc.update(change)
    return doc


@pytest.mark.parametrize(("change", "message"), [
    ({"weights": None}, r"does not match its digest"),  # a field dropped, the digest kept
    ({"error": math.nan}, r"error must be a finite float"),
    ({"error": 0.001}, r"does not match its digest"),
    ({"bootstrap": True}, r"bootstrap must be a non-negative integer"),
    ({"base": "v"}, r"base must be one of"),
    ({"l_std": torch.zeros(5, dtype=torch.float64)}, r"l_std must hold one value per node"),
    ({"weights": torch.zeros(1, dtype=torch.float64).expand(3, 10**6)}, r"weights"),
    ({"s_std": torch.zeros(3, dtype=torch.float32)}, r"s_std must be a dense CPU torch.float64"),
    ({"version": 4}, r"unsupported statistics version 4"),
    ({"extra": 1}, r"expected the keys"),
])
def test_hostile_statistics_files_are_refused(tmp_path, change, message):
    st = _stats(MODEL, 8, nodes=20)
    torch.save(_v3(st, **change), tmp_path / "h.pt")
    with pytest.raises(ValueError, match=message):
        ei.ModelStatistics.load(tmp_path / "h.pt")


def test_weights_outside_zero_one_are_refused_even_with_a_matching_digest(tmp_path):
    st = _stats(MODEL, 8, nodes=20)
    with pytest.raises(ValueError, match=r"weights must be shaped \(3, 21\) with values in \[0, 1\]"):
        ei.ModelStatistics(lam=st.lam, l=st.l, s=st.s, b=st.b, sde=st.sde, samples=st.samples, bootstrap=32,
                           error=0.1, base="x0", l_std=st.l_std, s_std=st.s_std, b_std=st.b_std,
                           weights=st.weights * 2)


def test_bad_arguments_are_named():
    xs = MIX.sample_marginal(SDE, SDE.t_max, 4, torch.Generator().manual_seed(1))
    for kw, msg in [({"bootstrap": 1}, "bootstrap"), ({"shrink": "v"}, "shrink"),
                    ({"bootstrap": 0}, "shrink needs the error estimate"), ({"tolerance": -1.0}, "tolerance"),
                    ({"tolerance": 0.1, "bootstrap": 0, "shrink": None}, "tolerance needs")]:
        with pytest.raises(ValueError, match=msg):
            ei.model_statistics(MODEL, xs, SDE, nodes=10, **kw)
    with pytest.warns(UserWarning, match="1 calibration draw"):
        st = ei.model_statistics(MODEL, xs[:1], SDE, nodes=10)
    assert st.bootstrap == 0 and st.base is None
