"""The comparison harness and the peers (benchmarks/peers.py): the peer wrappers reproduce our own methods
where the mathematics is the same, and both command lines (``ei-toolkit compare``, ours only, and
``python benchmarks/compare.py``, with the peers) run end to end."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit import compare
from ei_toolkit.__main__ import main
from ei_toolkit.testing import get_problem

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # benchmarks/ holds scripts, not a package: `import peers` as they do

SDE = ei.DiscreteVP.linear()
PROBLEM = get_problem("gmm2d")
MODEL = PROBLEM.eps_model(SDE)
X = PROBLEM.sample_marginal(SDE, 999.0, 64, torch.Generator().manual_seed(0)).float()


def test_diffusers_ddim_is_our_ddim_on_its_timesteps():
    pytest.importorskip("diffusers")
    from peers import PEERS

    out, t_end, used = PEERS["diffusers DDIM"](MODEL, X, SDE, 10)
    assert used == 10 and abs(t_end) < 1e-3
    grid = torch.tensor([999, 899, 799, 699, 599, 499, 399, 299, 199, 99, 0], dtype=torch.float64)
    ours = ei.sample(MODEL, X, SDE, method="ddim", grid=grid)
    torch.testing.assert_close(out, ours, rtol=1e-4, atol=1e-4)


def test_k_diffusion_heun_is_our_rhork_heun_on_karras_sigmas():
    from peers import PEERS, load_k_diffusion_sampling

    try:
        load_k_diffusion_sampling()
    except ImportError:
        pytest.skip("k-diffusion is not installed")
    out, t_end, used = PEERS["k-diffusion heun"](MODEL, X.double(), SDE, 10)
    assert used == 10 and t_end == pytest.approx(0.0, abs=1e-9)
    ours = ei.sample(MODEL, X.double(), SDE, method="rhork-heun", nfe=10, grid="karras")
    torch.testing.assert_close(out, ours, rtol=1e-9, atol=1e-9)


def test_comparison_rows_and_tables():
    rows = compare.run_comparison(problems=["gmm2d"], nfes=[5, 10], n=64,
                                  pairs=[("ddim", "quadratic_t"), ("logrhoab2", "uniform_logrho")])
    assert len(rows) == 4 and all(r.ours and r.nfe_used == r.nfe for r in rows)
    by = {(r.sampler, r.nfe): r.median for r in rows}
    assert by[("logrhoab2 / uniform_logrho", 10)] < by[("ddim / quadratic_t", 10)]
    assert "logrhoab2 / uniform_logrho" in compare.full_table(rows, "gmm2d")
    assert "| gmm2d | 10 |" in compare.summary_table(rows)


def test_comparison_takes_peers_as_an_argument():
    def ddim_peer(model, x, sde, nfe):  # a stand-in peer: our DDIM on a uniform-t grid
        sol = ei.solve(model, x, sde, method="ddim", nfe=nfe, grid="uniform_t")
        return sol.x, sde.t_min, sol.nfe

    rows = compare.run_comparison(problems=["gmm2d"], nfes=[5], n=32, pairs=[("ddim", "uniform_t")],
                                  peers={"stand-in": ddim_peer})
    ours, peer = rows
    assert ours.ours and not peer.ours and peer.sampler == "stand-in" and peer.nfe_used == 5
    assert peer.median == pytest.approx(ours.median, rel=1e-6)
    assert "stand-in" in compare.summary_table(rows)
    with pytest.raises(ValueError, match="peers integrate from"):
        compare.run_comparison(problems=["gmm2d"], nfes=[5], n=8, pairs=[("ddim", "uniform_t")],
                               peers={"stand-in": ddim_peer}, t_end=10.0)


def test_command_line_compare_writes_a_plot(tmp_path, capsys):
    out = tmp_path / "plot.png"
    assert main(["--n", "32", "--nfe", "5", "10", "--methods", "ddim", "tab3", "--no-peers", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tab3 / uniform_logrho" in text and out.stat().st_size > 1000
    assert "python benchmarks/compare.py" in text  # where the comparison with peers lives
    with pytest.raises(SystemExit, match="unknown method 'nope'"):
        main(["compare", "--methods", "nope"])


def test_command_line_describe(capsys):
    assert main(["describe", "--sde", "cosine"]) == 0
    assert "CosineVPSDE" in capsys.readouterr().out


def test_benchmark_compare_script_runs_the_peers(tmp_path, capsys):
    pytest.importorskip("diffusers")
    spec = importlib.util.spec_from_file_location("benchmarks_compare", BENCHMARKS / "compare.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "plot.png"
    assert script.main(["--n", "16", "--nfe", "10", "--methods", "ddim", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "diffusers DDIM" in text and out.stat().st_size > 1000
