"""Data-parallel training: scripts/train.py under `accelerate launch` with two CPU processes (gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.commands.config.config_args import ClusterConfig
from helpers import REPO_ROOT

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.image_datasets import label_maps, load_image_dataset
from hf_lcrypt.training.evaluation import compute_classification_metrics


@pytest.mark.parametrize("name", ["multi_gpu.yaml", "multi_node.yaml", "fsdp.yaml", "deepspeed_zero2.yaml"])
def test_example_accelerate_configs_load(name):
    """The configs docs/training.md shows are ones accelerate reads, for several processes."""
    config = ClusterConfig.from_yaml_file(REPO_ROOT / "configs" / "accelerate" / name)
    assert config.num_processes >= 2 and config.distributed_type.value in {"MULTI_GPU", "FSDP", "DEEPSPEED"}


@pytest.mark.slow
def test_two_processes_train_one_model_together(tmp_path):
    output_dir, key_file = tmp_path / "run", tmp_path / "secret.key"
    command = [
        str(Path(sys.executable).with_name("accelerate")),
        "launch",
        "--multi_gpu",  # with --cpu, accelerate silently starts one process
        "--num_processes", "2",
        "--num_machines", "1",
        "--mixed_precision", "no",
        "--dynamo_backend", "no",
        str(REPO_ROOT / "scripts" / "train.py"),
        "--model", "micro",
        "--max_per_class", "8",  # 16 training images
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "3",  # shards of unequal size: the last batch is padded, then cut
        "--max_steps", "2",
        "--attack_max_images", "8",
        "--ema_decay", "0.9",  # a callback on every process, its file written once
        "--output_dir", str(output_dir),
        "--key_file", str(key_file),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    ranks = sorted(
        (json.loads(p.read_text()) for p in (output_dir / "ranks").glob("rank-*.json")), key=lambda r: r["rank"]
    )
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["world_size"] == 2 and r["global_step"] == 2 for r in ranks)
    metrics = json.loads((output_dir / "model" / "metrics.json").read_text())
    assert metrics["hardware"]["world_size"] == 2
    # Two steps of 2 processes x 4 images are one epoch of the 16 training images: the processes split the data.
    assert metrics["training"]["epoch"] == pytest.approx(1.0)
    # One key for both processes: the main process created it, the other one waited and read it.
    assert metrics["key_id"] == json.loads((output_dir / "model" / "config.json").read_text())["key_id"]
    assert done.stderr.count("Created a new key") == 1
    assert set(metrics["weight_average"]["scores"]) == {"best_checkpoint", "weight_average"}
    assert (output_dir / "checkpoint-2" / "weight_average.safetensors").is_file()
    # The test split was scored by Trainer.predict, in shards: the scores are those of one process scoring every image.
    test = load_image_dataset("default", max_per_class=8)["test"]
    processor = LCryptImageProcessor.from_pretrained(output_dir / "model", key=LCryptKey.load(key_file))
    model = LCryptViTForImageClassification.from_pretrained(output_dir / "model").eval()
    with torch.no_grad():
        logits = model(**processor(list(test["image"]), return_tensors="pt")).logits
    expected = compute_classification_metrics(logits.numpy(), np.array(test["label"]), label_maps(test)[0])
    assert metrics["test"]["num_images"] == len(test) and len(test) % 6  # 2 processes x 3 images do not divide it
    for name in ("accuracy", "f1", "roc_auc", *(f"f1_{c}" for c in test.features["label"].names)):
        assert metrics["test"][name] == pytest.approx(expected[name], abs=1e-9), name
