"""``python -m ei_toolkit``: the command line of :mod:`ei_toolkit.cli`."""

import sys

from ei_toolkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
