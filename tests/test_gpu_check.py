"""scripts/gpu_check.sh, the one command for a GPU machine, at tiny sizes on the CPU: every step runs and the JSON
summary it prints has the documented fields (docs/training.md)."""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

pytestmark = pytest.mark.slow


def test_gpu_check_runs_tiny_on_the_cpu_and_prints_one_json_summary(shared_data, tmp_path):
    env = {
        **os.environ,
        "GPU_CHECK_TINY": "1",
        "GPU_CHECK_OUT": str(tmp_path / "gpu-check"),
        "GPU_CHECK_WHEELS": "",  # this environment's packages, not .whl/'s (tests/test_gpu_wheels.py)
        "GPU_CHECK_DATA": str(shared_data / "brain-tumor-mri" / "train"),
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh")], env=env, capture_output=True, text=True, timeout=900
    )
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((tmp_path / "gpu-check" / "logs").glob("*.log")))
    assert done.returncode == 0, done.stderr[-2000:] + logs
    summary = json.loads(done.stdout)
    assert summary["tiny"] is True and summary["quick"] is False and summary["device"].startswith("CPU")
    assert summary["versions"]["transformers"] == importlib.metadata.version("transformers")
    assert summary["bench_training"]["ratio_encrypted_plain"] > 0 and summary["bench_training"]["image_size"] == 32
    assert summary["bench_inference"]["ratio_keyed_plain"] > 0
    assert summary["bench_inference"]["max_abs_logit_diff"] < 1e-3  # fp32 on the CPU: the keyed model is exact
    teacher, student = summary["teacher"], summary["student"]
    assert (teacher["mode"], teacher["model"]) == ("plain", "resnet-small")
    assert (student["mode"], student["model"], student["distilled_from"]) == ("encrypted", "micro", "teacher")
    assert (student["image_size"], student["block_size"], student["bf16"]) == (32, 8, False)
    for run in (teacher, student):
        assert 0 <= run["test_accuracy"] <= 1 and run["test_images"] == 32  # 8 per class, 4 classes
        assert run["train_images_per_second"] > 0 and run["epochs"] == pytest.approx(1)
    assert summary["total_seconds"] > 0
