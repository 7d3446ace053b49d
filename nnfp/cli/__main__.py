"""`python -m nnfp.cli ...`: the `nnfp` command."""

import sys

from nnfp.cli import main

sys.exit(main())
