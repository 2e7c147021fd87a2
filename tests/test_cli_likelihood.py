"""``ei-toolkit likelihood`` (issue 23): bits per dimension of held-out digits under the shipped model; the
Hutchinson estimate agrees with the exact divergence within its statistical error; user errors are one line."""

import re

import pytest

from ei_toolkit.cli import main


def bits(out):
    m = re.search(r"bits per dimension: ([0-9.]+) \+- ([0-9.]+)", out)
    return float(m.group(1)), float(m.group(2))


def test_likelihood_reports_bits_per_dimension(capsys):
    assert main(["likelihood", "--n", "8", "--nfe", "16"]) == 0
    out = capsys.readouterr().out
    assert "8 held-out digits (dequantised)" in out and "NFE 16, exact divergence" in out
    exact, err = bits(out)
    # a uniform density on [-1, 1] has 1 bit per dimension, plus the offset log2(16 / 2) = 3: the model beats 4
    assert 0 < exact < 4 and err > 0
    assert main(["likelihood", "--n", "8", "--nfe", "16", "--divergence", "rademacher", "--probes", "4"]) == 0
    hutch, _ = bits(capsys.readouterr().out)
    assert abs(hutch - exact) < 0.5  # the same digits and dequantisation: only the trace estimate differs


@pytest.mark.parametrize(("argv", "message"), [
    (["likelihood", "--n", "0"], r"argument --n: expected a positive integer"),
    (["likelihood", "--n", "100000"], r"--n: there are 360 held-out digits; got 100000"),
    (["likelihood", "--divergence", "exactly"], r"--divergence: unknown divergence 'exactly'"),
    (["likelihood", "--probes", "3"], r"--probes sets Hutchinson's probes"),
    (["likelihood", "--method", "sddim"], r"sddim"),
])
def test_likelihood_user_errors_are_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert re.search(message, err), err
