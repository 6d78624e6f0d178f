"""Encrypted against plain over several seeds: per-seed test accuracy of each mode, the paired difference, and means.

An `encrypted` run and the `fold` run of the same seed (whose test accuracy is the plain ViT's) are the same
computation up to float rounding, which over thousands of steps separates them as two seeds would. So the question
"does encryption cost accuracy?" is answered by the mean paired difference against its standard error, not by one
pair; "costs at most half a point" by a one-sided t-test (non-inferiority: the 90 % confidence interval of the mean
difference starts above -margin) and "within half a point" by the two one-sided t-tests (TOST: the interval lies
inside ±margin). Reads every `model/metrics.json` under the given run folders (or folders of runs), pairs runs by
the seed and mode they recorded, and refuses runs whose other settings differ:

    python scripts/seed_table.py outputs/results/brain-tumor-mri-seeds
    python scripts/seed_table.py outputs/results/lc25000/vit128-200ep-{encrypted,fold} outputs/results/lc25000-seeds
"""

import argparse
import json
import statistics
from pathlib import Path

from scipy import stats

MODES = ("encrypted", "fold")
_PER_RUN = ("seed", "mode", "output_dir")  # the settings a pair or a seed may differ in


def load_accuracies(paths: list[Path], metric: str = "accuracy") -> dict[int, dict[str, float]]:
    """seed -> mode -> test metric, for every seed that has a finished run of each mode."""
    runs: dict[int, dict[str, float]] = {}
    recipe, recipe_file = None, None
    for file in sorted({file for path in paths for file in path.glob("**/model/metrics.json")}):
        metrics = json.loads(file.read_text())
        config = metrics["config"]
        shared = {k: v for k, v in config.items() if k not in _PER_RUN}
        if recipe is None:
            recipe, recipe_file = shared, file
        elif shared != recipe:
            differ = sorted(k for k in recipe.keys() | shared.keys() if recipe.get(k) != shared.get(k))
            raise SystemExit(f"{file} and {recipe_file} differ in {differ}: tabulate one recipe at a time.")
        seed, mode = config["seed"], metrics["mode"]
        if mode in runs.get(seed, {}):
            raise SystemExit(f"{file}: a second {mode} run with seed {seed}; pass only one of them.")
        runs.setdefault(seed, {})[mode] = metrics["test"][metric]
    complete = {seed: modes for seed, modes in runs.items() if set(MODES) <= set(modes)}
    if len(complete) < 2:
        raise SystemExit(f"{paths}: need at least two seeds with both an encrypted and a fold run, found {runs}.")
    return dict(sorted(complete.items()))


def mean_and_spread(values: list[float]) -> str:
    """`mean ± sample standard deviation (standard error)`, in points."""
    mean, std = statistics.mean(values), statistics.stdev(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f} (s.e. {100 * std / len(values) ** 0.5:.2f})"


def equivalence(diffs: list[float], margin: float) -> str:
    """Whether encryption is shown to cost at most margin points, and to be within ±margin points, at 5 %.

    The pairs needed are for the two-sided claim, 80 % power if the true difference is 0, at the spread measured
    (normal approximation).
    """
    points = [100 * d for d in diffs]
    mean, std = statistics.mean(points), statistics.stdev(points)
    half = stats.t.ppf(0.95, len(points) - 1) * std / len(points) ** 0.5
    low, high = mean - half, mean + half
    no_cost, within = ("shown" if shown else "not shown" for shown in (-margin < low, -margin < low and high < margin))
    needed = ((stats.norm.ppf(0.95) + stats.norm.ppf(0.9)) * std / margin) ** 2
    return (
        f"90 % confidence interval of encrypted - plain: [{low:+.2f}, {high:+.2f}] points.\n"
        f"Encrypted at most {margin:g} points below plain (one-sided t-test at 5 %): {no_cost}.\n"
        f"Within ±{margin:g} points (two one-sided t-tests at 5 %): {within}; "
        f"about {needed:.0f} pairs at this spread would show it with 80 % power if the true difference is 0."
    )


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
    parser.add_argument("paths", type=Path, nargs="+", help="run folders, or folders holding them, of one recipe")
    parser.add_argument("--metric", default="accuracy", help="test metric from metrics.json (default: accuracy)")
    parser.add_argument("--margin", type=float, default=0.5, help="equivalence margin in points (default: 0.5)")
    args = parser.parse_args()
    runs = load_accuracies(args.paths, args.metric)
    print(table(runs, args.metric))
    print()
    print(equivalence([modes["encrypted"] - modes["fold"] for modes in runs.values()], args.margin))


if __name__ == "__main__":
    main()
