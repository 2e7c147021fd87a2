"""The documentation's code runs as written: every ```python block of README.md and of every page in docs/ (per page
in order, one namespace), here or in the test named in RUN_ELSEWHERE; a block that is not Python says so with its
fence (```bash, ```text, ...): no fence without a language, no ``>>>`` transcript in a python fence. The methods
docs/integrators.md registers behave as the page says."""

import re
from pathlib import Path

import pytest
import torch

import ei_toolkit as ei

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
# pages whose blocks another test runs (with checks of its own), by that test's file and name
RUN_ELSEWHERE = {
    "docs/diffusers_tutorial.md": ("tests/test_pipelines.py", "test_the_tutorial_runs_as_written"),
    "docs/stochastic.md": ("tests/test_adapters.py", "test_the_stochastic_page_runs_in_seconds"),
    "docs/integrators.md": ("tests/test_docs.py", "integrators_page"),
    "docs/likelihood.md": ("tests/test_likelihood.py", "test_the_likelihood_page_runs_as_written"),
    "README.md": ("tests/test_docs.py", "test_the_readme_python_snippet_runs"),
    "docs/flow.md": ("tests/test_flow.py", "test_the_flow_page_runs_as_written"),
}
FENCES = {"python", "bash", "text", "console", "json", "toml", "yaml"}  # python runs; the others are not code to run


def blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def fences(path: Path) -> list[tuple[int, str]]:
    """(line number, language) of every opening fence of a markdown page."""
    out, inside = [], False
    for i, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if not inside:
                out.append((i, stripped[3:].strip()))
            inside = not inside
    return out


@pytest.mark.parametrize("page", PAGES)
def test_every_fence_says_what_it_holds(page):
    bad = [(line, lang or "(none)") for line, lang in fences(ROOT / page) if lang not in FENCES]
    assert not bad, f"{page}: fences at lines {bad}: use ```python (run by the tests) or one of {sorted(FENCES)}"
    for code in blocks(ROOT / page):
        assert not re.search(r"^\s*(>>>|\.\.\.) ", code, flags=re.M), f"{page}: a >>> transcript in a python fence"


def test_every_page_with_python_is_run():
    for page in PAGES:
        if not blocks(ROOT / page) or page in RUN_BY_THIS_FILE:
            continue
        assert page in RUN_ELSEWHERE, f"{page} has python blocks that no test runs"
    for file, name in RUN_ELSEWHERE.values():
        assert re.search(rf"def {name}\(", (ROOT / file).read_text()), (file, name)


def run_page(page: str) -> dict:
    ns: dict = {"__name__": "__docs__"}
    for code in blocks(ROOT / page):
        exec(compile(code, page, "exec"), ns)  # the project's own documentation
    return ns


RUN_BY_THIS_FILE = ["docs/custom_process.md", "docs/dopri5.md", "docs/sde.md"]


@pytest.mark.parametrize("page", RUN_BY_THIS_FILE)
def test_the_page_runs_as_written(page):
    ns = run_page(page)
    if page == "docs/custom_process.md":
        assert ns["x0"].shape == ns["x"].shape and torch.isfinite(ns["x0"]).all()
        assert ns["u0"].shape == ns["u"].shape == (64, 2, 2) and torch.isfinite(ns["u0"]).all()
    elif page == "docs/dopri5.md":
        assert ns["sol"].nfe > 0 and ns["x0"].shape == ns["x"].shape and torch.isfinite(ns["x0"]).all()
    elif page == "docs/sde.md":  # the outputs the page shows are what the code prints
        text, sde = (ROOT / page).read_text(), ns["sde"]
        assert all(f"'{k}': '{v}'" in text for k, v in sde.how.items())
        assert f"# {sde.symbolic.rho}\n" in text and f"# {sde.symbolic.evaluated('rho')}\n" in text


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
    assert run_page("README.md")


def test_the_alias_table_is_the_registry():
    """docs/integrators.md's alias table lists exactly ei.integrators.ALIASES, each with its canonical method."""
    text = (ROOT / "docs" / "integrators.md").read_text()
    rows = dict(re.findall(r"^\| `([\w-]+)` \| `([\w-]+)` \| (?:exact|closest):", text, flags=re.M))
    assert rows == dict(ei.integrators.ALIASES)

