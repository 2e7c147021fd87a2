"""``ei-toolkit calibrate`` with the EMS-safety options (docs/math.md 4.11): --bootstrap, --shrink, --tolerance,
--heldout-draws, --on-failure. Every bad value is refused before any work; the report names the statistics' error,
the tables kept, the held-out ratios and the evaluations spent; a failed held-out check raises or falls back to the
base form's statistics and the default grid. Runs on digits, on a random-weight velocity model registered for the
test (the flow path without trained weights) and on the shipped digits-flow model when its weights exist."""

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit import grid_opt
from ei_toolkit.cli import main
from ei_toolkit.cli.calibrate import STATISTICS_NAME
from ei_toolkit.models import registry

SMALL = ["--draws", "16", "--nodes", "12", "--grid-draws", "4", "--max-solves", "6", "--nfe", "5"]


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--bootstrap", "1"], "--bootstrap: 0 (no error estimate) or an integer >= 2"),
    (["--bootstrap", "-2"], "--bootstrap: 0 (no error estimate) or an integer >= 2"),
    (["--bootstrap", "0"], "--shrink x0 needs the statistics' error"),
    (["--tolerance", "0"], "--tolerance: expected a positive finite number"),
    (["--tolerance", "nan"], "--tolerance: expected a positive finite number"),
    (["--tolerance", "inf"], "--tolerance: expected a positive finite number"),
    (["--bootstrap", "0", "--shrink", "none", "--tolerance", "0.1"], "--tolerance needs the statistics' error"),
    (["--heldout-draws", "1"], "--heldout-draws: 0 (no check) or an integer >= 2"),
    (["--heldout-draws", "-4"], "--heldout-draws: 0 (no check) or an integer >= 2"),
    (["--on-failure", "fallback"], "--on-failure decides what a failed held-out check does"),
    (["--shrink", "half"], "argument --shrink: invalid choice"),
    (["--on-failure", "ignore"], "argument --on-failure: invalid choice"),
    (["--bootstrap", "many"], "argument --bootstrap: invalid int value"),
])
def test_bad_values_are_refused_before_any_work(tmp_path, capsys, extra, message):
    out = tmp_path / "cal"
    code, err = run_main(["calibrate", *SMALL, "--out", str(out), *extra], capsys)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not out.exists()


def test_the_report_names_error_tables_checks_and_evaluations(tmp_path, capsys):
    out = tmp_path / "cal"
    argv = ["calibrate", *SMALL, "--tolerance", "0.5", "--heldout-draws", "4", "--on-failure", "fallback",
            "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for piece in ("relative bootstrap error", "tables: l ", "statistics: held-out check", "grid: held-out check",
                  "evaluations of one draw: statistics ", "statistics check", "grid check", "total"):
        assert piece in text, (piece, text)
    stats = ei.ModelStatistics.load(out / STATISTICS_NAME)
    assert stats.samples <= 16 and (out / "grid-ems-logrhoab1-pc-nfe5.json").is_file()


def _failing(*args, **kwargs):
    """A held-out check that always fails (the candidate twice the baseline's error)."""
    return grid_opt.HeldoutCheck(candidate="c", baseline="b", nfe=kwargs["nfe"], draws=len(args[1]), error=2.0,
                                 baseline_error=1.0, ratio=2.0, log_ratio_se=0.1, tolerance=0.0, passed=False,
                                 evaluations=3)


def test_a_failed_check_raises_or_falls_back(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(grid_opt, "heldout_check", _failing)
    out = tmp_path / "raise"
    code, err = run_main(["calibrate", *SMALL, "--heldout-draws", "4", "--out", str(out)], capsys)
    assert code == 2 and "worse than its base method" in err and "on_failure='fallback'" in err, err
    assert not (out / STATISTICS_NAME).exists()  # nothing written for the part that failed
    out = tmp_path / "fallback"
    assert main(["calibrate", *SMALL, "--heldout-draws", "4", "--on-failure", "fallback", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "replaced by those of the x0-logrhoab1-pc form" in text and "default grid was written instead" in text
    sde = ei.DiscreteVP.linear()
    stats = ei.ModelStatistics.load(out / STATISTICS_NAME, sde=sde)
    assert bool((stats.l == 1).all()) and bool((stats.b == 0).all())  # the x0 form: EMS is its base method
    method = ei.EMSAdams.named("ems-logrhoab1-pc", stats)
    grid = ei.load_grid(out / "grid-ems-logrhoab1-pc-nfe5.json", model=registry.shipped_model("digits").load("cpu"),
                        sde=sde, method=method, nfe=5)
    default = ei.time_grid(sde, "quadratic_t", 5, sde.t_max, sde.t0)
    torch.testing.assert_close(grid, default, rtol=0, atol=1e-12)


def _tiny_flow() -> registry.ShippedModel:
    from ei_toolkit.models.digits_flow import DigitsFlow

    def load(device):
        torch.manual_seed(0)
        return DigitsFlow().to(device).eval()

    return registry.ShippedModel("tiny-flow", "random-weight velocity model (test)", load, ei.RectifiedFlow, "flow",
                                 (1, 8, 8), "train_digits_flow.py")


@pytest.mark.parametrize("name", ["tiny-flow", "digits-flow"])
def test_flow_models_calibrate_to_the_data(tmp_path, capsys, monkeypatch, name):
    monkeypatch.setitem(registry._FACTORIES, "tiny-flow", _tiny_flow)
    entry = registry.shipped_model(name)  # digits-flow's weights ship in the package: missing is a failure
    model = entry.load("cpu")
    out = tmp_path / "cal"
    assert main(["calibrate", "--model", name, *SMALL, "--heldout-draws", "4", "--on-failure", "fallback",
                 "--out", str(out)]) == 0
    assert f"--model {name} --calibration" in capsys.readouterr().out
    flow = entry.sde()
    stats = ei.ModelStatistics.load(out / STATISTICS_NAME, sde=flow, model=model)
    method = ei.EMSAdams.named("ems-logrhoab1-pc", stats)
    grid = ei.load_grid(out / "grid-ems-logrhoab1-pc-nfe5.json", model=model, sde=flow, method=method, nfe=5)
    assert float(grid[-1]) == 0.0 and float(grid[0]) == flow.t_terminal  # from pure noise (t = 1) to the data
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = ei.sample(model, z, flow, method=method, grid=grid, prediction="flow")
    assert bool(torch.isfinite(x).all())
