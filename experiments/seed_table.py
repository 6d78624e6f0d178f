"""Encrypted against plain over several seeds: per-seed test accuracy of each mode, the paired difference, and means.

An `encrypted` run and the `fold` run of the same seed (whose test accuracy is the plain ViT's) are the same
computation up to float rounding, which over thousands of steps separates them as two seeds would. So the question
"does encryption cost accuracy?" is answered by the mean paired difference against its standard error, not by one
pair; "costs at most half a point" by a one-sided t-test (non-inferiority: the 90 % confidence interval of the mean
difference starts above -margin) and "within half a point" by the two one-sided t-tests (TOST: the interval lies
inside ±margin). Reads every `model/metrics.json` under the given run folders (or folders of runs), pairs runs by
the seed and mode they recorded, and refuses runs whose other settings differ:

    python experiments/seed_table.py outputs/results/brain-tumor-mri-seeds
    python experiments/seed_table.py outputs/results/lc25000/vit128-200ep-{encrypted,fold} outputs/results/lc25000-seeds

`--compare patch_embedding` pairs two recipes the same way instead, runs of one mode that differ only in their
patch embedding (MLP against linear):

    python experiments/seed_table.py --compare patch_embedding runs/{mlp,linear}/seed-*/vit-encrypted

`--compare weight_average` pairs the two candidates of each `--ema_decay` run instead (the weight average against the
best checkpoint, both scored on test), one run per seed, so one mode at a time:

    python experiments/seed_table.py --compare weight_average runs/seed-*/vit-encrypted

`--recorded CSV` adds pairs whose run folders are gone, as counts of correct test images per mode (columns seed,
encrypted_correct, plain_correct, test_images; others are kept as notes), to the pairs found in the folders, if any.
The brain MRI seed table of experiments/notebook.md is kept that way, new rows added as runs finish by `--record CSV`,
which appends the run folders' pairs to the CSV (with the teacher's test accuracy where its metrics.json is readable)
and prints the table of all the pairs it then holds:

    python experiments/seed_table.py outputs/results/brain-tumor-mri-seeds \
        --record experiments/results/brain-tumor-mri-seed-pairs.csv
    python experiments/seed_table.py --recorded experiments/results/brain-tumor-mri-seed-pairs.csv
"""

import argparse
import csv
import io
import json
import os
import statistics
from pathlib import Path
from typing import NamedTuple

from run_settings import recorded_settings
from scipy import stats


class Comparison(NamedTuple):
    """The setting the two runs of a seed differ in, its value in each arm, and the arms' names in the output."""

    setting: str
    arms: tuple[str, str]
    names: tuple[str, str]
    columns: tuple[str, str]


WITHIN_RUN = "weight_average"  # both arms come from one run: metrics.json's weight_average scores
COMPARISONS = {
    "mode": Comparison("mode", ("encrypted", "fold"), ("encrypted", "plain"), ("encrypted", "plain (fold)")),
    "patch_embedding": Comparison(
        "patch_embedding", ("mlp", "linear"), ("MLP patches", "linear patches"), ("MLP patches", "linear patches")
    ),
    WITHIN_RUN: Comparison(
        WITHIN_RUN,
        ("weight_average", "best_checkpoint"),
        ("weight average", "best checkpoint"),
        ("weight average", "best checkpoint"),
    ),
}
# Settings added after earlier runs were recorded, at the value those runs had (their defaults in hf_lcrypt.training,
# not imported: that would load torch and transformers for a table).
_ADDED_SETTINGS = {"patch_embedding": "linear", "ema_decay": None}
# A recorded pair: correct test images per mode (so that the accuracies are exact); the CSV records no settings, so
# that its rows are of the folders' recipe is the writer's word.
RECORDED_COLUMNS = ("seed", "encrypted_correct", "plain_correct", "test_images")
TEACHER_COLUMN = "teacher_test_accuracy"  # a note --record fills in where the CSV has the column


