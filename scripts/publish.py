"""Check and publish a keyed model to the Hub: the same as `hf-lcrypt publish` (see its --help)."""

import sys

from hf_lcrypt.cli import main

if __name__ == "__main__":
    sys.exit(main(["publish", *sys.argv[1:]]))
