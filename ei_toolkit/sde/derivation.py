"""The derivation of a scalar linear SDE for given parameter values, and its bounded cache.

:class:`Derivation` turns the parsed coefficients (or marginals) into verified sympy forms and compiled
torch / NumPy functions: closed forms from :mod:`.derive` where sympy finds them and they pass a numerical
check, tabulated functions from :mod:`.tables` elsewhere (MATH.md sections 1-3). :func:`derive_sde` returns
the derivation of a spec, from a least-recently-used cache keyed by value.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping

import numpy as np
import sympy as sp
import torch

from ..errors import NumericalError
from . import derive
from .compile import to_numpy, to_torch
from .derive import RHO, S, T
from .tables import CumulativeIntegral, MonotoneInverse, TableFunction, TableImpl, table_function, table_impls

CACHE_SIZE = 32
"""Derivations kept by :func:`derive_sde` (least recently used evicted first). One holds its sympy forms,
compiled functions and check data: about 0.1 MiB for a closed-form SDE, up to a few MiB for one with
numerical tables. An SDE object keeps its own derivation alive, whether or not the cache still has it."""


def derivation_key(spec: tuple, values: Mapping[sp.Symbol, sp.Float], t0: float, t_max: float) -> tuple:
    """The value key of a derivation: the spec's sympy expressions, parameter values, t0 and t_max.

    Tabulated functions inside the spec (DiscreteVP's log alpha) enter by their ``value_key`` (a digest of
    the table), so that two equal tables give equal keys whichever function class carries them.
    """
    exprs = tuple(_by_value(e) if isinstance(e, sp.Basic) else e for e in spec)
    params = tuple(sorted((s.name, float(v)) for s, v in values.items()))
    return exprs, params, float(t0), float(t_max)


def _by_value(expr: sp.Basic) -> sp.Basic:
    """``expr`` with each tabulated function that has a ``value_key`` replaced by a plain sympy function
    named after that key (others keep their class, whose name is unique)."""
    repl = {f: sp.Function(f"table_{_digest(type(f).value_key)}")(*f.args)
            for f in expr.atoms(TableFunction) if type(f).value_key is not None}
    return expr.xreplace(repl) if repl else expr


def _digest(key: Hashable) -> str:
    return hashlib.sha256(repr(key).encode()).hexdigest()


class DerivationCache:
    """A thread-safe least-recently-used map from :func:`derivation_key` to :class:`Derivation`."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, Derivation] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple) -> Derivation | None:
        with self._lock:
            d = self._items.get(key)
            if d is not None:
                self._items.move_to_end(key)
            return d

    def put(self, key: tuple, derivation: Derivation) -> Derivation:
        """Store ``derivation`` (or return the one another thread stored first) and evict beyond the bound."""
        with self._lock:
            d = self._items.setdefault(key, derivation)
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
            return d

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


CACHE = DerivationCache(CACHE_SIZE)


def derive_sde(spec: tuple, values: dict[sp.Symbol, sp.Float], t0: float, t_max: float) -> tuple[tuple, Derivation]:
    """The (cached) derivation of ``spec`` with parameter ``values`` on [t0, t_max], and its key."""
    key = derivation_key(spec, values, t0, t_max)
    built = CACHE.get(key)
    if built is None:  # built outside the lock: a derivation can take seconds
        built = CACHE.put(key, Derivation(spec, values, float(t0), float(t_max)))
    return key, built


def grid(a: float, b: float, n: int = 2049) -> np.ndarray:
    """The check grid of [a, b]: uniform, plus geometric clustering at both ends, where schedules change fastest."""
    u = np.linspace(0.0, 1.0, n)
    g = np.geomspace(1e-9, 1.0, 200)
    s = np.unique(np.concatenate([u, g, 1.0 - g]))
    return a + (b - a) * s


