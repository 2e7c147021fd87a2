"""Accuracy per model evaluation on a Gaussian mixture (exact eps) against the exact ODE solution: our
integrators against diffusers and k-diffusion (the peers of ``peers.py``). Prints the tables and writes a
plot (default ``ei_toolkit_compare.png``).

Run: python benchmarks/compare.py [--problem gmm2d] [--sde ddpm] [--methods ...] [--grids ...] [--nfe ...]
[--n 1000] [--no-peers] [--out PLOT]. Peers need the bench extra (``bash scripts/setup.sh bench``, which
also installs k-diffusion with --no-deps) and the DDPM schedule (``--sde ddpm``, the default). Without
peers this is ``ei-toolkit compare``.
"""

from __future__ import annotations

import argparse
import sys

from peers import available_peers

from ei_toolkit import DiscreteVP
from ei_toolkit.__main__ import add_compare_options, compare_command, make_sde


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/compare.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compare_options(parser)
    parser.add_argument("--no-peers", action="store_true", help="our integrators only")
    args = parser.parse_args(argv)
    peers = {} if args.no_peers else available_peers()
    if not args.no_peers:
        if not peers:
            print("no peer library found: pip install -e .[bench]; pip install --no-deps k-diffusion")
        elif not isinstance(make_sde(args.sde), DiscreteVP):
            print(f"the peers need the DDPM schedule (--sde ddpm); running ours only on --sde {args.sde}")
            peers = {}
    return compare_command(args, peers)


if __name__ == "__main__":
    sys.exit(main())