def load_accuracies(
    paths: list[Path], metric: str = "accuracy", comparison: Comparison = COMPARISONS["mode"], at_least: int = 2
) -> dict[int, dict[str, float]]:
    """seed -> arm -> test metric, for every seed that has a finished run of each arm (at least `at_least` seeds).

    Runs of one recipe agree on every setting both recorded: a run recorded before the Trainer's settings were kept
    (`training_args`) holds fewer of them, all it could set."""
    per_run = ("seed", "output_dir", comparison.setting)  # the settings a pair or a seed may differ in
    runs: dict[int, dict[str, float]] = {}
    recipe, recipe_file = None, None
    for file in sorted({file for path in paths for file in path.glob("**/model/metrics.json")}):
        metrics = json.loads(file.read_text())
        config = {**_ADDED_SETTINGS, **recorded_settings(metrics)}
        shared = {k: v for k, v in config.items() if k not in per_run}
        if recipe is None:
            recipe, recipe_file = shared, file
        elif differ := sorted(k for k in recipe.keys() & shared.keys() if recipe[k] != shared[k]):
            raise SystemExit(f"{file} and {recipe_file} differ in {differ}: tabulate one recipe at a time.")
        seed = config["seed"]
        for arm, value in arm_values(metrics, config, metric, comparison, file).items():
            if arm in runs.get(seed, {}):
                raise SystemExit(f"{file}: a second {arm} run with seed {seed}; pass only one of them.")
            runs.setdefault(seed, {})[arm] = value
    complete = {seed: arms for seed, arms in runs.items() if set(comparison.arms) <= set(arms)}
    if len(complete) < at_least:
        first, second = comparison.arms
        raise SystemExit(
            f"{paths}: need at least {at_least} seeds with runs of both {first} and {second}, found {runs}."
        )
    return dict(sorted(complete.items()))


