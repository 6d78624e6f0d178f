"""experiments/seed_table.py: pairs runs by seed, prints the paired differences and their verdicts, records pairs."""

import json
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "experiments" / "seed_table.py"


TRAINER_SETTINGS = ("num_train_epochs", "learning_rate", "ema_decay")  # metrics.json's training_args, since 0.2


def _fake_run(
    folder: Path,
    mode: str,
    seed: int,
    accuracy: float,
    epochs: float = 30.0,
    average: float | None = None,
    images: int = 100,
    old: bool = False,
    **settings: object,
) -> None:
    """A metrics.json recording `settings` too: hf-lcrypt's in `config`, the Trainer's in `training_args`; with
    `old`, as runs recorded before the Trainer's settings were kept apart: all in `config`, the epochs as `epochs`,
    and lacking the settings added since (unless given). With `average`, of an --ema_decay run whose weight average
    scored that on test."""
    (folder / "model").mkdir(parents=True)
    if old:
        config = {"mode": mode, "seed": seed, "epochs": epochs, "output_dir": str(folder), **settings}
        if average is not None:
            config["ema_decay"] = 0.999
        metrics = {"mode": mode, "config": config}
    else:
        config = {"mode": mode, "patch_embedding": "linear", "teacher": None}
        training_args = {"seed": seed, "num_train_epochs": epochs, "output_dir": str(folder), "ema_decay": None}
        if average is not None:
            training_args["ema_decay"] = 0.999
        for name, value in settings.items():
            (training_args if name in TRAINER_SETTINGS else config)[name] = value
        metrics = {"mode": mode, "config": config, "training_args": training_args}
    metrics["test"] = {"accuracy": accuracy, "num_images": images}
    if average is not None:
        scores = {
            "best_checkpoint": {"validation": 0.9, "test": accuracy},
            "weight_average": {"validation": 0.8, "test": average},
        }
        metrics["weight_average"] = {
            "decay": 0.999,
            "metric": "accuracy",
            "scores": scores,
        }
    (folder / "model" / "metrics.json").write_text(json.dumps(metrics))


def _seed_table(*paths: Path | str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=check)


def test_seed_table_pairs_encrypted_and_plain_runs_by_seed(tmp_path: Path):
    accuracies = {1: (0.95, 0.94), 2: (0.93, 0.94), 3: (0.96, 0.94), 4: (0.90, None)}  # seed 4 has no fold run
    for seed, pair in accuracies.items():
        for mode, accuracy in zip(("encrypted", "fold"), pair, strict=True):
            if accuracy is not None:  # seed 1 outside the folder of seeds, passed as its run folders
                _fake_run(
                    tmp_path / ("seed-1" if seed == 1 else f"seeds/seed-{seed}") / f"vit-{mode}", mode, seed, accuracy
                )
    result = _seed_table(tmp_path / "seed-1" / "vit-encrypted", tmp_path / "seed-1" / "vit-fold", tmp_path / "seeds")
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[3].strip(" |") for row in rows] == ["+1.00", "-1.00", "+2.00"]  # seed 4 left out
    # encrypted 95, 93, 96: mean 94.67, sample std 1.53; differences +1, -1, +2: mean 0.67, std 1.53, s.e. 0.88
    assert "| 94.67 ± 1.53 (s.e. 0.88) | 94.00 ± 0.00 (s.e. 0.00) | 0.67 ± 1.53 (s.e. 0.88) |" in result.stdout
    # 90 % interval: 0.67 ± t(0.95, 2 d.f.) 2.92 x 0.88 = [-1.91, +3.24], not inside ±0.5
    assert "encrypted - plain: [-1.91, +3.24] points." in result.stdout
    assert "Encrypted at most 0.5 points below plain (one-sided t-test at 5 %): not shown." in result.stdout
    assert "Within ±0.5 points (two one-sided t-tests at 5 %): not shown;" in result.stdout


