"""`python -m cdc.cli ...` is the `cdc` command (e.g. under `accelerate launch -m cdc.cli erase ...`)."""

import sys

from cdc.cli.main import main

sys.exit(main())
