"""``ei-toolkit invert`` (issue 22): held-out digits encoded by the shipped model and decoded again; with --exact the
round trip is exact to its tolerance; user errors are one line."""

import re

import pytest

from ei_toolkit.cli import main


def test_invert_reports_the_reconstruction_error(capsys):
    assert main(["invert", "--n", "8", "--nfe", "20"]) == 0
    out = capsys.readouterr().out
    assert "8 held-out digits encoded with x0-logrhoab1 on the uniform_logrho grid NFE 20" in out
    median = float(re.search(r"median ([0-9.e+-]+)", out).group(1))
    assert 0 < median < 0.5  # a drift, not an exact round trip


def test_invert_exact_round_trips_to_its_tolerance(capsys):
    assert main(["invert", "--n", "4", "--nfe", "10", "--method", "logrhoab2", "--exact", "--tol", "1e-9"]) == 0
    out = capsys.readouterr().out
    assert "exactly (tol 1e-09" in out
    worst = float(re.search(r"max ([0-9.e+-]+)", out).group(1))
    assert worst <= 1e-9


@pytest.mark.parametrize(("argv", "message"), [
    (["invert", "--n", "0"], r"argument --n: expected a positive integer"),
    (["invert", "--n", "100000"], r"--n: there are 360 held-out digits; got 100000"),
    (["invert", "--method", "logrhoab9"], r"--method: unknown method 'logrhoab9'"),
    (["invert", "--grid", "foo"], r"--grid: unknown grid 'foo'"),
    (["invert", "--tol", "1e-9"], r"--tol sets the round trip's tolerance of --exact; add --exact"),
    (["invert", "--method", "sddim"], r"'sddim' is stochastic"),
])
def test_invert_user_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert re.search(message, err), err
