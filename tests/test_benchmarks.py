"""The benchmark scripts run end to end and report what they measured (their speeds are read by humans, never
asserted in tests)."""

import re
import statistics
import subprocess
import sys
from pathlib import Path

from helpers import REPO_ROOT


def test_bench_training_reports_the_median_of_each_arms_rounds_and_their_ratio(tmp_path: Path):
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
    medians = {}
    for arm in ("plain", "encrypted"):
        line = re.search(
            rf"^\s*{arm}: +([\d.]+) steps/s +([\d.]+) images/s +\(rounds: ([\d., ]+)\)$", result.stdout, re.M
        )
        assert line, result.stdout
        median, images, rounds = float(line[1]), float(line[2]), [float(r) for r in line[3].split(", ")]
        assert len(rounds) == 3 and median == statistics.median(rounds)  # each arm timed in every round
        assert abs(images - 8 * median) <= 0.05 + 8 * 0.005  # images/s is steps/s times the batch (both rounded)
        medians[arm] = median
    ratio = float(re.search(r"ratio encrypted / plain: ([\d.]+)", result.stdout)[1])
    # the ratio is encrypted over plain (not the inverse), up to the rounding of the printed medians
    expected = medians["encrypted"] / medians["plain"]
    assert abs(ratio - expected) <= 0.0005 + expected * 0.005 * (1 / medians["encrypted"] + 1 / medians["plain"])
