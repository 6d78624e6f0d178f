"""What a run writes about itself: `metrics.json` as a typed record, and the rank files of multi-process runs."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import TrainingArguments

from .data import DataSummary


@dataclass
class ModelSummary:
    preset: str | None  # None for a --from_plain checkpoint
    patch_embedding: str
    parameters: int
    image_size: int
    block_size: int
    cipher_steps: list[str]


@dataclass
class BestValidation:
    metric: str | None
    value: float | None
    checkpoint: str | None  # the folder name, e.g. checkpoint-36


@dataclass
class TrainingProgress:
    global_step: int
    epoch: float | None
    resumed_from: str | None  # the checkpoint's folder name


@dataclass
class Timings:
    train_seconds: float
    test_eval_seconds: float
    attack_eval_seconds: float
    total_seconds: float


@dataclass
class RunMetrics:
    """`<output_dir>/model/metrics.json`. Scores are fractions; `test` holds `Trainer.predict`'s scores: accuracy,
    macro F1/precision/recall, AUROC, `f1_<class>`, the loss, and `num_images`. `config` holds hf-lcrypt's settings by
    flag name (never the key file's location), `training_args` the Trainer's (`TrainingArguments.to_dict`, which
    masks tokens)."""

    mode: str
    key_id: str
    dataset: str
    base_model: str | None
    folded_from_public: bool
    model: ModelSummary
    test: dict[str, float]
    per_class_f1: dict[str, float]
    test_tta: dict[str, float] | None
    weight_average: dict[str, Any] | None
    fold_check: dict[str, Any] | None
    best_validation: BestValidation
    data: DataSummary
    training: TrainingProgress
    timings: Timings
    hardware: dict[str, Any]
    config: dict[str, Any]
    training_args: dict[str, Any]
    attack_report: str = "attack_report.json"
    trained_without_key: bool = False  # on an encrypted dataset, by someone who never held the key
    dataset_encryption: dict[str, Any] | None = None  # the encrypted dataset's lcrypt.json (public), if it was one

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON would read it back: an undefined score (NaN, e.g. the AUROC or F1 of a class missing
        from the test split) is None, since NaN is not JSON."""
        return json.loads(json.dumps(json_safe(asdict(self)), default=str, allow_nan=False))

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")
        return path


def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinite float replaced by None, so that it is valid JSON."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def hardware_info(args: TrainingArguments) -> dict[str, Any]:
    info: dict[str, Any] = {
        "device": str(args.device),
        "world_size": args.world_size,
        "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no",
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def write_rank_file(args: TrainingArguments, output_dir: Path, global_step: int) -> None:
    """`<output_dir>/ranks/rank-<i>.json`: evidence that process i took part in a multi-process run."""
    rank_file = output_dir / "ranks" / f"rank-{args.process_index}.json"
    rank_file.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "rank": args.process_index,
        "local_rank": args.local_process_index,
        "world_size": args.world_size,
        "device": str(args.device),
        "host": platform.node(),
        "global_step": global_step,
    }
    rank_file.write_text(json.dumps(info) + "\n")
