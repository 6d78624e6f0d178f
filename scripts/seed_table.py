"""Encrypted against plain over several seeds: per-seed test accuracy of each mode, the paired difference, and means.

An `encrypted` run and the `fold` run of the same seed (whose test accuracy is the plain ViT's) are the same
computation up to float rounding, which over thousands of steps separates them as two seeds would. So the question
"does encryption cost accuracy?" is answered by the mean paired difference against its standard error, not by one
pair. Reads `<folder>/seed-<n>/vit-<mode>/model/metrics.json`:

    python scripts/seed_table.py outputs/results/brain-tumor-mri-seeds
"""

import argparse
import json
import re
import statistics
from pathlib import Path

MODES = ("encrypted", "fold")


def load_accuracies(folder: Path, metric: str = "accuracy") -> dict[int, dict[str, float]]:
    """seed -> mode -> test metric, for every seed that has a finished run of each mode."""
    runs: dict[int, dict[str, float]] = {}
    for path in sorted(folder.glob("seed-*/vit-*/model/metrics.json")):
        seed = int(re.fullmatch(r"seed-(\d+)", path.parents[2].name).group(1))
        metrics = json.loads(path.read_text())
        runs.setdefault(seed, {})[metrics["mode"]] = metrics["test"][metric]
    complete = {seed: modes for seed, modes in runs.items() if set(MODES) <= set(modes)}
    if len(complete) < 2:
        raise SystemExit(f"{folder}: need at least two seeds with both an encrypted and a fold run, found {runs}.")
    return dict(sorted(complete.items()))


def mean_and_spread(values: list[float]) -> str:
    """`mean ± sample standard deviation (standard error)`, in points."""
    mean, std = statistics.mean(values), statistics.stdev(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f} (s.e. {100 * std / len(values) ** 0.5:.2f})"


def table(runs: dict[int, dict[str, float]], metric: str = "accuracy") -> str:
    lines = [
        f"| seed | encrypted {metric} | plain (fold) {metric} | encrypted - plain (points) |",
        "|---|---|---|---|",
    ]
    for seed, modes in runs.items():
        diff = 100 * (modes["encrypted"] - modes["fold"])
        lines.append(f"| {seed} | {modes['encrypted']:.3f} | {modes['fold']:.3f} | {diff:+.2f} |")
    encrypted = [modes["encrypted"] for modes in runs.values()]
    plain = [modes["fold"] for modes in runs.values()]
    diffs = [e - p for e, p in zip(encrypted, plain, strict=True)]
    lines.append(
        f"| mean ± std (s.e.), {len(runs)} seeds | {mean_and_spread(encrypted)} | {mean_and_spread(plain)} "
        f"| {mean_and_spread(diffs)} |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="folder of seed-<n>/vit-encrypted and seed-<n>/vit-fold runs")
    parser.add_argument("--metric", default="accuracy", help="test metric from metrics.json (default: accuracy)")
    args = parser.parse_args()
    print(table(load_accuracies(args.folder, args.metric), args.metric))


if __name__ == "__main__":
    main()
