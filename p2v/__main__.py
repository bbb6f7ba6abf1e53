"""`python -m p2v`: the same entry point as the `p2v` script."""

import sys

from p2v.cli import main

# Guarded: `p2v batch` starts its jobs with multiprocessing's spawn, which imports this
# module in every child as __mp_main__ (it must not run the CLI there).
if __name__ == "__main__":
    sys.exit(main())
