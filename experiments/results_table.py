"""Markdown tables of training runs: accuracy, macro F1, parameters, time per epoch, inference images/s, robustness;
then per-class F1, the test metrics of runs with `--tta` (averaged over its views), the best checkpoint against the
weight average of runs with `--ema_decay`, and the exact command of every run.

Reads every `<run>/model/metrics.json` (and `attack_report.json`) under the given folders, and measures inference
throughput of each saved model on this machine, batch 64, in one run. `--figures DIR` copies each run's confusion
matrix and noise-robustness plot there (as `<folder>-<run>-confusion.png`, `...-noise.png`).

    python experiments/results_table.py outputs/compare
"""

import argparse
import functools
import json
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from run_settings import recorded_settings
from transformers import AutoModelForImageClassification

from hf_lcrypt import register_auto_classes
from hf_lcrypt.training import parse_args

COLUMNS = (
    "run | mode | model | params | image/block | test acc | macro F1 | AUROC | s/epoch | infer img/s | wrong key | "
    "plain input | noise 0.1 | bit flips 1% | fold check"
)


register_auto_classes()  # the run folders' keyed ViTs load through the Auto classes

# Settings a command leaves out: where a resumed run resumed from (its command is the whole run's), the Hub token
# (masked in metrics.json), and what follows from the machine rather than from the run.
LEFT_OUT = ("resume_from_checkpoint", "hub_token", "dataloader_pin_memory")
ALWAYS_SHOWN = ("mode", "model", "num_train_epochs", "seed")  # shown at their defaults too


def images_per_second(model_dir: Path, image_size: int, batch: int = 64, repeats: int = 3) -> float:
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    x = torch.rand(batch, 3, image_size, image_size)
    with torch.inference_mode():
        model(pixel_values=x)
        start = time.perf_counter()
        for _ in range(repeats):
            model(pixel_values=x)
    return batch * repeats / (time.perf_counter() - start)


def attack_value(report: dict, name: str) -> str:
    value = report.get("accuracy", {}).get(name)
    return "-" if value is None else f"{value:.3f}"


def seconds_per_epoch(metrics: dict) -> str:
    """Training seconds per epoch; a resumed run timed only the steps after its checkpoint, so only those count."""
    training, seconds = metrics["training"], metrics["timings"]["train_seconds"]
    epochs, steps = training["epoch"] or 1, training["global_step"] or 1
    resumed = training.get("resumed_from")
    trained = steps - int(resumed.removeprefix("checkpoint-")) if resumed else steps
    return f"{seconds / (epochs * trained / steps):.0f}" if trained else "-"


def row(model_dir: Path, root: Path) -> str:
    metrics = json.loads((model_dir / "metrics.json").read_text())
    report_path = model_dir / "attack_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    test, spec = metrics["test"], metrics["model"]
    fold = metrics.get("fold_check") or {}
    fold_text = f"{fold['identical_predictions']}/{fold['num_images']} identical" if fold else "-"
    cells = [
        str(model_dir.parent.relative_to(root)),
        metrics["mode"],
        (spec["preset"] or metrics["base_model"]) + (", MLP patches" if spec.get("patch_embedding") == "mlp" else ""),
        f"{spec['parameters'] / 1e6:.1f}M",
        f"{spec['image_size']}/{spec['block_size']}",
        f"{test['accuracy']:.3f}",
        f"{test['f1']:.3f}",
        f"{test['roc_auc']:.3f}",
        seconds_per_epoch(metrics),
        f"{images_per_second(model_dir, spec['image_size']):.0f}",
        attack_value(report, "wrong_key"),
        attack_value(report, "plain"),
        attack_value(report, "noise_0.1"),
        attack_value(report, "bitflip_0.01"),
        fold_text,
    ]
    return "| " + " | ".join(cells) + " |"


@functools.cache
def default_settings() -> dict[str, Any]:
    """The training parser's defaults by flag name, as a run's metrics.json records its settings."""
    defaults = parse_args([])
    return {**defaults.settings(), **defaults.training.to_dict()}


def flag_value(value: Any) -> list[str]:
    """A setting's value as command-line words: `150` for 150.0, JSON for a mapping, a list's items."""
    if isinstance(value, float) and value.is_integer():
        return [str(int(value))]
    if isinstance(value, dict):
        return [json.dumps(value)]
    if isinstance(value, list):
        return [str(item) for item in value]
    return [str(value)]


