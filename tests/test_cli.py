"""The command line: user errors get one line ``ei-toolkit: error: ...`` and exit status 2, never a traceback; every
option documents its default; sddim's noise is reachable."""

import subprocess
import sys

import pytest

from ei_toolkit.cli import main


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    return info.value.code, captured.err


@pytest.mark.parametrize(("argv", "message"), [
    (["sample", "--grid", "foo"], r"--grid: unknown grid 'foo'; valid grids: uniform_t"),
    (["sample", "--nfe", "0"], r"argument --nfe: expected a positive integer; got '0'"),
    (["sample", "--nfe", "ten"], r"argument --nfe: expected a positive integer"),
    (["sample", "--n", "2", "--method", "rhork-rk4", "--nfe", "10"], r"nfe=10 is not possible for 'rhork-rk4'"),
    (["sample", "--method", "nope"], r"--method: unknown method 'nope'"),
    (["sample", "--lam", "1"], r"--lam/--eta set the noise of a stochastic method"),
    (["sample", "--method", "sddim", "--lam", "1", "--eta", "0.5"], r"give --lam or --eta, not both"),
    (["sample", "--n", "2", "--method", "sddim", "--eta", "2"], r"eta must lie in \[0, 1\]"),
    (["sample", "--n", "2", "--method", "sddim", "--lam", "-1"], r"lam must be a finite number >= 0"),
    (["sample", "--out", "/nonexistent-dir/x.png"], r"--out '/nonexistent-dir/x.png': the directory"),
    (["compare", "--problem", "foo"], r"--problem: unknown problem 'foo'; valid problems: gmm2d"),
    (["compare", "--methods", "foo"], r"--methods: unknown method 'foo'"),
    (["compare", "--grids", "foo"], r"--grids: unknown grid 'foo'"),
    (["compare", "--sde", "foo"], r"--sde: unknown SDE 'foo'"),
    (["compare", "--out", "/nonexistent-dir/c.png"], r"--out '/nonexistent-dir/c.png': the directory"),
    (["describe", "--param", "a"], r"--param sets parameters of a custom SDE"),
    (["describe", "--drift=-a", "--diffusion=1", "--param", "a"], r"--param 'a': expected NAME=VALUE"),
    (["describe", "--drift=-a", "--diffusion=1", "--param", "a=one"], r"--param 'a=one': VALUE must be a number"),
    (["describe", "--drift=-a", "--diffusion=1", "--param", "a=1", "--param", "a=2"], r"--param a is given twice"),
    (["describe", "--sde", "ve", "--drift=-1", "--diffusion=1"], r"--sde names a built-in SDE; --drift/--diff"),
    (["describe", "--drift=-1"], r"give both --drift and --diffusion"),
    (["describe", "--drift=-1", "--diffusion=t^2"], r"diffusion uses \^ in 't\^2': write powers with \*\*"),
    (["describe", "--drift=-1", "--diffusion=1", "--t-max", "nan"], r"argument --t-max: expected a finite number"),
    (["describe", "--drift=-1", "--diffusion=1", "--t-max", "0"], r"t_max must be greater than t0"),
    (["describe", "--sde", "foo"], r"--sde: unknown SDE 'foo'"),
    (["sample", "--calibration", "/nonexistent-dir"], r"--calibration '/nonexistent-dir': no statistics.pt there"),
    (["sample", "--calibration", "x", "--grid", "quadratic_t"], r"--calibration brings its own grid"),
    (["calibrate", "--out", "/nonexistent-dir/cal"], r"--out '/nonexistent-dir/cal': the directory"),
    (["calibrate", "--method", "logrhoab2"], r"--method: with a calibration the method is an EMS method"),
])
def test_user_errors_exit_2_with_one_line(argv, message, capsys):
    import re

    code, err = run_main(argv, capsys)
    assert code == 2
    assert re.search(message, err), err
    assert "Traceback" not in err
    assert re.search(r"^ei-toolkit( \w+)?: error: ", err.splitlines()[-1])


