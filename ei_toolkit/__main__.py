"""``python -m ei_toolkit``: the command line of :mod:`ei_toolkit.cli`."""

import sys

from ei_toolkit.cli import main
from ei_toolkit.cli.calibrate import STATISTICS_NAME  # noqa: F401  (old import paths: benchmarks, tests)
from ei_toolkit.cli.common import UsageError, positive_int, set_threads  # noqa: F401
from ei_toolkit.cli.compare import add_compare_options, compare_command  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
