"""The CLI's calibration folder holds statistics of one model: ``sample --calibration`` and ``calibrate`` refuse
statistics estimated from another (or a retrained) model instead of using them silently (issue 25)."""

import pytest
import torch

import ei_toolkit as ei
from ei_toolkit.cli import main
from ei_toolkit.cli.calibrate import STATISTICS_NAME
from ei_toolkit.models import load_digits_model


@pytest.mark.parametrize("command", [["sample", "--n", "2", "--nfe", "5"], ["calibrate", "--nfe", "5"]])
def test_statistics_of_another_model_are_refused(tmp_path, capsys, command):
    sde = ei.DiscreteVP.linear()
    xs = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        stats = ei.model_statistics(load_digits_model(), xs, sde, nodes=12, probes=1, model_id="another-model")
    cal = tmp_path / "cal"
    cal.mkdir()
    stats.save(cal / STATISTICS_NAME)
    where = "--calibration" if command[0] == "sample" else "--out"
    with pytest.raises(SystemExit) as info:
        main([*command, where, str(cal)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert STATISTICS_NAME in err and "another-model" in err, err