def _fake_pairs(folder: Path, differences: tuple[float, ...]) -> None:
    """One encrypted and one fold run per seed, encrypted - plain = each difference in points."""
    for seed, difference in enumerate(differences, start=1):
        _fake_run(folder / f"seed-{seed}" / "vit-encrypted", "encrypted", seed, 0.94 + difference / 100)
        _fake_run(folder / f"seed-{seed}" / "vit-fold", "fold", seed, 0.94)


def test_seed_table_shows_equivalence_only_when_the_interval_lies_inside_the_margin(tmp_path: Path):
    _fake_pairs(tmp_path, (0.1, 0.0, -0.1, 0.0))  # points: mean 0, std 0.082, 90 % interval ± 2.35 x 0.041 = ± 0.10
    shown = _seed_table(tmp_path).stdout
    assert "[-0.10, +0.10] points." in shown and "Within ±0.5 points (two one-sided t-tests at 5 %): shown;" in shown
    tighter = _seed_table(tmp_path, "--margin", "0.05").stdout
    assert "at most 0.05 points below plain (one-sided t-test at 5 %): not shown." in tighter
    assert "Within ±0.05 points (two one-sided t-tests at 5 %): not shown;" in tighter


def test_seed_table_shows_no_cost_apart_from_equivalence_when_encrypted_may_be_better(tmp_path: Path):
    _fake_pairs(tmp_path / "better", (1.0, 1.1, 0.9, 1.0))  # interval [+0.90, +1.10]: no cost, yet not within 0.5
    better = _seed_table(tmp_path / "better").stdout
    assert "Encrypted at most 0.5 points below plain (one-sided t-test at 5 %): shown." in better
    assert "Within ±0.5 points (two one-sided t-tests at 5 %): not shown;" in better
    _fake_pairs(tmp_path / "worse", (-1.0, -1.1, -0.9, -1.0))  # the mirror image: a cost of about a point
    worse = _seed_table(tmp_path / "worse").stdout
    assert "Encrypted at most 0.5 points below plain (one-sided t-test at 5 %): not shown." in worse


def test_seed_table_refuses_mixed_recipes_and_repeated_seeds(tmp_path: Path):
    for seed in (1, 2):
        for mode in ("encrypted", "fold"):
            _fake_run(tmp_path / f"seed-{seed}" / f"vit-{mode}", mode, seed, 0.9, epochs=30 if seed == 1 else 60)
    result = _seed_table(tmp_path, check=False)
    assert result.returncode != 0 and "differ in ['num_train_epochs']" in result.stderr
    _fake_run(tmp_path / "again" / "vit-fold", "fold", 1, 0.9)
    result = _seed_table(tmp_path / "seed-1", tmp_path / "again", check=False)
    assert result.returncode != 0 and "a second fold run with seed 1" in result.stderr


def test_seed_table_pairs_runs_recorded_before_a_setting_existed_with_runs_at_its_default(tmp_path: Path):
    for seed in (1, 2):  # the encrypted runs predate --ema_decay and --patch_embedding
        _fake_run(tmp_path / f"seed-{seed}" / "vit-encrypted", "encrypted", seed, 0.9, old=True)
        _fake_run(tmp_path / f"seed-{seed}" / "vit-fold", "fold", seed, 0.9, old=True, ema_decay=None)
    assert "| 1 | 0.900 | 0.900 | +0.00 |" in _seed_table(tmp_path).stdout
    _fake_run(tmp_path / "seed-3" / "vit-encrypted", "encrypted", 3, 0.9, old=True, ema_decay=0.999)
    result = _seed_table(tmp_path, check=False)
    assert result.returncode != 0 and "differ in ['ema_decay']" in result.stderr


