"""`python -m studio.training RUN_DIR`: train the run whose folder is RUN_DIR (exit 0 = finished or
cancelled cleanly, 1 = failed; status.json says which and why)."""

import sys

from studio.training.lean import skip_unused

if len(sys.argv) != 2:
    print("usage: python -m studio.training RUN_DIR", file=sys.stderr)
    sys.exit(2)
skip_unused()  # before anything imports transformers or peft

from studio.training.run import main  # noqa: E402 - after skip_unused, on purpose

sys.exit(main(sys.argv[1]))
