#!/usr/bin/env python
"""Train and evaluate a keyed classifier: `python scripts/train.py configs/default.yaml`, `--help` for every flag
(transformers' TrainingArguments included), or under `accelerate launch`.

See docs/training.md; the work is done by `hf_lcrypt.training.main`.
"""

import os
import sys

# Idle OpenMP threads sleep instead of spinning. On a CPU shared with other work, spinning threads made training
# several times slower (docs/training.md). It must be set before torch is imported; a value already set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from hf_lcrypt.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
