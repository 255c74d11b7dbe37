"""`python -m studio.training RUN_DIR`: train the run whose folder is RUN_DIR (exit 0 = finished or
cancelled cleanly, 1 = failed; status.json says which and why)."""

import sys

from studio.training.run import main

if len(sys.argv) != 2:
    print("usage: python -m studio.training RUN_DIR", file=sys.stderr)
    sys.exit(2)
sys.exit(main(sys.argv[1]))
