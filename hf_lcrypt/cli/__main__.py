"""`python -m hf_lcrypt.cli` runs the `hf-lcrypt` command line."""

import sys

from . import main

sys.exit(main())
