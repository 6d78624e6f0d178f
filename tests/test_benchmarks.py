"""The benchmark scripts run end to end (their numbers are measured by hand, never asserted in tests)."""

import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT


def test_bench_training_compares_encrypted_and_plain_training(tmp_path: Path):
    flags = "--model micro --image-size 32 --block-size 8 --images 32 --batch-size 8 --rounds 1 --steps 2"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench_training.py"), *flags.split(), "--warmup-steps", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=True,
    )
    assert re.search(r"plain:\s+[\d.]+ steps/s", result.stdout)
    assert re.search(r"encrypted:\s+[\d.]+ steps/s", result.stdout)
    ratio = float(re.search(r"ratio encrypted / plain: ([\d.]+)", result.stdout).group(1))
    assert 0.2 < ratio < 5  # both arms trained; the value itself is for humans on a quiet machine
