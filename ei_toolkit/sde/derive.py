"""Symbolic derivation of the marginals of a scalar linear SDE dx = F(t) x dt + G(t) dw (MATH.md 1, 3).

Two integrals and one inverse are needed:

* log alpha(t) = int_{t0}^t F,
* rho^2(t) = sigma_init^2 + int_{t0}^t G^2 exp(-2 log alpha)  (so sigma = alpha rho),
* t(rho), the inverse of the strictly increasing rho(t).

Each is tried symbolically with strategies that are fast on the usual diffusion SDEs and bounded in time
on the unusual ones; ``None`` means "not found", and the caller then builds an accurate numerical table.
Everything symbolic is verified numerically by the caller before it is trusted.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import sympy as sp
from sympy.integrals.manualintegrate import manualintegrate

from .tables import TableFunction

T = sp.Symbol("t", real=True)
S = sp.Symbol("tau", real=True)
RHO = sp.Symbol("rho", positive=True)
_U = sp.Symbol("u", positive=True)
R = TypeVar("R")


class _Timeout(Exception):
    """A sympy step ran past its time limit."""


class _Interrupt(BaseException):
    """Raised asynchronously in a thread whose sympy step ran past its limit (see :func:`call_with_time_limit`).

    A BaseException, so that ``except Exception`` clauses inside sympy do not swallow it (sympy has no bare
    ``except:`` or ``except BaseException`` outside its tests).
    """


# CPython's PyThreadState_SetAsyncExc raises an exception in another thread at its next bytecode boundary.
# Elsewhere (PyPy) it is missing and sympy steps run without a limit.
_SET_ASYNC_EXC = getattr(getattr(ctypes, "pythonapi", None), "PyThreadState_SetAsyncExc", None)


class _Watchdog:
    """Interrupts the calling thread once, by an asynchronous exception, when ``seconds`` have passed and
    :meth:`stop` has not been called. No signals: it works in any thread and leaves the process's signal
    handlers and timers alone.

    At most one interrupt is ever raised, and only while ``active``; :meth:`stop` clears it if it was raised
    but not yet delivered. So none can arrive after :meth:`stop` (or the delivery of the one) -- with a
    repeated interrupt, a second could be raised while the first unwinds the clean-up.
    """

    def __init__(self, seconds: float, exc: type[BaseException]) -> None:
        self.tid = threading.get_ident()
        self.exc = exc
        self.active = [True]  # a list: clearing it is one C-level store, with no interrupt check in between
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(seconds,), name="ei_toolkit-time-limit", daemon=True)

    def start(self) -> None:
        """Start the clock (inside the caller's ``try``: the interrupt can come before this returns)."""
        self.thread.start()

    def _run(self, seconds: float) -> None:
        if self.done.wait(seconds):
            return
        with self.lock:
            if self.active[0]:
                _SET_ASYNC_EXC(ctypes.c_ulong(self.tid), ctypes.py_object(self.exc))

    def stop(self) -> None:
        self.active[0] = False
        with self.lock:  # the watchdog is not between its check and its interrupt: clear a pending one
            _SET_ASYNC_EXC(ctypes.c_ulong(self.tid), None)
        self.done.set()


def call_with_time_limit(seconds: float, fn: Callable[..., R], *args: Any) -> R:
    """``fn(*args)``, or :class:`_Timeout` once it has run ``seconds``; in any thread, without signals.

    The calling thread is interrupted by an asynchronous exception (a BaseException, which sympy's
    ``except Exception`` clauses let through). Pure-Python code such as sympy stops within milliseconds; a
    long call into C finishes first.
    """
    if _SET_ASYNC_EXC is None:  # pragma: no cover - not CPython
        return fn(*args)
    dog = _Watchdog(seconds, _Interrupt)
    try:
        try:
            dog.start()
            return fn(*args)
        finally:
            dog.active[0] = False  # first: no interrupt check between the call's end and this store
            dog.stop()
    except _Interrupt:
        raise _Timeout from None


class time_limit:
    """Context manager: raise :class:`_Timeout` in the block once it has run ``seconds``; in any thread,
    without signals (see :class:`_Watchdog`). Prefer :func:`call_with_time_limit`, whose interrupt is a
    BaseException that an ``except Exception`` inside the block cannot swallow."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.dog: _Watchdog | None = None

    def __enter__(self) -> time_limit:
        if _SET_ASYNC_EXC is not None:
            self.dog = _Watchdog(self.seconds, _Timeout)
            self.dog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.dog is not None:
            self.dog.stop()


def _generic_branch(expr: sp.Expr) -> sp.Expr:
    """Replace Piecewise results (e.g. ``Ne(log(c), 0)`` guards) by their generic first branch.

    Safe because every symbolic result is verified numerically with the actual parameter values.
    """
    return expr.replace(lambda e: isinstance(e, sp.Piecewise), lambda e: e.args[0].expr)


def _closed(expr: sp.Expr | None) -> bool:
    return expr is not None and not expr.has(sp.Integral) and expr.is_finite is not False


def antiderivative(f: sp.Expr, x: sp.Symbol, budget: float = 2.0) -> tuple[sp.Expr | None, str]:
    """An antiderivative of ``f`` in ``x`` and the strategy that found it, or ``(None, reason)``."""
    if not f.has(x):
        return f * x, "symbolic (constant integrand)"
    for name, integrate in (("sympy manualintegrate", manualintegrate), ("sympy integrate", sp.integrate)):
        try:
            result = call_with_time_limit(budget, integrate, f, x)
        except _Timeout:
            continue
        except Exception:  # sympy raises a wide variety of internal errors on hard integrands
            continue
        if _closed(result):
            return _generic_branch(result), f"symbolic ({name})"
    return None, f"no closed form within {budget:g} s per strategy"


@functools.lru_cache(maxsize=256)
def log_alpha_closed_form(drift: sp.Expr, t0: sp.Expr) -> tuple[sp.Expr | None, str]:
    """int_{t0}^t F as a closed form, or None."""
    if drift == 0:
        return sp.S.Zero, "symbolic (zero drift)"
    a, how = antiderivative(drift, T)
    if a is None:
        return None, how
    return a - a.subs(T, t0), how


def _as_function_of_u(h: sp.Expr, log_alpha: sp.Expr) -> sp.Expr | None:
    """Write h(t) as a function of u = exp(-2 log alpha(t)), or None."""
    base = -2 * log_alpha
    repl = {}
    for e in h.atoms(sp.exp):
        if not e.has(T):
            continue
        k = sp.cancel(e.args[0] / base)
        if k.has(T):
            return None
        repl[e] = _U**k
    hu = h.xreplace(repl)
    return None if hu.has(T) else hu


@functools.lru_cache(maxsize=256)
def rho2_closed_form(
    drift: sp.Expr, diffusion2: sp.Expr, log_alpha: sp.Expr, sigma_init2: sp.Expr, t0: sp.Expr
) -> tuple[sp.Expr | None, str]:
    """rho^2(t) = sigma_init^2 + int_{t0}^t G^2 exp(-2 log alpha) as a closed form, or None.

    First the substitution u = exp(-2 log alpha) = 1 / alpha^2 (du = -2 F u dt): when G^2 / (-2 F) is a
    function of u alone, the integral becomes int h(u) du, which is how VP-type schedules (G^2 = -2 F for VP,
    -2 F (1 - alpha^4) for sub-VP) integrate instantly. Then direct integration in t.
    """
    if drift != 0:
        h = diffusion2 / (-2 * drift)
        hu = _as_function_of_u(h, log_alpha)
        if hu is None:
            hu = _as_function_of_u(sp.powsimp(sp.cancel(sp.together(h)), combine="exp"), log_alpha)
        if hu is not None:
            H, how = antiderivative(hu, _U)
            if H is not None:
                u_t = sp.exp(-2 * log_alpha)
                u_0 = sp.exp(-2 * log_alpha.subs(T, t0))
                return sigma_init2 + H.subs(_U, u_t) - H.subs(_U, u_0), how + " after u = 1/alpha^2"
    a, how = antiderivative(diffusion2 * sp.exp(-2 * log_alpha), T)
    if a is None:
        return None, how
    return sigma_init2 + a - a.subs(T, t0), how


# ---------------------------------------------------------------------------------------------------------
# Inversion of rho^2(t) = r^2 for t


_MAX_CANDIDATES = 16


def _inverse_function(f: sp.Function, rhs: sp.Expr) -> list[sp.Expr]:
    if isinstance(f, sp.cos):
        return [sp.acos(rhs), -sp.acos(rhs)]
    if isinstance(f, sp.sin):
        return [sp.asin(rhs), sp.pi - sp.asin(rhs)]
    if isinstance(f, sp.tan):
        return [sp.atan(rhs)]
    if isinstance(f, sp.exp):
        return [sp.log(rhs)]
    if isinstance(f, sp.log):
        return [sp.exp(rhs)]
    try:
        inv = f.inverse()
    except Exception:
        return []
    return [inv(rhs)]


def _generators(expr: sp.Expr) -> list[tuple[sp.Expr, sp.Symbol, sp.Expr]]:
    """Ways to write expr as a rational function R(g) of one generator: (R(g), g, what g stands for).

    g stands for t itself, for one t-dependent function such as cos(u(t)), or for exp(a) when every
    exponential in expr is exp(k a) with rational k (so exp(2a) = g^2, exp(-a) = 1/g). Each exponential
    can serve as exp(a); the orientations give algebraically equal roots that differ in round-off (one may
    subtract nearly equal numbers), so all are offered and the caller keeps the most accurate.
    """
    funcs = {f for f in expr.atoms(sp.Function) if f.has(T)}
    outer = [f for f in funcs if not any(o != f and o.has(f) for o in funcs)]
    if not outer:
        return [(expr, T, T)] if expr.is_rational_function(T) else []
    g = sp.Dummy("g", positive=True)
    if all(isinstance(f, sp.exp) for f in outer):
        options = []
        for chosen in outer:
            base = chosen.args[0]
            ks = [sp.cancel(e.args[0] / base) for e in outer]
            if all(k.is_Rational for k in ks):
                options.append(({e: g**k for e, k in zip(outer, ks, strict=True)}, sp.exp(base)))
    elif len(outer) == 1:
        options = [({outer[0]: g}, outer[0])]
    else:
        return []
    out = []
    for repl, stands_for in options:
        eg = expr.xreplace(repl)
        if not eg.has(T) and eg.is_rational_function(g):
            out.append((eg, g, stands_for))
    return out


def factor_in_generator(expr: sp.Expr) -> sp.Expr:
    """Factor expr as a rational function of its generator, e.g. 1 - 2 e^x + e^(2x) -> (1 - e^x)^2, which
    then evaluates without cancellation; expr itself when there is no single generator."""
    for eg, g, stands_for in _generators(expr):
        return sp.factor(eg).subs(g, stands_for)
    return expr


def invert(lhs: sp.Expr, rhs: sp.Expr, depth: int = 0) -> list[sp.Expr]:
    """Candidate closed forms t(rhs) with lhs(t) = rhs; the caller keeps the branch that checks out."""
    if depth > 24:
        return []
    if lhs == T:
        return [rhs]
    if not lhs.has(T):
        return []
    if lhs.is_Add:
        indep, dep = lhs.as_independent(T, as_Add=True)
        if indep != 0:
            return invert(dep, rhs - indep, depth + 1)
    if lhs.is_Mul:
        indep, dep = lhs.as_independent(T, as_Add=False)
        if indep != 1:
            return invert(dep, rhs / indep, depth + 1)
    if lhs.is_Pow:
        b, e = lhs.as_base_exp()
        if not e.has(T):
            roots = [rhs ** (1 / e)]
            if e.is_Rational and sp.Rational(e).p % 2 == 0:
                roots.append(-(rhs ** (1 / e)))
            return [c for r in roots for c in invert(b, r, depth + 1)][:_MAX_CANDIDATES]
        if not b.has(T):
            return invert(e, sp.log(rhs) / sp.log(b), depth + 1)
    if isinstance(lhs, sp.Function) and len(lhs.args) == 1:
        return [c for r in _inverse_function(lhs, rhs) for c in invert(lhs.args[0], r, depth + 1)][:_MAX_CANDIDATES]
    out: list[sp.Expr] = []
    for eg, g, g_expr in _generators(lhs):
        num = sp.numer(sp.together(eg - rhs))
        try:
            poly = sp.Poly(sp.expand(num), g)
        except sp.PolificationFailed:
            continue
        if not 1 <= poly.degree() <= 4:
            continue
        for root in sp.roots(poly, multiple=True) or []:
            out.extend([root] if g_expr == T else invert(g_expr, root, depth + 1))
    return out[: 2 * _MAX_CANDIDATES]


def inverse_candidates(rho2: sp.Expr, budget: float = 2.0) -> tuple[sp.Expr, ...]:
    """Closed-form candidates for t(rho) from rho^2(t) = rho^2 (bounded in time).

    Cached, except for expressions with tabulated functions: those are unique to one derivation, and the
    cache would keep their tables alive after the derivation is evicted.
    """
    if rho2.has(TableFunction):
        return _inverse_candidates(rho2, budget)
    return _cached_inverse_candidates(rho2, budget)


@functools.lru_cache(maxsize=256)
def _cached_inverse_candidates(rho2: sp.Expr, budget: float) -> tuple[sp.Expr, ...]:
    return _inverse_candidates(rho2, budget)


def _inverse_candidates(rho2: sp.Expr, budget: float) -> tuple[sp.Expr, ...]:
    try:
        return tuple(call_with_time_limit(budget, invert, rho2, RHO**2))
    except _Timeout:
        return ()
