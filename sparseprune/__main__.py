"""``python -m sparseprune``: the same command as the ``sparseprune`` console script."""
import sys

from sparseprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
