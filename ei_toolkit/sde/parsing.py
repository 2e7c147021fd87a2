"""Parsing of SDE coefficients: sympy expressions, numbers, or strings in ``t`` and declared parameters.

Strings are parsed by a whitelist that never evaluates Python: :func:`ast.parse` reads the text into a
syntax tree (parsing only, nothing runs), and :func:`parse_text` builds the sympy expression node by node,
accepting only

* numbers (``2``, ``0.5``, ``1e-3``), the time ``t``, declared parameter names, ``pi`` and ``E``;
* unary ``+``/``-``, binary ``+ - * / **`` and parentheses;
* calls, with positional arguments, of the elementary functions in :data:`FUNCTIONS`.

Anything else (attributes, subscripts, lambdas, comprehensions, strings, keyword arguments, other
operators) is rejected with a ``ValueError`` that names the argument. Names such as ``beta`` or ``gamma``
are parameters, never sympy's special functions of that name.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable, Mapping
from typing import Any

import sympy as sp

from .derive import T
from .tables import TableFunction

ExprLike = sp.Expr | str | float | int

RESERVED = frozenset({"t", "tau", "rho", "u"})
MAX_LENGTH = 2000  # characters of a coefficient string
MAX_DEPTH = 100  # nesting of parentheses, powers and calls
_MAX_POWER_DIGITS = 10_000  # exact integer powers beyond this many digits are refused (10**10**10 would hang)

# name -> (sympy function, least and most number of positional arguments; None: no upper bound)
FUNCTIONS: Mapping[str, tuple[Callable[..., sp.Expr], int, int | None]] = {
    **{name: (getattr(sp, name), 1, 1) for name in (
        "exp", "sqrt", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "asinh", "acosh",
        "atanh", "erf", "erfc", "Abs")},
    "log": (sp.log, 1, 2),  # log(x) or log(x, base)
    "ln": (sp.log, 1, 1),
    "abs": (sp.Abs, 1, 1),
    "Min": (sp.Min, 2, None),
    "Max": (sp.Max, 2, None),
}
CONSTANTS: Mapping[str, sp.Expr] = {"pi": sp.pi, "E": sp.E}
_STATE_NAMES = frozenset({"x", "x_t", "xt"})

_BINARY: Mapping[type[ast.operator], Callable[[sp.Expr, sp.Expr], sp.Expr]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}
_OPERATOR_NAMES: Mapping[type[ast.AST], str] = {
    ast.FloorDiv: "//", ast.Mod: "%", ast.MatMult: "@", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|",
    ast.BitAnd: "&", ast.Invert: "~", ast.Not: "not",
}
ACCEPTED = (f"numbers, t, the declared parameters, {', '.join(CONSTANTS)}, unary + and -, binary + - * / **, "
            f"parentheses, and calls of {', '.join(FUNCTIONS)}")


def parameter_symbols(parameters: Mapping[str, Any]) -> dict[str, sp.Symbol]:
    """The sympy symbol of each parameter (positive if its value is, else real), after checking the names
    and that each value is a finite real number."""
    symbols = {}
    for name, value in parameters.items():
        if name in RESERVED or not name.isidentifier():
            raise ValueError(f"parameter name {name!r} is reserved or not an identifier; choose another name")
        if name in FUNCTIONS:
            raise ValueError(f"parameter name {name!r} is the name of a function in coefficient strings; "
                             "choose another name")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"parameter {name} must be a real number; got {value!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"parameter {name} must be finite; got {value!r}")
        symbols[name] = sp.Symbol(name, positive=True) if v > 0 else sp.Symbol(name, real=True)
    return symbols


class _Builder:
    """Builds a sympy expression from a Python syntax tree, node by node, refusing everything not listed."""

    def __init__(self, what: str, text: str, names: Mapping[str, sp.Expr]) -> None:
        self.what, self.text, self.names = what, text, names
        self.shown = _shown(text)

    def fail(self, problem: str) -> ValueError:
        return ValueError(f"{self.what} {problem} in {self.shown}; coefficient strings may contain only {ACCEPTED}")

    def build(self, node: ast.AST, depth: int = 0) -> sp.Expr:
        if depth > MAX_DEPTH:
            raise ValueError(f"{self.what} is nested more than {MAX_DEPTH} levels deep; simplify the expression")
        if isinstance(node, ast.Constant):
            return self.number(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return -self.build(node.operand, depth + 1)
            if isinstance(node.op, ast.UAdd):
                return self.build(node.operand, depth + 1)
            raise self.fail(f"uses the operator {_OPERATOR_NAMES.get(type(node.op), type(node.op).__name__)}")
        if isinstance(node, ast.BinOp):
            return self.binary(node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        raise self.fail(f"contains {_describe(node)}")

    def number(self, node: ast.Constant) -> sp.Expr:
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(f"contains the constant {v!r}")
        if isinstance(v, int):
            return sp.Integer(v)
        literal = ast.get_source_segment(self.text, node)
        return sp.Float(literal.replace("_", "") if literal else repr(v))  # keeps the digits as written

    def name(self, node: ast.Name) -> sp.Expr:
        if node.id in self.names:
            return self.names[node.id]
        if node.id in FUNCTIONS:
            raise self.fail(f"names the function {node.id} without calling it (write {node.id}(...))")
        if node.id.startswith("_"):
            raise self.fail(f"contains the name {node.id!r}")
        return sp.Symbol(node.id)  # undeclared: reported with its fix by parse_coefficient

    def binary(self, node: ast.BinOp, depth: int) -> sp.Expr:
        if isinstance(node.op, ast.Pow):
            base, exponent = self.build(node.left, depth + 1), self.build(node.right, depth + 1)
            self.check_power(base, exponent)
            return base**exponent
        # a chain a + b - c * d ... nests to the left: walk it iteratively, so that long sums are not "deep"
        chain: list[tuple[Callable[[sp.Expr, sp.Expr], sp.Expr], ast.AST]] = []
        left: ast.AST = node
        while isinstance(left, ast.BinOp) and not isinstance(left.op, ast.Pow):
            if isinstance(left.op, ast.BitXor):
                raise ValueError(f"{self.what} uses ^ in {self.shown}: write powers with ** (e.g. t**2, not t^2)")
            op = _BINARY.get(type(left.op))
            if op is None:
                raise self.fail(f"uses the operator {_OPERATOR_NAMES.get(type(left.op), type(left.op).__name__)}")
            chain.append((op, left.right))
            left = left.left
        result = self.build(left, depth + 1)
        for op, right in reversed(chain):
            result = op(result, self.build(right, depth + 1))
        return result

    def check_power(self, base: sp.Expr, exponent: sp.Expr) -> None:
        """Refuse exact powers whose value would take sympy unbounded time and memory to compute."""
        if not (base.is_Rational and exponent.is_Rational) or base in (0, 1, -1):
            return
        p, q = sp.Rational(base).p, sp.Rational(base).q
        digits = abs(float(exponent)) * math.log10(max(abs(p), abs(q)))
        if digits > _MAX_POWER_DIGITS:
            raise ValueError(f"{self.what} contains the power {base}**{exponent}, a number of about {digits:.3g} "
                             f"digits; at most {_MAX_POWER_DIGITS} are allowed (write a float, e.g. 1e300)")

    def call(self, node: ast.Call, depth: int) -> sp.Expr:
        if not isinstance(node.func, ast.Name):
            raise self.fail(f"calls {_describe(node.func)}; only named functions can be called")
        name = node.func.id
        if name not in FUNCTIONS:
            if name in self.names or name in CONSTANTS:
                raise self.fail(f"calls {name}, which is not a function")
            raise ValueError(f"{self.what} uses undefined function(s) {name}; write them out in t with the "
                             f"functions {', '.join(FUNCTIONS)}")
        if node.keywords:
            raise self.fail(f"passes keyword arguments to {name}")
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(f"passes *arguments to {name}")
        fn, least, most = FUNCTIONS[name]
        n = len(node.args)
        if n < least or (most is not None and n > most):
            expected = str(least) if least == most else f"{least} to {most}" if most else f"at least {least}"
            raise ValueError(f"{self.what}: {name} takes {expected} argument(s); got {n} in {self.shown}")
        return fn(*(self.build(a, depth + 1) for a in node.args))


def _shown(text: str, limit: int = 120) -> str:
    """``text`` quoted for an error message, shortened in the middle beyond ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[: limit // 2] + " ... " + text[-limit // 2:])


def _describe(node: ast.AST) -> str:
    kinds = {
        ast.Attribute: "an attribute access (.)", ast.Subscript: "a subscript ([...])", ast.Lambda: "a lambda",
        ast.ListComp: "a comprehension", ast.SetComp: "a comprehension", ast.DictComp: "a comprehension",
        ast.GeneratorExp: "a comprehension", ast.Compare: "a comparison", ast.BoolOp: "a boolean operator",
        ast.IfExp: "a conditional expression", ast.List: "a list", ast.Tuple: "a tuple", ast.Dict: "a dict",
        ast.Set: "a set", ast.JoinedStr: "an f-string", ast.NamedExpr: "an assignment (:=)",
        ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield", ast.Starred: "a starred expression",
        ast.Call: "a call",
    }
    return kinds.get(type(node), f"a {type(node).__name__} expression")


def parse_text(what: str, text: str, symbols: Mapping[str, sp.Symbol]) -> sp.Expr:
    """The sympy expression of a coefficient string (see the module docstring for what it may contain).

    ``what`` names the argument in error messages. Never evaluates Python.
    """
    if len(text) > MAX_LENGTH:
        raise ValueError(f"{what} is {len(text)} characters long; at most {MAX_LENGTH} are accepted")
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"{what} is an empty string; give an expression in t such as '-1' or 'sqrt(2*t)'")
    try:
        tree = ast.parse(stripped, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"{what} could not be parsed as an expression in t: {_shown(text)} ({exc.msg})") from None
    except (RecursionError, MemoryError, ValueError):  # pathological nesting, null bytes
        raise ValueError(f"{what} could not be parsed as an expression in t: {_shown(text)}") from None
    names: dict[str, sp.Expr] = {**CONSTANTS, **symbols, "t": T}
    return _Builder(what, stripped, names).build(tree.body)


