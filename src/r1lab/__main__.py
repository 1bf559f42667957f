"""`python -m r1lab ...` runs the CLI (where the `r1lab` script is not on PATH, e.g. a bare GPU host)."""

import sys

from r1lab.cli import main

sys.exit(main())
