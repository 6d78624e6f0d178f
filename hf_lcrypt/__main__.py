"""`python -m hf_lcrypt` runs the `hf-lcrypt` command line."""

import sys

from .cli import main

sys.exit(main())
