"""`python -m apd.sweep SPEC [flags]`: the same as `apd sweep`."""

import sys

from apd.sweep.runner import main

sys.exit(main())
