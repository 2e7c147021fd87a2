"""What the commands share: the usage error, argparse types, output checks made before any work, did-you-mean
messages, the shipped model of ``--model`` (:mod:`ei_toolkit.models.registry`), held-out data, threads."""

from __future__ import annotations

import argparse
import difflib
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ei_toolkit.models.registry import ShippedModel
    from ei_toolkit.sde import LinearSDE

BUILTIN_SDES = ("vp", "subvp", "cosine", "ve", "edm", "ddpm")
DEFAULT_MODEL = "digits"


class UsageError(Exception):
    """A bad command line: :func:`ei_toolkit.cli.main` prints ``ei-toolkit: error: <message>`` and exits with
    status 2."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer; got {text!r}")
    return v


def finite_float(text: str) -> float:
    """argparse type: a finite real number."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number; got {text!r}")
    return v


def check_writable(arg: str, path: Path, folder: bool = False, parents: bool = False) -> None:
    """A :class:`UsageError` unless ``path`` (a file, or with ``folder`` a folder, created if missing) can be
    written, checked by creating and removing a temporary file where it would go: before any work is done. With
    ``parents`` a folder's missing parents are allowed (they will be created) and the nearest existing one is
    checked."""
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"{arg} {str(path)!r} is a file; give a folder (created if missing)")
    if not folder and path.is_dir():
        raise UsageError(f"{arg} {str(path)!r} is a directory; give a file name")
    where = path if folder and path.is_dir() else path.parent
    if parents:
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            raise UsageError(f"{arg} {str(path)!r}: {str(where)!r} is a file, not a directory")
    if not where.is_dir():
        raise UsageError(f"{arg} {str(path)!r}: the directory {str(where)!r} does not exist")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
        if not folder and path.exists():
            with open(path, "ab"):  # appends nothing: the file is left as it is
                pass
    except OSError as exc:
        raise UsageError(f"{arg} {str(path)!r}: cannot write there ({exc.strerror or exc})") from None


def writable_path(arg: str, path: str) -> Path:
    """``path`` as a Path to a file that can be written, in a directory that exists (nothing is created)."""
    p = Path(path)
    check_writable(arg, p)
    return p


def unknown(arg: str, kind: str, name: str, valid: Sequence[str]) -> UsageError:
    """The usage error for an unknown ``name``: the valid ones, and the closest if one is close."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UsageError(f"{arg}: unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}{hint}")


def check_method(arg: str, name: str) -> str:
    """``name`` if it names an integrator, else :func:`ei_toolkit.integrators.get_integrator`'s message (the valid
    names and the closest) as a usage error for ``arg``."""
    from ei_toolkit.integrators import get_integrator

    try:
        get_integrator(name)
    except ValueError as exc:
        raise UsageError(f"{arg}: {exc}") from None
    return name


def check_grid(arg: str, name: str | None) -> None:
    """A usage error with the valid grids (and the closest) unless ``name`` is None or a grid name."""
    from ei_toolkit.grids import GRIDS

    if name is not None and name not in GRIDS:
        raise unknown(arg, "grid", name, list(GRIDS))


def require_matplotlib(command: str) -> None:
    """A one-line :class:`UsageError` before any work when matplotlib (the ``bench`` extra) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"{command} draws its plot with matplotlib, which is not installed: "
                         "pip install 'ei_toolkit[bench]'") from None


def set_threads(threads: int | None) -> int:
    """torch's intra-op threads for a command: ``threads`` if given, else 1 unless OMP_NUM_THREADS is set (then
    torch's own reading of it stands). Returns the number in use."""
    if threads is not None:
        torch.set_num_threads(threads)
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(1)
    return torch.get_num_threads()


def make_sde(name: str) -> LinearSDE:
    """A built-in SDE by its command-line name (:data:`BUILTIN_SDES`)."""
    import ei_toolkit as ei

    table = {
        "vp": ei.VPSDE,
        "subvp": ei.SubVPSDE,
        "cosine": ei.CosineVPSDE,
        "ve": ei.VESDE,
        "edm": ei.EDM,
        "ddpm": ei.DiscreteVP.linear,
    }
    if name not in table:
        raise UsageError(f"--sde: unknown SDE {name!r}; choose one of {', '.join(table)}")
    return table[name]()


# ---------------------------------------------------------------------------------------------------- --model

def add_model_option(parser: argparse.ArgumentParser, what: str = "the shipped model to use") -> None:
    """``--model NAME``: a shipped model of :mod:`ei_toolkit.models.registry` (checked by :func:`shipped`)."""
    from ei_toolkit.models.registry import model_names

    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME",
                        help=f"{what}: {', '.join(model_names())} (default: {DEFAULT_MODEL})")


def shipped(name: str) -> ShippedModel:
    """The registry entry called ``name``, or a usage error listing the valid names (and the closest)."""
    from ei_toolkit.models.registry import model_names, shipped_model

    if name not in model_names():
        raise unknown("--model", "model", name, model_names())
    return shipped_model(name)


def load_model(entry: ShippedModel, device: torch.device | str = "cpu") -> torch.nn.Module:
    """``entry``'s trained network on ``device``; missing weights (a model whose training script was not run) are a
    usage error that names the script, not a traceback."""
    try:
        return entry.load(device)
    except FileNotFoundError as exc:
        raise UsageError(f"--model {entry.name}: {exc}") from None


def default_calibration_dir(model: str = DEFAULT_MODEL) -> Path:
    """Where ``calibrate`` writes by default: ``$XDG_CACHE_HOME/ei_toolkit/<model>_calibration`` (``~/.cache`` when
    XDG_CACHE_HOME is unset)."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ei_toolkit" / f"{model}_calibration"


def held_data(entry: ShippedModel, missing: str) -> torch.Tensor:
    """All held-out samples of ``entry``'s data split; a usage error ending in ``missing`` when it ships no data, and
    the install hint when its extra is missing."""
    if entry.data is None:
        raise UsageError(f"--model {entry.name}: its data are not shipped, so {missing}")
    try:
        return entry.data()[1]
    except ImportError as exc:
        raise UsageError(str(exc)) from None


def held_out(entry: ShippedModel, n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` of the held-out samples of ``entry``'s data split, chosen by ``generator``; usage errors for data
    that are not available (a missing extra) or too many asked."""
    held = held_data(entry, "there is nothing held out to use")
    if n > len(held):
        raise UsageError(f"--n: there are {len(held)} held-out {entry.noun}; got {n}")
    return held[torch.randperm(len(held), generator=generator)[:n]]
