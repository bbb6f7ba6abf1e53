"""`python -m p2v.cli`."""

import sys

from p2v.cli import main

if __name__ == "__main__":
    sys.exit(main())