def test_no_traceback_from_the_installed_entry_point():
    res = subprocess.run([sys.executable, "-m", "ei_toolkit", "sample", "--grid", "foo"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.startswith("ei-toolkit: error: --grid: unknown grid 'foo'") and "Traceback" not in res.stderr


@pytest.mark.parametrize("command", ["compare", "sample", "describe", "calibrate"])
def test_every_option_has_help_with_its_default(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    options = text.split("options:")[1]
    # each option's entry (from one '  --' to the next) states a default, except --help and no-op flags
    entries = [e for e in options.split("\n  -") if e.strip() and not e.startswith("h, --help")]
    assert entries
    for entry in entries:
        if entry.startswith("-no-peers"):
            continue
        assert "default" in " ".join(entry.split()), entry


def test_sddim_lam_and_eta_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "d.png"
    assert main(["sample", "--n", "2", "--nfe", "4", "--method", "sddim", "--lam", "0.5", "--out", str(out)]) == 0
    assert "sddim(lam=0.5)" in capsys.readouterr().out and out.exists()
    assert main(["sample", "--n", "2", "--nfe", "4", "--method", "sddim", "--eta", "0.3", "--out", str(out)]) == 0
    assert "sddim(eta=0.3)" in capsys.readouterr().out


def test_custom_sde_with_parameters_is_described(capsys):
    assert main(["describe", "--drift=-a", "--diffusion=1", "--param", "a=2"]) == 0
    assert "LinearSDE(a=2.0)" in capsys.readouterr().out


def test_calibrate_refuses_a_bad_method_before_any_work(tmp_path, capsys):
    code, err = run_main(["calibrate", "--method", "logrhoab2", "--out", str(tmp_path / "cal")], capsys)
    assert code == 2 and "--method: with a calibration the method is an EMS method" in err
    assert not (tmp_path / "cal").exists()  # refused before the statistics were estimated and written


def test_calibrate_then_sample_with_the_calibration(tmp_path, capsys):
    """calibrate writes the statistics once and a grid per (method, NFE); sample --calibration runs that method on
    that grid (the same digits as ei.sample with the loaded method and grid) and names what is missing."""
    import torch

    import ei_toolkit as ei
    from ei_toolkit.cli.calibrate import calibrated
    from ei_toolkit.models import load_digits_model

    cal = tmp_path / "cal"
    small = ["--draws", "16", "--nodes", "12", "--grid-draws", "4", "--max-solves", "6", "--out", str(cal)]
    assert main(["calibrate", "--nfe", "5", *small]) == 0
    assert main(["calibrate", "--nfe", "6", "--method", "ems-logrhoab0-pc", *small]) == 0
    out = capsys.readouterr().out
    assert "statistics.pt (kept" in out and (cal / "grid-ems-logrhoab0-pc-nfe6.json").is_file()
    assert main(["sample", "--n", "3", "--nfe", "5", "--calibration", str(cal), "--out", str(tmp_path / "d.png")]) == 0
    assert "ems-logrhoab1-pc on the grid calibrated" in capsys.readouterr().out
    model, sde = load_digits_model(), ei.DiscreteVP.linear()
    method, grid = calibrated(str(cal), 5, None, model, sde)
    assert float(grid[-1]) == sde.t0 and len(grid) == 6  # to the data, as sample draws
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(ei.sample(model, x, sde, method=method, grid=grid)).all())
    code, err = run_main(["sample", "--nfe", "7", "--calibration", str(cal)], capsys)
    assert code == 2 and "no grid for NFE 7" in err and "grid-ems-logrhoab1-pc-nfe5.json" in err
    code, err = run_main(["sample", "--nfe", "5", "--method", "ems-logrhoab2", "--calibration", str(cal)], capsys)
    assert code == 2 and "no grid for ems-logrhoab2 at NFE 5" in err


def _rows_with_many_peers():
    from ei_toolkit.compare import Row

    rows = []
    for nfe in (5, 10, 20):
        for i, s in enumerate(("ddim / quadratic_t", "tab3 / uniform_logrho", "logrhoab2 / uniform_logrho")):
            rows.append(Row("gmm2d", s, True, nfe, nfe, 0.1 / nfe ** (i + 1), 0.1 / nfe ** (i + 1), 0.0, 0.0))
        for k in range(40):  # as many peers as benchmarks/peers.py has
            used = nfe - 1 if k == 0 else nfe
            rows.append(Row("gmm2d", f"lib{k % 2} peer{k}", False, nfe, used, 0.2 / nfe * (1 + k / 10),
                            0.2 / nfe * (1 + k / 10), 0.0, 0.0))
    return rows


def test_the_comparison_plot_is_readable(tmp_path):
    """The main job's picture: one short legend (ours, the two envelopes, the peers as one family) inside the figure,
    clear of the axis labels; the peers faint grey; the plot file is written."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from ei_toolkit import compare

    rows = _rows_with_many_peers()
    fig = compare.figure(rows)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[:2] == ["ei_toolkit best at each NFE", "best peer at each NFE"]
    assert len(labels) == 3 + 3 + 1 and labels[-1] == "each peer (40: lib0, lib1)"
    box, fig_box = legend.get_window_extent(renderer), fig.bbox
    assert fig_box.x0 <= box.x0 and box.x1 <= fig_box.x1 and fig_box.y0 <= box.y0 and box.y1 <= fig_box.y1
    ax = fig.axes[0]
    for text in (ax.xaxis.label, ax.yaxis.label, ax.title):
        t = text.get_window_extent(renderer)
        assert not t.overlaps(box), text.get_text()
        assert fig_box.x0 <= t.x0 and t.x1 <= fig_box.x1 and fig_box.y0 <= t.y0 and t.y1 <= fig_box.y1
    assert ax.get_xlabel().startswith("NFE")
    greys = [line for line in ax.get_lines() if line.get_color() == compare.PEER_COLOUR]
    assert len(greys) == 40 and all(line.get_alpha() < 0.5 for line in greys)
    ours = [line for line in ax.get_lines() if line.get_label() in labels[3:6]]
    assert len({line.get_color() for line in ours}) == 3 and len({line.get_marker() for line in ours}) == 3
    plt.close(fig)
    assert compare.plot(rows, tmp_path / "c.png").stat().st_size > 10_000


def test_the_comparison_tables_explain_their_cells():
    from ei_toolkit import compare

    rows = _rows_with_many_peers()
    rows = [r for r in rows if not (r.sampler.startswith("tab3") and r.nfe == 10)]
    table = compare.full_table(rows, "gmm2d")
    assert "(4)" in table and "| - |" in table
    assert "(k): the sampler made k model evaluations instead of the column's NFE" in table
    assert "-: the method cannot run with exactly that NFE" in table
    assert "median ratio: best ei_toolkit / best peer" in compare.summary_table(rows)
    plain = compare.full_table([r for r in rows if r.ours and r.nfe != 10], "gmm2d")
    assert "(k)" not in plain and "-:" not in plain  # no footnote without such cells


@pytest.mark.parametrize("shape", [(3, 1, 16, 16), (3, 8), (64,), (3, 2, 8, 8)])
def test_the_shipped_models_name_a_bad_input_shape(shape):
    import torch

    from ei_toolkit.models import DigitsCondEps, DigitsEps, load_digits_model
    from ei_toolkit.models.classifier import DigitsClassifier

    x = torch.zeros(shape)
    for name, net in (("DigitsEps", load_digits_model()), ("DigitsCondEps", DigitsCondEps()),
                      ("DigitsClassifier", DigitsClassifier())):
        with pytest.raises(ValueError, match=rf"{name}: x must have shape \(batch, 1, 8, 8\) or \(batch, 64\)"):
            net(x) if name == "DigitsClassifier" else net(x, torch.tensor(10.0))
    with pytest.raises(ValueError, match=r"DigitsEps: t must hold one time or one per sample \(2\); got 3 times"):
        DigitsEps()(torch.zeros(2, 1, 8, 8), torch.zeros(3))


def test_bare_command_prints_the_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ei-toolkit") and "compare" in out and "calibrate" in out and "--threads" in out


def test_compare_without_matplotlib_says_what_to_install_before_any_work(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    code, err = run_main(["compare", "--n", "4", "--nfe", "5", "--out", str(tmp_path / "c.png")], capsys)
    assert code == 2 and "pip install 'ei_toolkit[bench]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize(("argv", "hint"), [
    (["sample", "--method", "logrhoab"], "did you mean 'logrhoab3'?"),
    (["sample", "--method", "DDIM"], "did you mean 'ddim'?"),
    (["sample", "--grid", "quadratic"], "did you mean 'quadratic_t'?"),
    (["compare", "--methods", "ddim", "sdim"], "did you mean 'sddim'?"),
    (["compare", "--problem", "gmm64sharp"], "did you mean 'gmm64-sharp'?"),
])
def test_typos_get_a_did_you_mean(argv, hint, capsys):
    code, err = run_main(argv, capsys)
    assert code == 2 and err.rstrip().endswith(hint), err


def test_get_integrator_suggests_the_closest_name():
    import torch

    import ei_toolkit as ei
    from ei_toolkit.integrators import get_integrator

    with pytest.raises(ValueError, match=r"unknown method 'rhork_heun'; valid methods: ddim.*mean 'rhork-heun'\?"):
        get_integrator("rhork_heun")
    with pytest.raises(ValueError, match=r"unknown torchdiffeq method 'dopri'.*did you mean 'torchdiffeq:dopri"):
        get_integrator("torchdiffeq:dopri")
    with pytest.raises(ValueError, match=r"valid methods: [^?]*$"):  # nothing close: no guess
        get_integrator("xyzzy")
    with pytest.raises(ValueError, match=r"did you mean 'tab3'"):
        ei.sample(lambda x, t: x, torch.zeros(2, 1), ei.VPSDE(), method="tab4")


def _read_only_dir(tmp_path):
    import os
    from pathlib import Path

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").touch()
    except OSError:
        return ro
    (ro / "probe").unlink()  # root writes anywhere: a directory no one can create files in
    if os.path.isdir("/proc"):
        return Path("/proc")
    pytest.skip("no directory here that this user cannot write to")


@pytest.mark.parametrize("argv", [
    ["sample", "--n", "2", "--out", "{ro}/d.png"],
    ["compare", "--n", "4", "--nfe", "5", "--out", "{ro}/c.png"],
    ["calibrate", "--nfe", "5", "--out", "{ro}/cal"],
    ["generate", "-n", "4", "--out", "{ro}/shards"],
    ["generate", "-n", "4", "--out", "{ro}/new/deeper/shards"],
])
def test_read_only_outputs_are_refused_before_the_work(argv, tmp_path, monkeypatch, capsys):
    from ei_toolkit import compare, models
    from ei_toolkit.models import digits

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")

    monkeypatch.setattr(models, "load_digits_model", no_work)
    monkeypatch.setattr(digits, "load_digits_model", no_work)  # what the registry's digits entry loads
    monkeypatch.setattr(compare, "run_comparison", no_work)
    ro = _read_only_dir(tmp_path)
    code, err = run_main([a.format(ro=ro) for a in argv], capsys)
    assert code == 2 and f"--out '{ro}/" in err and "cannot write there" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_calibrate_writes_to_the_user_cache_by_default(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    small = ["--draws", "8", "--nodes", "8", "--grid-draws", "2", "--max-solves", "3"]
    assert main(["calibrate", "--nfe", "5", *small]) == 0
    folder = tmp_path / "cache" / "ei_toolkit" / "digits_calibration"
    assert (folder / "statistics.pt").is_file() and (folder / "grid-ems-logrhoab1-pc-nfe5.json").is_file()
    assert f"ei-toolkit sample --calibration {folder} --nfe 5" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # nothing in the working directory


def test_threads_default_to_one_unless_asked(monkeypatch, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        assert main(["describe", "--sde", "vp"]) == 0 and torch.get_num_threads() == 1
        assert main(["describe", "--sde", "vp", "--threads", "2"]) == 0 and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's setting stands
        assert main(["describe", "--sde", "vp"]) == 0 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()


def test_the_roundoff_warning_suggests_a_grid_other_than_the_one_in_use(tmp_path, capsys):
    from ei_toolkit.errors import RoundoffWarning

    with pytest.warns(RoundoffWarning) as record:
        assert main(["sample", "--n", "2", "--nfe", "4", "--method", "logrhoab1-mid", "--grid", "uniform_logrho",
                     "--out", str(tmp_path / "d.png")]) == 0
    text = str(record[0].message)
    assert "on the uniform_logrho grid" in text and "e.g. uniform_logrho" not in text and "e.g. quadratic_t" in text
    capsys.readouterr()


def test_the_benchmark_compare_script_reports_usage_errors_in_one_line(tmp_path):
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"
    res = subprocess.run([sys.executable, str(script), "--no-peers", "--methods", "logrhoab"], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and res.stderr.strip().endswith("'logrhoab3'?")
    assert not list(tmp_path.iterdir())