class Derivation:
    """The derivation of one SDE for given parameter values: sympy forms, checks, compiled functions.

    Built by :func:`derive_sde` (cached); the sympy forms are in :attr:`exprs`, how each was found in
    :attr:`how`, and the compiled torch functions in :attr:`fn`.
    """

    def __init__(self, spec: tuple, values: dict[sp.Symbol, sp.Float], t0: float, t_max: float) -> None:
        start = time.perf_counter()
        self.values, self.t0, self.t_max = values, t0, t_max
        # the implementations of every tabulated function used here (their classes refer to them weakly)
        self.tables: list[TableImpl] = table_impls(*(e for e in spec if isinstance(e, sp.Basic)))
        how: dict[str, str] = {}
        nodes = grid(t0, t_max)
        self.grid = nodes
        if spec[0] == "coefficients":
            _, F, G, s0 = spec
            G2 = G**2
            t0s = sp.nsimplify(t0)
            sigma_init = float(s0.xreplace(values))
            la, how["log_alpha"] = derive.log_alpha_closed_form(F, t0s)
            la = self._verified(la, F, nodes, "log_alpha", how, at_t0=0.0)
            if la is None:
                la = self._numeric_integral("numeric_log_alpha", F, 0.0, how, "log_alpha")
            r2, how["rho"] = (None, "") if la.has(TableFunction) else derive.rho2_closed_form(F, G2, la, s0**2, t0s)
            r2 = self._verified(r2, G2 * sp.exp(-2 * la), nodes, "rho", how, at_t0=sigma_init**2)
            if r2 is not None:
                r2 = self._accurate_near_t0(r2, G2 * sp.exp(-2 * la), sigma_init**2, how)
            if r2 is None:
                r2 = self._numeric_integral("numeric_rho2", G2 * sp.exp(-2 * la), sigma_init**2, how, "rho")
            alpha = sp.exp(la)
            # Factored forms evaluate without cancellation near t0 (sub-VP: rho^2 = (e - 1)^2 / e, not
            # e + 1/e - 2); of equal forms of sigma keep the cheaper (sqrt(1 - e) for VP, sigma_min r^t for VE).
            rho = sp.sqrt(derive.factor_in_generator(r2))
            s2 = derive.factor_in_generator(sp.powsimp(sp.expand(sp.exp(2 * la) * r2)))
            sigma = min(sp.sqrt(s2), alpha * rho, key=sp.count_ops)
        else:
            _, la, alpha, sigma = spec
            how.update(log_alpha="given (marginal alpha)", rho="given (sigma / alpha)")
            F = sp.diff(la, T)
            G2 = sp.diff(sigma**2, T) - 2 * F * sigma**2
            G2 = min(G2, sp.expand(G2), key=sp.count_ops)  # expand cancels the VP terms; keep the shorter
            G = sp.sqrt(G2)
            r2 = sigma**2 / alpha**2
            rho = sigma / alpha
            a0 = to_numpy(alpha.xreplace(values), [T])(np.array([t0]))[0]
            if not abs(a0 - 1.0) < 1e-12:
                raise ValueError(f"alpha must equal 1 at t0 = {t0} (the data time); got alpha(t0) = {a0!r}")
            sigma_init = float(to_numpy(sigma.xreplace(values), [T])(np.array([t0]))[0])
        self.sigma_init = float(sigma_init)
        drho_dt = G2 * sp.exp(-2 * la) / (2 * rho)

        sub = self._sub
        self.G_np = to_numpy(sub(G), [T])
        self.rho_np = to_numpy(sub(rho), [T])
        self.alpha_np = to_numpy(sub(alpha), [T])
        if spec[0] == "coefficients":  # for given marginals a bad G shows as a non-monotone rho: say that
            self.check_diffusion_positive(t0, t_max, strict=False)
        self._check_marginals(nodes)
        self.rho_t0 = float(self.rho_np(np.array([t0]))[0])
        self.rho_tmax = float(self.rho_np(np.array([t_max]))[0])

        t_of_rho = self._inverse(r2, G2 * sp.exp(-2 * la), how)
        psi = sp.powsimp(alpha / alpha.subs(T, S))
        self.how = how
        self.exprs: dict[str, sp.Expr] = dict(
            drift=F, diffusion=G, log_alpha=la, alpha=alpha, sigma=sigma, rho=rho, drho_dt=drho_dt, psi=psi,
            t_of_rho=t_of_rho,
        )
        self.fn: dict[str, Callable[..., torch.Tensor]] = {
            name: to_torch(sub(self.exprs[name]), [T])
            for name in ("drift", "diffusion", "log_alpha", "alpha", "sigma", "rho", "drho_dt")
        }
        self.fn["t_of_rho"] = to_torch(sub(t_of_rho), [RHO])
        self.fn["psi"] = to_torch(sub(psi), [T, S])
        self.tables += [i for i in table_impls(*self.exprs.values()) if not any(i is j for j in self.tables)]
        self.build_seconds = time.perf_counter() - start

    # -- derivation helpers -----------------------------------------------------------------------------

    def _sub(self, expr: sp.Expr) -> sp.Expr:
        """``expr`` with the parameter values substituted."""
        return expr.xreplace(self.values)

    def _verified(self, closed: sp.Expr | None, integrand: sp.Expr, nodes: np.ndarray, name: str,
                  how: dict[str, str], at_t0: float) -> sp.Expr | None:
        """Keep a closed-form integral only if its derivative matches the integrand and its value at t0."""
        if closed is None:
            return None
        sub = self._sub
        try:
            d = to_numpy(sub(sp.diff(closed, T)), [T])(nodes)
            f = to_numpy(sub(integrand), [T])(nodes)
            v0 = to_numpy(sub(closed), [T])(np.array([self.t0]))[0]
            probe = to_torch(sub(closed), [T])(torch.tensor(nodes[:3]))  # every function must exist in torch
            if not torch.allclose(probe, torch.as_tensor(to_numpy(sub(closed), [T])(nodes[:3])), equal_nan=True):
                raise ArithmeticError("torch and NumPy disagree")
        except Exception:
            how[name] += "; rejected (could not be evaluated)"
            return None
        ok = np.isfinite(f)
        if (not np.all(np.abs(d[ok] - f[ok]) <= 1e-8 * (1.0 + np.abs(f[ok]))) or
                not abs(v0 - at_t0) <= 1e-10 * (1 + abs(at_t0))):
            how[name] += "; rejected by the numerical check"
            return None
        return closed

    def _accurate_near_t0(self, r2: sp.Expr, integrand: sp.Expr, at_t0: float, how: dict[str, str]) -> sp.Expr | None:
        """Keep a closed form of rho^2 only if it does not cancel catastrophically near t0.

        A closed form such as rho^2 = e^{2t} (t^2/2 - t/2 + 1/4) - 1/4 (F = -1, G = t) subtracts nearly equal
        numbers as t -> t0, where rho^2 ~ t^3/3. It is compared, in the factored form that is evaluated, with
        a quadrature that has full relative accuracy there (Gauss-Legendre on geometric pieces from t0; the
        integrand is >= 0, so nothing cancels): within 1e-10 relative from t0 + 1e-3 (t_max - t0) (the default
        window start) to t0 + 1e-2 (t_max - t0), and closer to t0 within 1e-10 (1e-3 (t_max - t0)) / (t - t0),
        the growth of a first-order cancellation such as exp(x) - 1.
        """
        length = self.t_max - self.t0
        edges = self.t0 + length * np.concatenate([[0.0], np.logspace(-30, -2, 281)])
        try:
            f = to_numpy(self._sub(integrand), [T])
            x, w = CumulativeIntegral._GAUSS
            half = 0.5 * np.diff(edges)
            pts = (0.5 * (edges[:-1] + edges[1:]))[:, None] + half[:, None] * x[None, :]
            with np.errstate(all="ignore"):
                ref = at_t0 + np.cumsum(half * (f(pts) @ w))
            closed = to_numpy(self._sub(derive.factor_in_generator(r2)), [T])(edges[1:])
        except Exception:  # the later checks report what cannot be evaluated
            return r2
        dt = edges[1:] - self.t0
        use = (dt >= 1e-9 * length) & np.isfinite(ref)
        if not np.any(use):
            return r2
        with np.errstate(all="ignore"):
            tol = 1e-10 * np.abs(ref[use]) * np.maximum(1.0, 1e-3 * length / dt[use])
            bad = ~(np.abs(closed[use] - ref[use]) <= tol)
        if not np.any(bad):
            return r2
        k = np.flatnonzero(bad)[0]
        rel = abs(closed[use][k] / ref[use][k] - 1) if ref[use][k] != 0 else float("inf")
        how["rho"] += (f"; rejected: it cancels near t0 (relative error {rel:.0e} at t = "
                       f"{edges[1:][use][k]:.3g})")
        return None

    def _numeric_integral(self, prefix: str, integrand: sp.Expr, initial: float, how: dict[str, str],
                          name: str) -> sp.Expr:
        """int_{t0}^t integrand as a tabulated function (verified composite Gauss-Legendre quadrature)."""
        f = integrand.xreplace(self.values)
        table = CumulativeIntegral(to_numpy(f, [T]), self.t0, self.t_max, initial=initial,
                                   integrand_torch=to_torch(f, [T]))
        cls = table_function(prefix, table.numpy, table.torch, self.tables, derivative=lambda x: f.subs(T, x),
                             table=table)
        why = how.get(name, "")
        how[name] = (f"numeric (Gauss-Legendre quadrature, cubic Hermite table of {len(table.nodes)} nodes, "
                     f"relative error {table.error_estimate:.0e})" + (f"; {why}" if why else ""))
        return cls(T)

    def _check_marginals(self, nodes: np.ndarray) -> None:
        a = self.alpha_np(nodes)
        if not np.all(np.isfinite(a) & (a > 0)):
            bad = nodes[~(np.isfinite(a) & (a > 0))][0]
            raise NumericalError(f"alpha must be finite and positive on [t0, t_max]; alpha({bad:.6g}) = "
                                 f"{self.alpha_np(np.array([bad]))[0]!r}")
        r = self.rho_np(nodes)
        if not np.all(np.isfinite(r)):
            bad = nodes[~np.isfinite(r)][0]
            raise NumericalError(f"rho = sigma/alpha is not finite at t = {bad:.6g}; check the diffusion and "
                                 "t_max (alpha must not vanish on the domain)")
        dec = np.diff(r) <= 0
        if np.any(dec):
            bad = nodes[1:][dec][0]
            raise ValueError(f"rho = sigma/alpha must be strictly increasing in t on [t0, t_max]; it does not "
                             f"increase near t = {bad:.6g} (rho = {r[1:][dec][0]:.6g})")

    def check_diffusion_positive(self, t_min: float, t_max: float, strict: bool = True) -> None:
        """G > 0 on the window (``strict``), or G real and >= 0 on the whole domain."""
        g = grid(t_min, t_max)
        gv = self.G_np(g)
        bad = ~(np.isfinite(gv) & ((gv > 0) if strict else (gv >= 0)))
        if np.any(bad):
            where = "the window [t_min, t_max]" if strict else "the domain [t0, t_max]"
            raise ValueError(f"diffusion must be real and positive on {where} = [{t_min:g}, {t_max:g}]; "
                             f"G({g[bad][0]:.6g}) = {float(gv[bad][0])!r}")

    def _inverse(self, r2: sp.Expr, dr2: sp.Expr, how: dict[str, str]) -> sp.Expr:
        """t(rho): the closed-form branch that checks out numerically, else a Newton-refined table."""
        ts = self.grid[:: max(1, len(self.grid) // 400)]
        ts = np.concatenate([ts, [self.t0, self.t_max]])
        rs = self.rho_np(ts)
        scale = max(1.0, abs(self.t0), abs(self.t_max))
        best, best_err = None, 1e-11 * scale
        for cand in derive.inverse_candidates(r2):
            try:
                back = to_numpy(cand.xreplace(self.values), [RHO])(rs)
                to_torch(cand.xreplace(self.values), [RHO])(torch.tensor(rs[:2]))  # must exist in torch
            except Exception:
                continue
            err = float(np.max(np.abs(back - ts)))
            if err < best_err:  # the branch that reproduces t, and of those the most accurate
                best, best_err = cand, err
        if best is not None:
            how["t_of_rho"] = "symbolic (inverted rho^2(t) = rho^2, branch checked numerically)"
            return best
        sub = self._sub
        r2_s, dr2_s = sub(r2), sub(dr2)
        inv = MonotoneInverse(to_numpy(r2_s, [T]), to_numpy(dr2_s, [T]), to_torch(r2_s, [T]), to_torch(dr2_s, [T]),
                              self.t0, self.t_max)
        cls = table_function("numeric_t_of_rho2", inv.numpy, inv.torch, self.tables,
                             derivative=lambda x: 1 / dr2_s.subs(T, cls(x)), table=inv)
        how["t_of_rho"] = "numeric (table of 4097 nodes + 3 Newton steps on rho^2(t) = rho^2)"
        return cls(RHO**2)
