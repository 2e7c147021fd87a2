"""The documentation's code runs as written: every ```python block of docs/integrators.md (in order, one namespace)
and of the README, and the methods it registers behave as the page says."""

import re
from pathlib import Path

import pytest
import torch

import ei_toolkit as ei

ROOT = Path(__file__).resolve().parents[1]


def blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def integrators_page():
    names = set(ei.INTEGRATORS)
    ns: dict = {}
    try:
        for code in blocks(ROOT / "docs" / "integrators.md"):
            exec(compile(code, "docs/integrators.md", "exec"), ns)  # the project's own documentation
        yield ns
    finally:
        for name in set(ei.INTEGRATORS) - names:
            del ei.INTEGRATORS[name]


def test_every_kind_of_method_on_the_integrators_page_runs_and_is_registered(integrators_page):
    ns = integrators_page
    for name in ("rhork-ralston", "rhoab2-by-hand", "early-noise-ddim", "gddim-by-hand", "scipy:rk45"):
        assert name in ei.INTEGRATORS
    assert ei.INTEGRATORS["early-noise-ddim"].stochastic and ei.INTEGRATORS["gddim-by-hand"].matrix
    assert torch.isfinite(ns["u0"]).all() and ns["u0"].shape == ns["u"].shape
    assert ns["sol"].nfe > 0


def test_hand_written_methods_equal_the_built_in_ones(integrators_page):
    ns = integrators_page
    model, x, sde, cld, u = ns["model"], ns["x"], ns["sde"], ns["cld"], ns["u"]
    a = ei.sample(model, x, sde, method="rhoab2-by-hand", nfe=10)
    b = ei.sample(model, x, sde, method="rhoab1", nfe=10, grid="uniform_logrho")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    cld_model = ns["problem"].eps_model(cld)
    torch.testing.assert_close(ei.sample(cld_model, u, cld, method="gddim-by-hand", nfe=10),
                               ei.sample(cld_model, u, cld, method="ddim", nfe=10), rtol=1e-12, atol=1e-12)
    # below every grid time the stochastic example is deterministic DDIM
    quiet = ns["EarlyNoiseDDIM"](t_switch=sde.t_max + 1)
    torch.testing.assert_close(ei.sample(model, x, sde, method=quiet, nfe=10),
                               ei.sample(model, x, sde, method="ddim", nfe=10), rtol=1e-12, atol=1e-12)
    ref = ns["problem"].reference(sde, x, sde.t_max, sde.t_min)
    assert (ns["sol"].x - ref).abs().max() < 1e-3


def test_the_readme_python_snippet_runs():
    ns: dict = {}
    for code in blocks(ROOT / "README.md"):
        exec(compile(code, "README.md", "exec"), ns)
    assert ns
