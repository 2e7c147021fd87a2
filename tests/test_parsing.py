"""Coefficient strings are parsed by a whitelist that never evaluates Python (ei_toolkit.sde.parsing)."""

import subprocess
import sys

import numpy as np
import pytest
import sympy as sp
from sympy.parsing.sympy_parser import parse_expr

import ei_toolkit as ei
from ei_toolkit.sde.derive import T
from ei_toolkit.sde.matrix import MatrixLinearSDE
from ei_toolkit.sde.parsing import MAX_LENGTH, parameter_symbols, parse_coefficient


def payload(path):
    """Python that creates ``path`` if a parser evaluates it (the sympy parse_expr route did)."""
    return (f"(lambda: 0).__globals__['__builtins__']['__import__']('pathlib').Path({str(path)!r}).touch() "
            "or 1")


def test_code_in_a_coefficient_string_is_rejected_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    attempts = [
        lambda: ei.LinearSDE(drift="-1", diffusion=payload(marker), t_max=1.0),
        lambda: ei.LinearSDE(drift=payload(marker), diffusion="1", t_max=1.0),
        lambda: ei.LinearSDE(drift="-1", diffusion="1", t_max=1.0, sigma_init=payload(marker)),
        lambda: ei.LinearSDE.from_marginals(sigma=payload(marker), t_max=1.0),
        lambda: ei.LinearSDE.from_marginals(sigma="t", alpha=payload(marker), t_max=1.0),
        lambda: ei.LinearSDE.from_marginals(sigma="t", log_alpha=payload(marker), t_max=1.0),
        lambda: MatrixLinearSDE([["-1"]], [[payload(marker)]], t_max=1.0, t_min=0.1, sigma_init=[[0.0]]),
        # a list is not a coefficient, and its strings must not reach sympify's parser either
        lambda: ei.LinearSDE(drift="-1", diffusion=[payload(marker)], t_max=1.0),
    ]
    for attempt in attempts:
        with pytest.raises(ValueError, match=r"(drift|diffusion|sigma_init|sigma|alpha|log_alpha)"):
            attempt()
        assert not marker.exists()


def test_code_in_the_describe_command_is_rejected_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    res = subprocess.run([sys.executable, "-m", "ei_toolkit", "describe", "--drift=-1",
                          f"--diffusion={payload(marker)}"], capture_output=True, text=True, timeout=300)
    assert res.returncode != 0
    assert "diffusion" in res.stderr
    assert not marker.exists()


@pytest.mark.parametrize(("text", "message"), [
    ("t.real", r"diffusion contains an attribute access"),
    ("(1).__class__", r"diffusion contains an attribute access"),
    ("t[0]", r"diffusion contains a subscript"),
    ("(lambda: t)()", r"diffusion calls a lambda"),
    ("[t for t in (1, 2)]", r"diffusion contains a comprehension"),
    ("'t'", r"diffusion contains the constant 't'"),
    ("exp(t, base=2)", r"diffusion passes keyword arguments to exp"),
    ("exp(*t)", r"diffusion passes \*arguments to exp"),
    ("t if t else 1", r"diffusion contains a conditional expression"),
    ("t < 1", r"diffusion contains a comparison"),
    ("t // 2", r"diffusion uses the operator //"),
    ("t % 2", r"diffusion uses the operator %"),
    ("1j * t", r"diffusion contains the constant 1j"),
    ("__import__", r"diffusion contains the name '__import__'"),
    ("exp", r"diffusion names the function exp without calling it"),
    ("sqrt(t, 2)", r"diffusion: sqrt takes 1 argument\(s\); got 2"),
    ("Max(t)", r"diffusion: Max takes at least 2 argument\(s\); got 1"),
    ("gamma(t)", r"diffusion uses undefined function\(s\) gamma"),
    ("2**10**10", r"diffusion contains the power 2\*\*10000000000"),
    ("(t := 1)", r"diffusion contains an assignment"),
    ("", r"diffusion is an empty string"),
    ("-(t +", r"diffusion could not be parsed"),
    ("exp(" * 120 + "t" + ")" * 120, r"diffusion is nested more than 100 levels deep"),
    ("t" + "+t" * 700, None),  # long sums are not deep: accepted
])
def test_each_construct_outside_the_whitelist_is_rejected_with_the_argument_named(text, message):
    if message is None:
        assert parse_coefficient("diffusion", text, {}) == 701 * T
        return
    with pytest.raises(ValueError, match=message) as info:
        parse_coefficient("diffusion", text, {})
    if "may contain only" in str(info.value):
        assert "exp" in str(info.value) and "**" in str(info.value)


def test_too_long_input_is_rejected_before_parsing():
    with pytest.raises(ValueError, match=rf"drift is {MAX_LENGTH + 1} characters long; at most {MAX_LENGTH}"):
        parse_coefficient("drift", "t" + " " * MAX_LENGTH, {})


def test_caret_gets_the_power_hint():
    with pytest.raises(ValueError, match=r"diffusion uses \^ .*write powers with \*\* \(e.g. t\*\*2, not t\^2\)"):
        ei.LinearSDE(drift="-1", diffusion="t^2", t_max=1.0)


def test_state_in_the_drift_gets_the_linearity_message_not_a_parameter_hint():
    message = r"drift must be a function of t alone.*x is the state.*dx = F\(t\) x dt"
    with pytest.raises(ValueError, match=message) as info:
        ei.LinearSDE(drift="-x * t", diffusion="1", t_max=1.0)
    assert "x=1.0" not in str(info.value)
    with pytest.raises(ValueError, match=r"diffusion .*does not depend on the state"):
        ei.LinearSDE(drift="-1", diffusion="sqrt(1 + x**2)", t_max=1.0)
    with pytest.raises(ValueError, match=r"x is the state.*LinearSDE\(\.\.\., a=1.0\)"):  # both, each with its fix
        ei.LinearSDE(drift="-a * x", diffusion="1", t_max=1.0)


