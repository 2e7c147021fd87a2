"""The package's shape: no import cycles (module-level or inside functions), adapters below sampling, caches keyed by
value, one registry for every kind of method, and Solution.stats filled."""

import ast
from pathlib import Path

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.integrators import ExponentialAdams, plan_for
from ei_toolkit.testing import get_problem

PACKAGE = Path(ei.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every import of a package module by a package module, wherever it stands in the file."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".")
                    base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # `from pkg import sub` imports the submodule; `from pkg import name` what pkg/__init__ defines
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for t in targets:
                if t in modules and t != name:
                    graph[name].add(t)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*stack[stack.index(n):], n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_sampling_depends_on_adapters_and_not_the_reverse():
    graph = import_graph()
    assert "ei_toolkit.sampling" not in graph["ei_toolkit.adapters"]
    assert "ei_toolkit.integrators" not in graph["ei_toolkit.adapters"]
    below = graph["ei_toolkit.model"] | graph["ei_toolkit.solution"]
    assert not any(d.startswith("ei_toolkit.sampling") for d in below)


def test_plans_are_cached_by_value_not_by_object_identity():
    """Integrators built in a loop (so that objects are freed and their addresses reused) get the plan of their own
    configuration, every time."""
    sde = ei.VPSDE()
    grid = ei.time_grid(sde, "quadratic_t", 8, sde.t_max, sde.t_min)
    expected = {}
    for k in range(1, 5):
        for lof in (False, True):
            ref = ExponentialAdams("mine", k, "t", "quadratic_t", lower_order_final=lof).plan(sde, grid)
            expected[(k, lof)] = ref.weights
    wrong = 0
    for _ in range(3):
        for k in range(1, 5):
            for lof in (False, True):
                plan = plan_for(ExponentialAdams("mine", k, "t", "quadratic_t", lower_order_final=lof), sde, grid)
                wrong += plan.weights != expected[(k, lof)]
    assert wrong == 0


def test_plan_and_grid_caches_are_bounded():
    from ei_toolkit.integrators import base

    sde = ei.VPSDE()
    for n in range(1, base.CACHE_SIZE + 20):
        plan_for(ei.INTEGRATORS["ddim"], sde, ei.time_grid(sde, "uniform_t", n, 1.0, 0.5))
    assert len(base._PLANS) <= base.CACHE_SIZE


def test_one_registry_holds_every_kind_of_method():
    kinds = {(m.stochastic, m.black_box, m.matrix) for m in ei.INTEGRATORS.values()}
    assert (True, False, False) in kinds  # sddim
    assert (False, True, True) in kinds  # torchdiffeq:*
    assert (False, False, True) in kinds  # ddim, tab*
    assert (False, False, False) in kinds  # rhoab*, rhork-*
    assert {"sddim", "rhork-rk4-38", "torchdiffeq:dopri5", "tab3"} <= set(ei.INTEGRATORS)


def test_solution_stats_are_filled():
    sde = ei.VPSDE()
    mix = get_problem("gmm2d")
    x = mix.sample_marginal(sde, 1.0, 4)
    sol = ei.solve(mix.eps_model(sde), x, sde, method="rhork-heun", nfe=8)
    assert sol.stats["nfe"] == 8 and sol.stats["steps"] == 4 and sol.stats["grid"] == "quadratic_t"
    assert sol.stats["seconds"] > 0
    sol = ei.solve(mix.eps_model(sde), x, sde, method="torchdiffeq:dopri5", options={"rtol": 1e-4, "atol": 1e-4})
    assert sol.stats["nfe"] == sol.nfe > 0 and sol.stats["grid"] == "adaptive"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_state_is_integrated_in_float32(dtype):
    """The model gets x's dtype; the state is kept in float32, so the error does not grow with NFE."""
    sde = ei.VPSDE()
    mix = get_problem("gmm2d")
    x = mix.sample_marginal(sde, 1.0, 64, torch.Generator().manual_seed(0))
    ref = mix.reference(sde, x, sde.t_max, sde.t_min)
    model = mix.eps_model(sde)
    seen = set()

    def spy(y, t):
        seen.add(y.dtype)
        return model(y, t)

    errs = [(ei.sample(spy, x.to(dtype), sde, method="ddim", nfe=n).double() - ref).abs().max().item()
            for n in (50, 500)]
    assert seen == {dtype}
    assert errs[1] < errs[0], errs


def test_the_core_imports_nothing_from_the_diffusion_client():
    """sampling, the integrators, the zero-SNR start and the SDE layer sit below ``ei_toolkit.diffusion``: the
    client may import them, never the reverse (wherever the import stands in the file)."""
    graph = import_graph()
    core = [m for m in graph if m in ("ei_toolkit.sampling", "ei_toolkit.zero_snr", "ei_toolkit.model",
                                      "ei_toolkit.solution", "ei_toolkit.grids")
            or m.startswith(("ei_toolkit.integrators", "ei_toolkit.sde"))]
    assert "ei_toolkit.sampling" in core and "ei_toolkit.integrators.base" in core
    upward = {m: sorted(d for d in graph[m] if d.startswith("ei_toolkit.diffusion")) for m in core}
    assert not {m: d for m, d in upward.items() if d}, upward


def test_the_library_never_imports_its_command_line():
    graph = import_graph()
    outside = [m for m in graph if not m.startswith("ei_toolkit.cli") and m != "ei_toolkit.__main__"]
    users = {m: sorted(d for d in graph[m] if d.startswith("ei_toolkit.cli")) for m in outside}
    assert not {m: d for m, d in users.items() if d}, users


def test_png_files_are_written_by_pillow_not_by_hand():
    """Issue 25's layout: the hand-written PNG encoder (zlib + struct chunks) gave way to Pillow."""
    tree = ast.parse((PACKAGE / "png.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "PIL" in imported and not imported & {"zlib", "struct", "binascii"}, imported


def test_command_line_outputs_are_ignored_and_none_is_tracked():
    """Issue 25: digits.png, a calibration folder, the main job's picture and training outputs written at the
    checkout's top level are ignored by git, and none is committed (digits_calibration/statistics.pt once was)."""
    import shutil
    import subprocess

    root = PACKAGE.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    outputs = ["digits.png", "digits_calibration/statistics.pt", "ei_toolkit_compare.png", "digits_eps.pt",
               "patches_calibration/grid.json"]
    ignored = subprocess.run(["git", "check-ignore", *outputs], cwd=root, capture_output=True, text=True).stdout.split()
    assert sorted(ignored) == sorted(outputs)
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    assert not [p for p in tracked if p.endswith((".png", ".pt")) and not p.startswith(("ei_toolkit/models/",
                                                                                         "docs/", "benchmarks/"))]
