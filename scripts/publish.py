"""Check a trained keyed model and publish it to the Hugging Face Hub (same as `hf-lcrypt publish`).

python scripts/publish.py outputs/run/model --repo-id user/keyed-vit --key-file model.key --dry-run /tmp/repo
"""

import sys

from hf_lcrypt.publishing import main

if __name__ == "__main__":
    sys.exit(main())
