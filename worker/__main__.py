"""``python -m worker``: the same as the ``rory-worker`` console script."""

import sys

from worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
