"""`python -m p2v`: the same entry point as the `p2v` script."""

import sys

from p2v.cli import main

sys.exit(main())
