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


def _k_diffusion_or_skip():
    from peers import load_k_diffusion_sampling

    try:
        load_k_diffusion_sampling()
    except ImportError:
        pytest.skip("k-diffusion is not installed")


@pytest.mark.parametrize("sde", [SDE, ei.EDM()], ids=["ddpm", "edm"])
def test_first_order_diffusers_peer_is_our_ddim_on_the_same_grid(sde):
    """DPM-Solver-1 is DDIM: the diffusers driver (VP-rescaled frame, explicit sigmas) reproduces our ddim on the
    logSNR grid, also for EDM, whose state is not in VP form."""
    pytest.importorskip("diffusers")
    from peers import diffusers_peer

    x = PROBLEM.sample_marginal(sde, sde.t_max, 16, torch.Generator().manual_seed(0))
    model = PROBLEM.eps_model(sde)
    out, t_end, used = diffusers_peer("DPMSolverSinglestepScheduler", "logSNR", 1, lower_order_final=True)(
        model, x, sde, 8)
    assert used == 8 and t_end == sde.t_min
    ours = ei.sample(model, x, sde, method="ddim", nfe=8, grid="uniform_logrho")
    torch.testing.assert_close(out, ours, rtol=1e-9, atol=1e-9)


def test_diffusers_and_k_diffusion_dpmpp_2m_agree_on_karras_sigmas():
    """Two independent drivers of DPM-Solver++(2M) (diffusers in the VP frame, k-diffusion in y = x / alpha) on
    the same Karras sigmas give the same result (20 steps: diffusers lowers no order; its update runs in float32)."""
    pytest.importorskip("diffusers")
    _k_diffusion_or_skip()
    from peers import PEERS

    sde = ei.EDM()
    x = PROBLEM.sample_marginal(sde, sde.t_max, 16, torch.Generator().manual_seed(0))
    model = PROBLEM.eps_model(sde)
    a, ta, na = PEERS["diffusers DPM++2M / karras"](model, x, sde, 20)
    b, tb, nb = PEERS["k-diffusion dpmpp_2m / karras"](model, x, sde, 20)
    assert na == nb == 20 and ta == pytest.approx(tb, rel=1e-12)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grid, peer_grid", [("quadratic_t", "time-quadratic"), ("uniform_logrho", "logSNR"),
                                             ("karras", "karras")])
@pytest.mark.parametrize("nfe, method, final", [(6, "x0-logrhoab1-mid-lof", "sigma_min"),
                                                (14, "x0-logrhoab1-mid-lof", "sigma_min"),
                                                (15, "x0-logrhoab1-mid", "sigma_min"),
                                                (20, "x0-logrhoab1-mid", "sigma_min"),
                                                (20, "x0-logrhoab1-mid-lof", "zero")])
def test_diffusers_dpmpp_2m_is_the_midpoint_method_with_its_lower_order_final(grid, peer_grid, nfe, method, final):
    """diffusers' DPMSolverMultistepScheduler (2M) lowers the last step to one point below 15 steps, and at any count
    with its default final_sigmas_type="zero": that is x0-logrhoab1-mid-lof; from 15 with "sigma_min" it is
    x0-logrhoab1-mid. Same grid, start and end (the peer sets its sigmas to ours, so final_sigmas_type only decides the
    last order); diffusers keeps its sigmas and coefficients in float32, so each step's update carries ~eps32 relative
    error of |x| <= 3: atol = 4 nfe eps32 3."""
    pytest.importorskip("diffusers")
    from peers import diffusers_peer

    x = PROBLEM.sample_marginal(SDE, SDE.t_max, 16, torch.Generator().manual_seed(0))
    theirs, t_end, used = diffusers_peer("DPMSolverMultistepScheduler", peer_grid, 2, final_sigmas_type=final)(
        MODEL, x, SDE, nfe)
    assert used == nfe and t_end == SDE.t_min
    ours = ei.sample(MODEL, x, SDE, method=method, nfe=nfe, grid=grid)
    torch.testing.assert_close(theirs, ours, rtol=0, atol=4 * nfe * torch.finfo(torch.float32).eps * 3)


def test_every_peer_counts_its_model_calls_and_ends_at_t_min():
    """NFE accounting checked independently of the drivers: a counting wrapper around the model."""
    pytest.importorskip("diffusers")
    from peers import available_peers

    sde = ei.EDM()
    x = PROBLEM.sample_marginal(sde, sde.t_max, 4, torch.Generator().manual_seed(0))
    base = PROBLEM.eps_model(sde)
    peers = available_peers()
    assert any("DPM++3S" in p for p in peers) and any("UniPC-bh2" in p for p in peers)
    for name, peer in peers.items():
        calls = [0]

        def model(y, t, calls=calls):
            calls[0] += 1
            return base(y, t)

        out, t_end, used = peer(model, x, sde, 5)
        assert used == calls[0], name
        assert used == (4 if "heun" in name else 5), name
        assert t_end == pytest.approx(sde.t_min, rel=1e-9) and torch.isfinite(out).all(), name


def test_singlestep_schedule_follows_the_official_orders_and_lambda_fractions():
    from peers import singlestep_orders, singlestep_times

    assert singlestep_orders(10, 3) == [3, 3, 3, 1] and singlestep_orders(6, 3) == [3, 2, 1]
    assert singlestep_orders(5, 3) == [3, 2] and singlestep_orders(5, 2) == [2, 2, 1]
    for n in range(1, 22):
        assert sum(singlestep_orders(n, 3)) == n and sum(singlestep_orders(n, 2)) == n
    times, order_list = singlestep_times(SDE, "logSNR", 10, 3)
    assert len(times) == 11 and order_list == [1, 2, 3] * 3 + [1]
    lr = SDE.rho(times).log()
    torch.testing.assert_close(lr[1] - lr[0], (lr[3] - lr[0]) / 3, rtol=1e-9, atol=0.0)  # inner stage at 1/3
    outer = lr[[0, 3, 6, 9, 10]]
    steps = outer[1:] - outer[:-1]
    torch.testing.assert_close(steps, steps.mean().expand(4), rtol=1e-9, atol=0.0)  # logSNR-uniform outer grid
    assert times[0] == SDE.t_max and times[-1] == SDE.t_min


def test_k_diffusion_heun_is_our_rhork_heun_on_karras_sigmas():
    _k_diffusion_or_skip()
    from peers import PEERS

    out, t_end, used = PEERS["k-diffusion heun / karras"](MODEL, X.double(), SDE, 10)
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
    with pytest.raises(SystemExit):
        main(["compare", "--methods", "nope"])
    assert "unknown method 'nope'" in capsys.readouterr().err


def test_command_line_describe(capsys):
    assert main(["describe", "--sde", "cosine"]) == 0
    assert "CosineVPSDE" in capsys.readouterr().out


def test_benchmark_compare_script_runs_the_peers(tmp_path, capsys):
    pytest.importorskip("diffusers")
    spec = importlib.util.spec_from_file_location("benchmarks_compare", BENCHMARKS / "compare.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "plot.png"
    assert script.main(["--n", "16", "--nfe", "10", "--methods", "ddim", "--sde", "edm", "--peers", "DPM++2M / logSNR",
                        "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "diffusers DPM++2M / logSNR" in text and "UniPC" not in text and out.stat().st_size > 1000