def test_seed_table_pairs_runs_recorded_before_and_after_the_trainer_settings_moved(tmp_path: Path):
    """Old runs keep the seed and epochs in `config` (as `epochs`), new ones in `training_args` (as
    `num_train_epochs`): they pair by seed, and a recipe that differs in a renamed setting is still refused."""
    for seed, (encrypted, plain) in {1: (0.95, 0.94), 2: (0.93, 0.94), 3: (0.96, 0.94)}.items():
        _fake_run(tmp_path / f"seed-{seed}" / "vit-encrypted", "encrypted", seed, encrypted, old=seed == 1)
        _fake_run(tmp_path / f"seed-{seed}" / "vit-fold", "fold", seed, plain, old=seed != 3)
    result = _seed_table(tmp_path).stdout
    rows = [line for line in result.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == ["| 1 | 0.950 | 0.940 | +1.00 |", "| 2 | 0.930 | 0.940 | -1.00 |", "| 3 | 0.960 | 0.940 | +2.00 |"]
    _fake_run(tmp_path / "longer" / "seed-4" / "vit-fold", "fold", 4, 0.9, epochs=60)
    refused = _seed_table(tmp_path, check=False)
    assert refused.returncode != 0 and "differ in ['num_train_epochs']" in refused.stderr


def test_seed_table_compares_patch_embeddings_by_seed(tmp_path: Path):
    """MLP against linear: encrypted runs of one recipe but the patch embedding, the linear ones recorded before the
    setting existed (so at its default), paired by seed; fold runs, of another mode, are refused."""
    for seed, (mlp, linear) in {1: (0.85, 0.84), 2: (0.83, 0.83), 3: (0.86, 0.83)}.items():
        _fake_run(tmp_path / "mlp" / f"seed-{seed}" / "vit-encrypted", "encrypted", seed, mlp, patch_embedding="mlp")
        _fake_run(tmp_path / "linear" / f"seed-{seed}" / "vit-encrypted", "encrypted", seed, linear, old=True)
    result = _seed_table("--compare", "patch_embedding", tmp_path / "mlp", tmp_path / "linear").stdout
    assert "| seed | MLP patches accuracy | linear patches accuracy | MLP patches - linear patches (points) |" in result
    rows = [line for line in result.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[3].strip(" |") for row in rows] == ["+1.00", "+0.00", "+3.00"]
    assert "90 % confidence interval of MLP patches - linear patches: [" in result
    assert "MLP patches at most 0.5 points below linear patches (one-sided t-test at 5 %): not shown." in result
    _fake_run(tmp_path / "linear" / "seed-1" / "vit-fold", "fold", 1, 0.84)
    refused = _seed_table("--compare", "patch_embedding", tmp_path / "mlp", tmp_path / "linear", check=False)
    assert refused.returncode != 0 and "differ in ['mode']" in refused.stderr
    wrong_arm = _seed_table(tmp_path / "mlp", check=False)  # by mode, MLP runs alone have no fold partner
    assert wrong_arm.returncode != 0 and "with runs of both encrypted and fold" in wrong_arm.stderr


def test_seed_table_compares_the_weight_average_with_the_best_checkpoint_within_each_run(tmp_path: Path):
    for seed, (best, average) in {1: (0.84, 0.85), 2: (0.83, 0.83), 3: (0.82, 0.84)}.items():
        _fake_run(tmp_path / f"seed-{seed}" / "vit-encrypted", "encrypted", seed, best, average=average)
    result = _seed_table("--compare", "weight_average", tmp_path).stdout
    assert (
        "| seed | weight average accuracy | best checkpoint accuracy | weight average - best checkpoint (points) |"
        in result
    )
    rows = [line for line in result.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[3].strip(" |") for row in rows] == ["+1.00", "+0.00", "+2.00"]
    assert "90 % confidence interval of weight average - best checkpoint: [" in result
    _fake_run(tmp_path / "plain-run", "encrypted", 4, 0.8)
    refused = _seed_table("--compare", "weight_average", tmp_path, check=False)
    assert refused.returncode != 0 and "no weight average scored by accuracy" in refused.stderr
    by_f1 = _seed_table("--compare", "weight_average", "--metric", "f1", tmp_path / "seed-1", check=False)
    assert by_f1.returncode != 0 and "no weight average scored by f1" in by_f1.stderr


def _pairs_csv(path: Path, *rows: str, header: str = "seed,encrypted_correct,plain_correct,test_images,note") -> Path:
    path.write_text("\n".join((header, *rows)) + "\n")
    return path


def test_seed_table_adds_recorded_pairs_to_the_run_folders(tmp_path: Path):
    recorded = _pairs_csv(tmp_path / "pairs.csv", "1,95,94,100,teacher A", "2,93,94,100,teacher A")
    _fake_run(tmp_path / "runs" / "seed-3" / "vit-encrypted", "encrypted", 3, 0.96)
    _fake_run(tmp_path / "runs" / "seed-3" / "vit-fold", "fold", 3, 0.94)
    result = _seed_table("--recorded", recorded, tmp_path / "runs").stdout
    rows = [line for line in result.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == ["| 1 | 0.950 | 0.940 | +1.00 |", "| 2 | 0.930 | 0.940 | -1.00 |", "| 3 | 0.960 | 0.940 | +2.00 |"]
    assert "encrypted - plain: [-1.91, +3.24] points." in result  # as the same three pairs all from run folders
    alone = _seed_table("--recorded", recorded).stdout
    assert "| mean ± std (s.e.), 2 seeds | 94.00 ± 1.41 (s.e. 1.00) | 94.00 ± 0.00 (s.e. 0.00) |" in alone


def test_seed_table_refuses_recorded_pairs_it_cannot_count_once(tmp_path: Path):
    _fake_run(tmp_path / "runs" / "seed-2" / "vit-encrypted", "encrypted", 2, 0.96)
    _fake_run(tmp_path / "runs" / "seed-2" / "vit-fold", "fold", 2, 0.94)
    cases = {
        "seeds [2] are both in": _pairs_csv(tmp_path / "twice.csv", "1,95,94,100,", "2,93,94,100,"),
        "seed 1 recorded twice": _pairs_csv(tmp_path / "repeated.csv", "1,95,94,100,", "1,93,94,100,"),
        "must lie between 0 and test_images": _pairs_csv(tmp_path / "over.csv", "1,101,94,100,"),
        "must be whole numbers": _pairs_csv(tmp_path / "fraction.csv", "1,0.95,94,100,"),
        "missing ['plain_correct']": _pairs_csv(
            tmp_path / "column.csv", "1,95,100", header="seed,encrypted_correct,test_images"
        ),
        "no such file": tmp_path / "absent.csv",
    }
    for message, recorded in cases.items():
        result = _seed_table("--recorded", recorded, tmp_path / "runs", check=False)
        assert result.returncode != 0 and message in result.stderr, (message, result.stderr)
    one = _seed_table("--recorded", _pairs_csv(tmp_path / "one.csv", "1,95,94,100,"), check=False)
    assert one.returncode != 0 and "hold 1 pair; need at least two" in one.stderr
    by_f1 = _seed_table("--recorded", tmp_path / "one.csv", "--metric", "f1", check=False)
    assert by_f1.returncode != 0 and "use them with --compare mode --metric accuracy" in by_f1.stderr
    nothing = _seed_table(check=False)
    assert nothing.returncode != 0 and "give run folders, --recorded CSV, or both" in nothing.stderr


def test_seed_table_records_the_run_folders_pairs_as_counts(tmp_path: Path):
    """--record appends each seed's pair to the CSV as correct test images, with the teacher's test accuracy, and
    prints the table of all its pairs; refused appends leave the file as it was."""
    teacher = tmp_path / "teacher" / "model"
    teacher.mkdir(parents=True)
    (teacher / "metrics.json").write_text(json.dumps({"test": {"accuracy": 0.97124}}))
    for seed, (encrypted, plain) in {1: (0.95, 0.94), 2: (0.93, 0.94)}.items():
        for mode, accuracy in (("encrypted", encrypted), ("fold", plain)):
            _fake_run(tmp_path / "runs" / f"seed-{seed}" / f"vit-{mode}", mode, seed, accuracy, teacher=str(teacher))
    pairs = tmp_path / "pairs.csv"
    result = _seed_table(tmp_path / "runs", "--record", pairs).stdout
    header = "seed,encrypted_correct,plain_correct,test_images,teacher_test_accuracy\n"
    assert pairs.read_text() == header + "1,95,94,100,0.971\n2,93,94,100,0.971\n"
    assert "Recorded seeds [1, 2]" in result and "| 2 | 0.930 | 0.940 | -1.00 |" in result
    assert result.split("\n", 1)[1] == _seed_table("--recorded", pairs).stdout  # the table of the CSV alone

    again = _seed_table(tmp_path / "runs", "--record", pairs, check=False)
    assert again.returncode != 0 and "seeds [1, 2] are already in" in again.stderr
    assert pairs.read_text() == header + "1,95,94,100,0.971\n2,93,94,100,0.971\n"

    kept = _pairs_csv(tmp_path / "kept.csv", "1,95,94,100,teacher A")
    kept.write_text(kept.read_text().rstrip("\n"))  # no final newline, a column of notes, no teacher column
    _fake_run(tmp_path / "more" / "seed-3" / "vit-encrypted", "encrypted", 3, 0.96)
    _fake_run(tmp_path / "more" / "seed-3" / "vit-fold", "fold", 3, 0.94)
    assert "| 3 | 0.960 | 0.940 | +2.00 |" in _seed_table(tmp_path / "more", "--record", kept).stdout
    assert kept.read_text().splitlines()[1:] == ["1,95,94,100,teacher A", "3,96,94,100,"]

    first = _seed_table(tmp_path / "more", "--record", tmp_path / "new.csv").stdout
    assert "holds one pair so far" in first and (tmp_path / "new.csv").read_text().endswith("\n3,96,94,100,\n")

    _fake_run(tmp_path / "odd" / "seed-4" / "vit-encrypted", "encrypted", 4, 0.955)
    _fake_run(tmp_path / "odd" / "seed-4" / "vit-fold", "fold", 4, 0.94)
    _fake_run(tmp_path / "split" / "seed-5" / "vit-encrypted", "encrypted", 5, 0.95, images=200)
    _fake_run(tmp_path / "split" / "seed-5" / "vit-fold", "fold", 5, 0.94)
    before = kept.read_text()
    for folder, message in {"odd": "are not whole counts of 100 images", "split": "must share its test split"}.items():
        refused = _seed_table(tmp_path / folder, "--record", kept, check=False)
        assert refused.returncode != 0 and message in refused.stderr, refused.stderr
    assert kept.read_text() == before and not list(tmp_path.glob(".*.partial"))
    alone = _seed_table("--record", kept, check=False)
    assert alone.returncode != 0 and "give the run folders too" in alone.stderr
    both = _seed_table(tmp_path / "more", "--record", kept, "--recorded", kept, check=False)
    assert both.returncode != 0 and "not both" in both.stderr


def test_notebook_seed_table_is_the_recorded_pairs():
    """experiments/notebook.md's brain MRI seed table, and the interval it quotes, are what the committed CSV prints."""
    recorded = REPO_ROOT / "experiments" / "results" / "brain-tumor-mri-seed-pairs.csv"
    result = _seed_table("--recorded", recorded).stdout
    notebook = (REPO_ROOT / "experiments" / "notebook.md").read_text()
    table = [line for line in result.splitlines() if line.startswith("|")]
    assert len(table) > 20 and all(line in notebook.splitlines() for line in table), table
    low, high = map(float, re.search(r"\[([-+.\d]+), ([-+.\d]+)\] points", result).groups())
    assert f"{low:+.2f} to {high:+.2f} points" in notebook
