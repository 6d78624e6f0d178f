"""Markdown table of training runs: accuracy, macro F1, parameters, time per epoch, inference images/s, robustness.

Reads every `<run>/model/metrics.json` (and `attack_report.json`) under the given folders, and measures inference
throughput of each saved model on this machine, batch 64, in one run.

    python scripts/results_table.py outputs/compare
"""

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForImageClassification

import hf_lcrypt  # noqa: F401 - registers the keyed ViT with the Auto classes

COLUMNS = (
    "run | mode | model | params | image/block | test acc | macro F1 | AUROC | s/epoch | infer img/s | wrong key | "
    "plain input | noise 0.1 | bit flips 1% | fold check"
)


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


def row(model_dir: Path, root: Path) -> str:
    metrics = json.loads((model_dir / "metrics.json").read_text())
    report_path = model_dir / "attack_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    test, spec = metrics["test"], metrics["model"]
    epochs = metrics["training"]["epoch"] or 1
    fold = metrics.get("fold_check") or {}
    fold_text = f"{fold['identical_predictions']}/{fold['num_images']} identical" if fold else "-"
    cells = [
        str(model_dir.parent.relative_to(root)),
        metrics["mode"],
        spec["preset"] or metrics["base_model"],
        f"{spec['parameters'] / 1e6:.1f}M",
        f"{spec['image_size']}/{spec['block_size']}",
        f"{test['accuracy']:.3f}",
        f"{test['f1']:.3f}",
        f"{test['roc_auc']:.3f}",
        f"{metrics['timings']['train_seconds'] / epochs:.0f}",
        f"{images_per_second(model_dir, spec['image_size']):.0f}",
        attack_value(report, "wrong_key"),
        attack_value(report, "plain"),
        attack_value(report, "noise_0.1"),
        attack_value(report, "bitflip_0.01"),
        fold_text,
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="folders holding run folders (searched recursively)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("| " + COLUMNS + " |")
    print("|" + "---|" * len(COLUMNS.split("|")))
    for folder in args.folders:
        for metrics_file in sorted(folder.rglob("model/metrics.json")):
            print(row(metrics_file.parent, folder))


if __name__ == "__main__":
    main()
