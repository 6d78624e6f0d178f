"""The benchmark scripts run end to end and report what they measured (their speeds are read by humans, never
asserted in tests)."""

import re
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT


def test_bench_training_times_both_arms_in_every_round_and_reports_their_ratio(tmp_path: Path):
    flags = "--model micro --image-size 32 --block-size 8 --images 32 --batch-size 8 --rounds 3 --steps 2"
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "bench_training.py"), *flags.split(), "--warmup-steps", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=True,
    )
    assert result.stdout.startswith("micro ViT (") and "32x32 in blocks of 8, batch 8" in result.stdout
    rounds = {}
    for arm in ("plain", "encrypted"):
        line = re.search(
            rf"^\s*{arm}: +([\d.]+) steps/s +([\d.]+) images/s +\(rounds: ([\d., ]+)\)$", result.stdout, re.M
        )
        assert line, result.stdout
        rounds[arm] = [float(r) for r in line[3].split(", ")]
        assert len(rounds[arm]) == 3 and min(rounds[arm]) > 0  # each arm timed in every round
        assert min(rounds[arm]) <= float(line[1]) <= max(rounds[arm]) and float(line[2]) > float(line[1])
    ratio = float(re.search(r"ratio encrypted / plain: ([\d.]+)", result.stdout)[1])
    slowest, fastest = min(rounds["encrypted"]) / max(rounds["plain"]), max(rounds["encrypted"]) / min(rounds["plain"])
    assert 0.99 * slowest <= ratio <= 1.01 * fastest  # the encrypted arm's speed over the plain arm's
