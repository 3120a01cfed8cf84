"""`python -m metacl ...`: the same as the `metacl` console command (useful where scripts are not on PATH)."""

import sys

from metacl.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
