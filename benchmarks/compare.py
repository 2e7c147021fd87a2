"""Accuracy per model evaluation on a Gaussian mixture (exact eps) against the exact ODE solution: our
integrators against diffusers and k-diffusion (the peers of ``peers.py``). Prints the tables and writes a
plot (default ``ei_toolkit_compare.png``): median error against NFE for each of our methods, the best of ours and
the best peer at each NFE in bold with their ratio, every peer as a faint grey line.

Run: python benchmarks/compare.py [--problem gmm2d] [--sde ddpm] [--methods ...] [--grids ...] [--nfe ...]
[--n 1000] [--no-peers] [--peers SUBSTRING ...] [--out PLOT] [--threads N] (default: one torch thread unless
OMP_NUM_THREADS is set). Peers (diffusers DPM-Solver++ / UniPC on the
official DPM-Solver grids, k-diffusion on Karras sigmas; ``peers.py``) run on any built-in ``--sde``; they need the
bench extra (``bash scripts/setup.sh bench``, which also installs k-diffusion with --no-deps). ``--peers`` keeps
the peers whose name contains one of the substrings (e.g. ``--peers logSNR "k-diffusion"``). Without peers this is
``ei-toolkit compare``.
"""

from __future__ import annotations

import argparse
import sys

from peers import available_peers

from ei_toolkit.cli.common import UsageError, positive_int, set_threads
from ei_toolkit.cli.compare import add_compare_options, compare_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/compare.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compare_options(parser)
    parser.add_argument("--no-peers", action="store_true", help="our integrators only")
    parser.add_argument("--peers", nargs="+", default=None, metavar="SUBSTRING",
                        help="only the peers whose name contains one of these (default: all)")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="torch intra-op threads (default: 1, or torch's reading of OMP_NUM_THREADS when set)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    wanted = args.peers
    peers = {} if args.no_peers else available_peers(
        None if wanted is None else (lambda name: any(w in name for w in wanted)))
    if not args.no_peers and not peers:
        print("no peer selected or no peer library found: pip install -e .[bench]; pip install --no-deps k-diffusion")
    try:
        return compare_command(args, peers)
    except UsageError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