def load_recorded(file: Path) -> dict[int, dict[str, float]]:
    """seed -> mode -> test accuracy from a CSV of recorded pairs, one row per seed."""
    if not file.is_file():
        raise SystemExit(f"{file}: no such file; --recorded takes a CSV with columns {', '.join(RECORDED_COLUMNS)}.")
    with file.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    missing = [column for column in RECORDED_COLUMNS if rows and column not in rows[0]]
    if not rows or missing:
        raise SystemExit(
            f"{file}: needs a header with {', '.join(RECORDED_COLUMNS)} and a row per seed; missing {missing}."
        )
    runs: dict[int, dict[str, float]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            seed, encrypted, plain, images = (int(row[column]) for column in RECORDED_COLUMNS)
        except (TypeError, ValueError):
            raise SystemExit(f"{file}, line {line}: {RECORDED_COLUMNS} must be whole numbers, got {row}.") from None
        if not (0 <= encrypted <= images and 0 <= plain <= images and images > 0):
            raise SystemExit(f"{file}, line {line}: correct counts must lie between 0 and test_images, got {row}.")
        if seed in runs:
            raise SystemExit(f"{file}, line {line}: seed {seed} recorded twice; keep one row per seed.")
        runs[seed] = {"encrypted": encrypted / images, "fold": plain / images}
    return runs


def record_pairs(paths: list[Path], file: Path) -> None:
    """Append the run folders' pairs to the CSV of recorded pairs (created if missing) as correct test images per
    mode, so that the table outlives the folders; written whole or not at all, a seed already there refused."""
    accuracies = load_accuracies(paths, at_least=1)
    sizes = load_accuracies(paths, "num_images", at_least=1)
    recorded = load_recorded(file) if file.exists() else {}
    if again := sorted(accuracies.keys() & recorded.keys()):
        raise SystemExit(f"seeds {again} are already in {file}: record each seed once (drop its row to replace it).")
    if file.exists():  # kept as it is, its own columns too; load_recorded checked the header
        text = file.read_text()
        header = next(csv.reader(io.StringIO(text)))
        text += "" if text.endswith("\n") else "\n"
    else:
        header = [*RECORDED_COLUMNS, TEACHER_COLUMN]
        text = ",".join(header) + "\n"
    teacher = teacher_accuracy(paths)
    rows = io.StringIO()
    writer = csv.DictWriter(rows, header, restval="", extrasaction="ignore", lineterminator="\n")
    for seed, arms in accuracies.items():
        images = sizes[seed]["encrypted"]
        if sizes[seed]["fold"] != images:
            raise SystemExit(
                f"seed {seed}: the encrypted and fold runs were tested on {images} and "
                f"{sizes[seed]['fold']} images; a pair must share its test split."
            )
        correct = {mode: round(accuracy * images) for mode, accuracy in arms.items()}
        if any(abs(correct[mode] / images - arms[mode]) > 1e-9 for mode in arms):
            raise SystemExit(f"seed {seed}: test accuracies {arms} are not whole counts of {images} images.")
        writer.writerow(
            {
                "seed": seed,
                "encrypted_correct": correct["encrypted"],
                "plain_correct": correct["fold"],
                "test_images": images,
                TEACHER_COLUMN: teacher,
            }
        )
    partial = file.with_name(f".{file.name}.partial")
    partial.write_text(text + rows.getvalue())
    os.replace(partial, file)
    print(f"Recorded seeds {sorted(accuracies)} in {file}.")


def teacher_accuracy(paths: list[Path]) -> str:
    """The test accuracy of the runs' teacher (one per recipe), from its metrics.json; empty if none is readable."""
    first = min(file for path in paths for file in path.glob("**/model/metrics.json"))
    teacher = recorded_settings(json.loads(first.read_text())).get("teacher")
    metrics = Path(teacher) / "metrics.json" if teacher else None
    if metrics is None or not metrics.is_file():
        return ""
    return f"{json.loads(metrics.read_text())['test']['accuracy']:.3f}"


def merge_recorded(
    runs: dict[int, dict[str, float]], recorded: dict[int, dict[str, float]], file: Path
) -> dict[int, dict[str, float]]:
    """The pairs of the run folders and of the CSV, a seed in both refused (which of the two would count?)."""
    both = sorted(runs.keys() & recorded.keys())
    if both:
        raise SystemExit(f"seeds {both} are both in {file} and in the run folders: pass each seed once.")
    if len(runs) + len(recorded) < 2:
        raise SystemExit(f"{file} and the run folders hold {len(runs) + len(recorded)} pair; need at least two.")
    return dict(sorted({**runs, **recorded}.items()))


def arm_values(metrics: dict, config: dict, metric: str, comparison: Comparison, file: Path) -> dict[str, float]:
    """The arm a run belongs to and its test metric; for the weight average, both candidates the run scored."""
    if comparison.setting != WITHIN_RUN:
        if metric not in metrics["test"]:
            raise SystemExit(f"{file}: no test {metric} recorded (it has {sorted(metrics['test'])}).")
        return {config[comparison.setting]: metrics["test"][metric]}
    average = metrics.get("weight_average")
    if average is None or average["metric"] != metric:
        raise SystemExit(
            f"{file}: no weight average scored by {metric} "
            f"(a run with --ema_decay and --metric_for_best_model {metric})."
        )
    return {arm: average["scores"][arm]["test"] for arm in comparison.arms}


def mean_and_spread(values: list[float]) -> str:
    """`mean ± sample standard deviation (standard error)`, in points."""
    mean, std = statistics.mean(values), statistics.stdev(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f} (s.e. {100 * std / len(values) ** 0.5:.2f})"


def equivalence(diffs: list[float], margin: float, names: tuple[str, str] = ("encrypted", "plain")) -> str:
    """Whether the first arm (encryption) is shown to cost at most margin points against the second, and to be
    within ±margin points of it, at 5 %.

    The pairs needed are for the two-sided claim, 80 % power if the true difference is 0, at the spread measured
    (normal approximation).
    """
    points = [100 * d for d in diffs]
    mean, std = statistics.mean(points), statistics.stdev(points)
    half = stats.t.ppf(0.95, len(points) - 1) * std / len(points) ** 0.5
    low, high = mean - half, mean + half
    no_cost, within = ("shown" if shown else "not shown" for shown in (-margin < low, -margin < low and high < margin))
    needed = ((stats.norm.ppf(0.95) + stats.norm.ppf(0.9)) * std / margin) ** 2
    first = names[0][:1].upper() + names[0][1:]
    return (
        f"90 % confidence interval of {names[0]} - {names[1]}: [{low:+.2f}, {high:+.2f}] points.\n"
        f"{first} at most {margin:g} points below {names[1]} (one-sided t-test at 5 %): {no_cost}.\n"
        f"Within ±{margin:g} points (two one-sided t-tests at 5 %): {within}; "
        f"about {needed:.0f} pairs at this spread would show it with 80 % power if the true difference is 0."
    )


def table(
    runs: dict[int, dict[str, float]], metric: str = "accuracy", comparison: Comparison = COMPARISONS["mode"]
) -> str:
    (first, second), (name, other) = comparison.arms, comparison.names
    lines = [
        f"| seed | {comparison.columns[0]} {metric} | {comparison.columns[1]} {metric} | {name} - {other} (points) |",
        "|---|---|---|---|",
    ]
    for seed, arms in runs.items():
        diff = 100 * (arms[first] - arms[second])
        lines.append(f"| {seed} | {arms[first]:.3f} | {arms[second]:.3f} | {diff:+.2f} |")
    firsts, seconds = ([arms[arm] for arms in runs.values()] for arm in (first, second))
    diffs = [a - b for a, b in zip(firsts, seconds, strict=True)]
    lines.append(
        f"| mean ± std (s.e.), {len(runs)} seeds | {mean_and_spread(firsts)} | {mean_and_spread(seconds)} "
        f"| {mean_and_spread(diffs)} |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", type=Path, nargs="*", help="run folders, or folders holding them, of one recipe")
    parser.add_argument(
        "--recorded",
        type=Path,
        metavar="CSV",
        help="pairs recorded as correct test images per mode (seed, encrypted_correct, plain_correct, test_images), "
        "added to those of the run folders; with --compare mode and --metric accuracy only",
    )
    parser.add_argument(
        "--record",
        type=Path,
        metavar="CSV",
        help="append the run folders' pairs to this CSV of recorded pairs (created if missing), then print the table "
        "of all its pairs; with --compare mode and --metric accuracy only",
    )
    parser.add_argument("--metric", default="accuracy", help="test metric from metrics.json (default: accuracy)")
    parser.add_argument("--margin", type=float, default=0.5, help="equivalence margin in points (default: 0.5)")
    parser.add_argument(
        "--compare",
        choices=COMPARISONS,
        default="mode",
        help="what the two arms of a seed differ in: mode (encrypted against fold runs, the default), "
        "patch_embedding (mlp against linear runs) or weight_average (the average against the best checkpoint, "
        "within each --ema_decay run)",
    )
    args = parser.parse_args()
    comparison = COMPARISONS[args.compare]
    recorded = args.recorded or args.record
    if args.recorded and args.record:
        parser.error("--record CSV already prints the table of CSV's pairs: pass --recorded or --record, not both")
    if recorded is None:
        if not args.paths:
            parser.error("give run folders, --recorded CSV, or both")
        runs = load_accuracies(args.paths, args.metric, comparison)
    elif args.compare != "mode" or args.metric != "accuracy":
        parser.error(
            "--recorded and --record hold encrypted and plain accuracies: "
            "use them with --compare mode --metric accuracy"
        )
    elif args.record:
        if not args.paths:
            parser.error("--record CSV appends the pairs of run folders: give the run folders too")
        record_pairs(args.paths, args.record)
        runs = load_recorded(args.record)
        if len(runs) < 2:
            print(f"{args.record} holds one pair so far; a table needs at least two.")
            return
    else:
        found = load_accuracies(args.paths, args.metric, comparison, at_least=0) if args.paths else {}
        runs = merge_recorded(found, load_recorded(args.recorded), args.recorded)
    print(table(runs, args.metric, comparison))
    print()
    first, second = comparison.arms
    print(equivalence([arms[first] - arms[second] for arms in runs.values()], args.margin, comparison.names))


if __name__ == "__main__":
    main()