def command(metrics: dict) -> str:
    """The `scripts/train.py` command line that reproduces a run: every setting that differs from the training
    parser's defaults (runs recorded under older flag names included), the key file left out."""
    defaults, recorded = default_settings(), recorded_settings(metrics)
    flags = []
    for name in defaults:  # in the parser's order: hf-lcrypt's settings, then the Trainer's
        value = recorded.get(name)
        if name in LEFT_OUT or value is None or value == []:
            continue
        if value == defaults[name] and name not in ALWAYS_SHOWN:
            continue
        if isinstance(value, bool):
            flags += [f"--{name}"] if value else [f"--{name}", "false"]
        else:
            flags += [f"--{name}", *flag_value(value)]
    return "python scripts/train.py " + shlex.join(flags)


def details(model_dir: Path, root: Path, figures: Path | None) -> tuple[str, str]:
    """Per-class F1 of a run as `class=F1` pairs, and its command; copies its figures to `figures`."""
    metrics = json.loads((model_dir / "metrics.json").read_text())
    name = str(model_dir.parent.relative_to(root))
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        slug = f"{root.name}-{name}".replace("/", "-")
        for source, suffix in (("confusion_matrix.png", "confusion"), ("robustness_noise.png", "noise")):
            if (model_dir / source).is_file():
                shutil.copyfile(model_dir / source, figures / f"{slug}-{suffix}.png")
    per_class = ", ".join(f"{c} {f1:.3f}" for c, f1 in metrics["per_class_f1"].items())
    time = f"{metrics['timings']['train_seconds'] / 60:.1f} min"
    if resumed := metrics["training"].get("resumed_from"):
        time += f" after resuming from {resumed}"
    return f"| {name} | {per_class} | {time} |", f"- `{name}`: `{command(metrics)}`"


def tta_row(model_dir: Path, root: Path) -> str | None:
    """A run's test metrics averaged over its `--tta` views, next to its single-view accuracy; None without --tta."""
    metrics = json.loads((model_dir / "metrics.json").read_text())
    tta = metrics.get("test_tta")
    if tta is None:
        return None
    cells = [str(model_dir.parent.relative_to(root)), str(tta["views"]), f"{metrics['test']['accuracy']:.3f}"]
    return "| " + " | ".join(cells + [f"{tta[name]:.3f}" for name in ("accuracy", "f1", "roc_auc")]) + " |"


def weight_average_row(model_dir: Path, root: Path) -> str | None:
    """A run's `--ema_decay` scores: the best checkpoint and the weight average (the final model) on validation and
    test; None without --ema_decay."""
    average = json.loads((model_dir / "metrics.json").read_text()).get("weight_average")
    if average is None:
        return None
    scores = average["scores"]
    cells = [str(model_dir.parent.relative_to(root)), str(average["decay"])]
    values = [
        f"{scores[c][split]:.3f}" for split in ("validation", "test") for c in ("best_checkpoint", "weight_average")
    ]
    return "| " + " | ".join(cells + values) + " |"


def print_table(header: str, rows: list[str | None]) -> None:
    """A markdown table of the rows that are not None, if any."""
    rows = [r for r in rows if r is not None]
    if rows:
        print(f"\n| {header} |\n|" + "---|" * len(header.split("|")))
        print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding run folders (searched recursively)")
    parser.add_argument("--figures", type=Path, help="copy confusion matrices and noise plots here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    runs = [(m.parent, folder) for folder in args.folders for m in sorted(folder.rglob("model/metrics.json"))]
    print("| " + COLUMNS + " |")
    print("|" + "---|" * len(COLUMNS.split("|")))
    for model_dir, root in runs:
        print(row(model_dir, root))
    rows, commands = zip(*(details(model_dir, root, args.figures) for model_dir, root in runs), strict=True)
    print("\n| run | per-class F1 (test) | training time |\n|---|---|---|")
    print("\n".join(rows))
    print_table(
        "run | --tta views | test acc (one view) | test acc | macro F1 | AUROC",
        [tta_row(model_dir, root) for model_dir, root in runs],
    )
    print_table(
        "run | --ema_decay | validation, best checkpoint | validation, average | test, best checkpoint | test, average",
        [weight_average_row(model_dir, root) for model_dir, root in runs],
    )
    print("\nCommands (`--key_file` left out: each dataset's runs share one local key file):\n")
    print("\n".join(commands))


if __name__ == "__main__":
    main()