def parse_coefficient(what: str, value: ExprLike, symbols: Mapping[str, sp.Symbol]) -> sp.Expr:
    """Parse a coefficient of t (sympy expression, string or real number) and check that it depends on t and
    on the declared parameters only. ``what`` names the argument in error messages."""
    if isinstance(value, str):
        expr = parse_text(what, value, symbols)
    elif isinstance(value, bool):
        raise ValueError(f"{what} must be a sympy expression, a string or a real number; got {value!r}")
    else:
        try:  # strict: numbers and sympy objects only; never a string or the strings inside a list
            expr = value if isinstance(value, sp.Basic) else sp.sympify(value, strict=True)
        except (sp.SympifyError, TypeError, ValueError):
            raise ValueError(f"{what} must be a sympy expression, a string or a real number; got "
                             f"{type(value).__name__}: {value!r}") from None
    if not isinstance(expr, sp.Expr) or isinstance(expr, sp.MatrixBase):
        raise ValueError(f"{what} must be a scalar expression in t; got {type(expr).__name__}: {value!r}")
    # Symbols that the user built with other assumptions are matched by name.
    repl = {}
    for sym in expr.free_symbols:
        if sym.name == "t" and sym != T:
            repl[sym] = T
        elif sym.name in symbols and sym != symbols[sym.name]:
            repl[sym] = symbols[sym.name]
    expr = expr.xreplace(repl)
    unknown = sorted(str(s) for s in expr.free_symbols - {T} - set(symbols.values()))
    if unknown:
        raise ValueError(_unknown_message(what, unknown, symbols))
    undefined = sorted(
        str(f.func) for f in expr.atoms(sp.Function)
        if isinstance(f, sp.core.function.AppliedUndef) and not isinstance(f, TableFunction)
    )
    if undefined:
        raise ValueError(f"{what} uses undefined function(s) {', '.join(undefined)}; write them out in t")
    return expr


def _unknown_message(what: str, unknown: list[str], symbols: Mapping[str, sp.Symbol]) -> str:
    params = ", ".join(symbols) or "none"
    head = f"{what} must be a function of t alone (parameters declared: {params}); it depends on {', '.join(unknown)}"
    state = [u for u in unknown if u in _STATE_NAMES]
    others = [u for u in unknown if u not in _STATE_NAMES]
    parts = []
    if state:
        if what == "drift":
            parts.append(f"{state[0]} is the state: the SDE is linear, dx = F(t) x dt + G(t) dw, so give F(t) "
                         "without the state (for dx = -t x dt write drift='-t')")
        else:
            parts.append(f"{state[0]} is the state: in a linear SDE dx = F(t) x dt + G(t) dw, {what} does not "
                         "depend on the state; give it as a function of t")
    if others:
        parts.append(f"pass the value of each parameter as a keyword argument, e.g. LinearSDE(..., {others[0]}=1.0)")
    return f"{head}. " + "; ".join(parts) + "."
