"""The command line, ``ei-toolkit`` / ``python -m ei_toolkit`` (bare: the help): one module per command, thin over
the library's public functions (the library never imports this package).

``compare`` measures accuracy per model evaluation on a Gaussian-mixture problem against the exact ODE solution, for
our integrators, prints the tables and writes a plot (matplotlib: the ``bench`` extra); the same comparison against
diffusers and k-diffusion is the benchmark script ``python benchmarks/compare.py`` (same options). ``describe``
derives a built-in or user SDE and prints its closed forms, how each was obtained, and a numerical self-check.
``sample`` draws from a shipped model (``--model``, default the 8x8 digits; :mod:`ei_toolkit.models.registry`);
``calibrate`` fits that model's statistics and an EMS grid once (a folder, by default in the user cache, that
``sample --calibration`` then uses); ``invert`` and ``likelihood`` encode held-out data and score them; ``generate``
and ``evaluate`` write and measure sharded sample sets (torchrun-ready).

Every command runs torch on one intra-op thread unless ``--threads`` or ``OMP_NUM_THREADS`` says otherwise: the
shipped models are small, and on a shared machine extra threads only wait for each other.
"""

from __future__ import annotations

import argparse
import sys

from ei_toolkit.errors import NumericalError

from . import calibrate, compare, describe, generate, invert, likelihood, sample
from .common import UsageError, positive_int, set_threads

__all__ = ["UsageError", "build_parser", "main"]

COMMANDS = (compare, sample, calibrate, invert, likelihood, describe, generate)
"""The command modules, in the order of the help; each registers its parser(s) with ``add_parser(sub)``."""


def build_parser() -> argparse.ArgumentParser:
    """The ``ei-toolkit`` parser: every command, each with ``--threads``."""
    parser = argparse.ArgumentParser(
        prog="ei-toolkit", description="Exponential integrators for diffusion models.",
        epilog="Threads: every command runs torch on one intra-op thread (the shipped models are small; on a shared "
               "machine more threads only wait for each other) unless OMP_NUM_THREADS is set or --threads N is given "
               "after the command. Options without a command (ei-toolkit --nfe 5 ...) run compare, as before.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    for command in sub.choices.values():
        if not any("--threads" in a.option_strings for a in command._actions):
            command.add_argument("--threads", type=positive_int, default=None, metavar="N",
                                 help="torch intra-op threads (default: 1, or torch's reading of OMP_NUM_THREADS "
                                      "when that is set)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``ei-toolkit`` with ``argv`` (default: ``sys.argv[1:]``); user errors exit with status 2 and one line."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help()
        return 0
    if argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["compare", *argv]  # options without a command: compare, for old command lines
    args = parser.parse_args(argv)
    set_threads(getattr(args, "threads", None))
    try:
        return args.func(args)
    except (UsageError, ValueError, TypeError, NumericalError, KeyError) as exc:
        # a user error (bad option values, an SDE or method that cannot run as asked): a message, no traceback
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        parser.exit(2, f"{parser.prog}: error: {msg}\n")