def test_sympy_expressions_and_numbers_keep_working():
    b = sp.Symbol("b")  # other assumptions than the package's symbols: matched by name
    t = sp.Symbol("t")
    sde = ei.LinearSDE(drift=-b / 2, diffusion=sp.sqrt(b) * (1 + t) ** 0, t_max=1.0, b=2.0)
    assert sde.symbolic.drift.free_symbols == {parameter_symbols({"b": 2.0})["b"]}
    assert parse_coefficient("drift", 2, {}) == 2
    assert parse_coefficient("drift", 0.5, {}) == sp.Float(0.5)
    assert parse_coefficient("drift", np.float64(0.25), {}) == sp.Float(0.25)
    with pytest.raises(ValueError, match=r"drift must be a sympy expression, a string or a real number"):
        parse_coefficient("drift", True, {})
    with pytest.raises(ValueError, match=r"parameter name 'exp' is the name of a function"):
        ei.LinearSDE(drift="-exp", diffusion="1", t_max=1.0, exp=1.0)


# Every string of the built-in SDEs and of README.md / docs/sde.md / examples, parsed by the old route
# (sympy's parse_expr with the elementary functions only; safe here: these strings are fixed) and the new.
_LB = "beta_min + (beta_max - beta_min) * t"
_U, _U0 = "(t + s) / (1 + s) * pi / 2", "s / (1 + s) * pi / 2"
KNOWN = [
    f"-({_LB}) / 2", f"sqrt({_LB})",
    f"sqrt(({_LB}) * (1 - exp(-2 * beta_min * t - (beta_max - beta_min) * t**2)))",
    f"cos({_U}) / cos({_U0})", f"sqrt(sin({_U} - {_U0}) * sin({_U} + {_U0})) / cos({_U0})",
    "sigma_min * (sigma_max / sigma_min)**t * sqrt(2 * log(sigma_max / sigma_min))", "sigma_min", "t",
    "-(a + b*t + c*t**2) / 2", "sqrt(a + b*t + c*t**2)", "-a", "b*(1 + t)", "b*(1+t)", "-(b0 + (b1 - b0) * t) / 2",
    "sqrt(b0 + (b1 - b0) * t)", "cos(pi*t/2)", "sin(pi*t/2)", "exp(t)", "-a/sqrt(1 + t**3)", "sqrt(b)*exp(t/4)",
    "sqrt(a + b*sin(3*t)**2)", "-a*(1 + cos(t**2))", "-(a + b*t)/2", "sqrt(a + b*t)", "-(a + b*t**2) / 2",
    "sqrt(a + b*t**2)", "-1", "1", "0", "-t", "t - 0.5", "2 - t", "t * (2 - t)",
    # numbers as written: precision, exponents, rationals
    "1e-3*t", "0.1 + 19.9*t", "1.5e2", "2**-3", "-t**2", "t**-0.5", "1/3*t", "3.14159265358979323846264338*t",
    "log(t + 1, 2) + ln(1 + t)", "abs(t - 0.5) + Min(t, 1, 2) + Max(t, 0.3)", "erf(t) + erfc(t) + atanh(t/2)",
    "acosh(1 + t) + asinh(t) + asin(t/2) + acos(t/2) + atan(t) + sinh(t) + cosh(t) + tanh(t) + tan(t)",
    "E**t * pi", "+t", "- -t", "2*t/3/4", "Abs(t)",
]


def old_parse(text, symbols):
    names = ("Integer", "Float", "Rational", "Symbol", "Function", "exp", "log", "sqrt", "sin", "cos", "tan",
             "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh", "atanh", "erf", "erfc", "pi", "E",
             "Abs", "Min", "Max")
    glob = {name: getattr(sp, name) for name in names}
    glob.update(ln=sp.log, abs=sp.Abs)
    return parse_expr(text, local_dict={**symbols, "t": T}, global_dict=glob)


@pytest.mark.parametrize("text", KNOWN)
def test_known_coefficients_parse_to_the_same_expressions_as_before(text):
    params = dict.fromkeys(("beta_min", "beta_max", "s", "sigma_min", "sigma_max", "a", "b", "c", "b0", "b1"), 1.5)
    symbols = parameter_symbols(params)
    new = parse_coefficient("drift", text, symbols)
    assert sp.srepr(new) == sp.srepr(old_parse(text, symbols))


def test_builtin_sdes_have_the_coefficients_of_their_strings():
    symbols = parameter_symbols({"beta_min": 0.1, "beta_max": 20.0})
    vp = ei.VPSDE()
    assert vp.symbolic.drift == old_parse(f"-({_LB}) / 2", symbols)
    assert vp.symbolic.diffusion == old_parse(f"sqrt({_LB})", symbols)
    ve = ei.VESDE()
    symbols = parameter_symbols({"sigma_min": 0.01, "sigma_max": 50.0})
    assert ve.symbolic.diffusion == old_parse(
        "sigma_min * (sigma_max / sigma_min)**t * sqrt(2 * log(sigma_max / sigma_min))", symbols)
    cos = ei.CosineVPSDE()
    assert cos.symbolic.alpha == old_parse(f"cos({_U}) / cos({_U0})", parameter_symbols({"s": 0.008}))
