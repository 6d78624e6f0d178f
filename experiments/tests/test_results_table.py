"""experiments/results_table.py on a real run: its tables, and a command that reproduces the run's settings, for a
run recorded by the current training interface and for the same run recorded the old way."""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "experiments" / "results_table.py"
LEFT_OUT = ("resume_from_checkpoint", "hub_token", "dataloader_pin_memory")  # the machine's, or not a setting

pytestmark = pytest.mark.slow


def old_metrics(metrics: dict) -> dict:
    """`metrics` as runs recorded them before the Trainer's settings were kept apart: all in `config`, under the
    old names, the Trainer's other settings not recorded at all."""
    args = metrics["training_args"]
    assert args["per_device_eval_batch_size"] == args["per_device_train_batch_size"]  # --batch_size set both
    assert args["eval_steps"] == args["save_steps"]  # --eval_steps set both
    config = {
        **metrics["config"],
        "epochs": args["num_train_epochs"],
        "max_steps": args["max_steps"],
        "batch_size": args["per_device_train_batch_size"],
        "lr": args["learning_rate"],
        "weight_decay": args["weight_decay"],
        "warmup": args["warmup_steps"],
        "seed": args["seed"],
        "label_smoothing": args["label_smoothing_factor"],
        "ema_decay": args["ema_decay"],
        "early_stopping_patience": args["early_stopping_patience"],
        "metric": args["metric_for_best_model"],
        "eval_steps": args["eval_steps"],
        "logging_steps": args["logging_steps"],
        "num_proc": args["dataloader_num_workers"],
        "save_total_limit": args["save_total_limit"],
        "bf16": args["bf16"],
        "report_to": "none",
        "output_dir": args["output_dir"],
        "resume": False,
    }
    return {**{k: v for k, v in metrics.items() if k != "training_args"}, "config": config}


def test_results_table_reads_a_run_and_prints_the_command_that_reproduces_it(tmp_path: Path):
    from hf_lcrypt.training import parse_args

    run = tmp_path / "runs" / "encrypted"
    flags = (
        "--data default --model micro --max_per_class 8 --max_steps 4 --per_device_train_batch_size 8 "
        "--per_device_eval_batch_size 8 --eval_strategy steps --eval_steps 2 --save_strategy steps --save_steps 2 "
        "--logging_steps 1 --learning_rate 1e-3 --seed 3 --attack_max_images 16 --tta --ema_decay 0.5 "
        f"--output_dir {run} --key_file {tmp_path / 'secret.key'}"
    )
    train = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), *shlex.split(flags)]
    subprocess.run(train, check=True, capture_output=True, timeout=600)
    metrics = json.loads((run / "model" / "metrics.json").read_text())
    # The same run recorded the old way, resumed from its first checkpoint: it timed only half of its steps.
    resumed = tmp_path / "old" / "resumed"
    shutil.copytree(run / "model", resumed / "model")
    old = old_metrics(metrics)
    old["training"]["resumed_from"] = "checkpoint-2"
    old["timings"]["train_seconds"] = 600.0
    (resumed / "model" / "metrics.json").write_text(json.dumps(old))

    table = [sys.executable, str(SCRIPT), str(tmp_path), "--figures", str(tmp_path / "figures")]
    output = subprocess.run(table, check=True, capture_output=True, text=True, timeout=300).stdout
    lines = output.splitlines()

    test, tta, average = metrics["test"], metrics["test_tta"], metrics["weight_average"]
    row = next(line for line in lines if line.startswith("| runs/encrypted | encrypted | micro |")).split(" | ")
    assert (row[5], row[6], row[7]) == tuple(f"{test[m]:.3f}" for m in ("accuracy", "f1", "roc_auc"))
    resumed_row = next(line for line in lines if line.startswith("| old/resumed | encrypted |")).split(" | ")
    assert resumed_row[8] == f"{600 / (metrics['training']['epoch'] / 2):.0f}"
    assert "| 10.0 min after resuming from checkpoint-2 |" in output
    views = [f"{tta[m]:.3f}" for m in ("accuracy", "f1", "roc_auc")]
    assert f"| runs/encrypted | {tta['views']} | {test['accuracy']:.3f} | {' | '.join(views)} |" in output
    scores = [
        f"{average['scores'][c][s]:.3f}" for s in ("validation", "test") for c in ("best_checkpoint", "weight_average")
    ]
    assert f"| runs/encrypted | 0.5 | {' | '.join(scores)} |" in output
    assert (tmp_path / "figures" / f"{tmp_path.name}-runs-encrypted-confusion.png").is_file()

    commands = {
        line.split("`")[1]: line.split("`")[3] for line in lines if line.startswith("- `")
    }  # - `run`: `command`
    assert commands["runs/encrypted"] == commands["old/resumed"]  # the old record prints the current command
    argv = shlex.split(commands["runs/encrypted"])
    assert argv[:2] == ["python", "scripts/train.py"] and "--key_file" not in argv
    assert all("-" not in word[2:] for word in argv if word.startswith("--"))  # the underscore spelling
    assert "--tta" in argv and "--seed" in argv and "--ema_decay" in argv
    args = parse_args(argv[2:])
    assert args.settings() == metrics["config"]
    recorded = {k: v for k, v in metrics["training_args"].items() if k not in LEFT_OUT}
    parsed = json.loads(json.dumps(args.training.to_dict()))  # as metrics.json holds it
    assert {k: v for k, v in parsed.items() if k not in LEFT_OUT} == recorded
