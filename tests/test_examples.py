"""Every script in examples/ runs as a user runs it (``python examples/NAME.py``, in a temporary working directory),
the training scripts with a few steps; none writes into the package."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MODELS = ROOT / "ei_toolkit" / "models"

# script -> (arguments that keep it short, what its output must contain, the files it must write into the cwd)
RUNS: dict[str, tuple[list[str], str, list[str]]] = {
    "compare_dopri5.py": ([], "NFE   10: RMS error", []),
    "custom_integrator.py": ([], "rhoab2-by-hand", []),
    "custom_matrix_sde.py": ([], "tab3  NFE  40", []),
    "custom_sde.py": ([], "x(t_min) from the rho-ODE", []),
    "diffusers_deis_10_steps.py": ([], "DDPMPipeline with EIScheduler", []),
    "stochastic_sampling.py": ([], "sddim with 400 steps vs torchsde srk", []),
    # the default --out: a file in the current directory
    "train_digits.py": (["--steps", "3", "--batch", "8"], "saved digits_eps.pt", ["digits_eps.pt"]),
    "train_digits_classifier.py": (["--steps", "3", "--out", "cls.pt"], "saved cls.pt", ["cls.pt"]),
    "train_digits_cond.py": (["--steps", "3", "--batch", "8", "--out", "cond.pt"], "saved cond.pt", ["cond.pt"]),
    "train_digits_flow.py": (["--steps", "3", "--batch", "8"], "saved digits_flow.pt", ["digits_flow.pt"]),
    "train_patches.py": (["--form", "flow", "--steps", "3", "--batch", "4"], "saved patches_flow.pt",
                         ["patches_flow.pt"]),
}
NEEDS = {"diffusers_deis_10_steps.py": "diffusers", "train_digits.py": "sklearn",
         "train_digits_classifier.py": "sklearn", "train_digits_cond.py": "sklearn", "train_digits_flow.py": "sklearn",
         "train_patches.py": "sklearn PIL"}  # the modules each needs, space-separated


def run_example(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def shipped_digests() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(MODELS.glob("*.pt"))}


def test_every_example_is_run_here():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(RUNS)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_example_runs(name, tmp_path):
    for module in NEEDS.get(name, "").split():
        pytest.importorskip(module)
    args, expected, writes = RUNS[name]
    before = shipped_digests()
    res = run_example(name, args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert expected in res.stdout, res.stdout[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(writes)
    assert shipped_digests() == before  # the shipped weights are never overwritten


@pytest.mark.parametrize("name, extra", [("train_digits.py", []), ("train_digits_classifier.py", []),
                                         ("train_digits_cond.py", []), ("train_digits_flow.py", []),
                                         ("train_patches.py", ["--form", "eps"])])
def test_a_training_script_refuses_a_bad_out_before_training(name, extra, tmp_path):
    for module in NEEDS[name].split():
        pytest.importorskip(module)
    res = run_example(name, [*extra, "--out", str(tmp_path / "missing" / "w.pt")], tmp_path)
    assert res.returncode != 0 and "does not exist" in res.stderr and "step" not in res.stdout
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and res.stderr.startswith("--out ")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root writes anywhere: a directory no one can create files in
        ro = Path("/proc")
    if not ro.is_dir():
        pytest.skip("no directory here that this user cannot write to")
    res = run_example(name, [*extra, "--out", str(ro / "w.pt")], tmp_path)
    assert res.returncode != 0 and "cannot write there" in res.stderr and "step" not in res.stdout
