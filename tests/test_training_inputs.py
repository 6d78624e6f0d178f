"""Training's bad inputs and interruptions: every setting is checked before a key file is written, a finished run is
never trained over without being asked, Ctrl-C and SIGTERM stop with one line, and metrics.json is always JSON.

Each test feeds the failing input through `hf_lcrypt.training.main` (what `scripts/train.py` and `hf-lcrypt train`
run) and checks the one line it prints and that nothing was lost or left behind.
"""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import Trainer

from hf_lcrypt.training import main
from hf_lcrypt.training.presets import register_model_preset, vit_preset

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

PICO = "test-pico"
register_model_preset(PICO, vit_preset(hidden_size=16, layers=1, heads=2))


def flags(output_dir: Path, *extra: object, data: str = "default") -> list[str]:
    """One optimiser step of a one-layer ViT on 16 images a class, one evaluation and one checkpoint."""
    values = {
        "data": data,
        "model": PICO,
        "max_per_class": 16,
        "per_device_train_batch_size": 8,
        "max_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": 1,
        "save_strategy": "steps",
        "save_steps": 1,
        "augment": False,
        "attack_max_images": 8,
        "output_dir": output_dir,
    }
    return [f"--{name}={value}" for name, value in values.items()] + [str(part) for part in extra]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_finished_run_is_refused_unless_resumed_or_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(flags(out)) == 0
    weights = (out / "model" / "model.safetensors").read_bytes()
    key = Path(f"{out}.key").read_bytes()
    assert main(flags(out)) == 2
    line = one_line_error(capsys)
    assert (
        "holds a finished run" in line and "--resume_from_checkpoint last" in line and "--overwrite_output_dir" in line
    )
    assert (out / "model" / "model.safetensors").read_bytes() == weights and Path(f"{out}.key").read_bytes() == key

    # An interrupted run (checkpoints, no model folder) is not silently restarted either.
    (out / "model" / "config.json").rename(out / "model" / "config.json.bak")
    assert main(flags(out)) == 2
    assert "holds an unfinished run (last checkpoint checkpoint-1)" in one_line_error(capsys)
    (out / "model" / "config.json.bak").rename(out / "model" / "config.json")

    assert main(flags(out, "--resume_from_checkpoint", "last", "--max_steps", 2)) == 0  # continue it, as asked
    resumed = json.loads((out / "model" / "metrics.json").read_text())["training"]
    assert resumed["resumed_from"] == "checkpoint-1" and resumed["global_step"] == 2

    (out / "model" / "weights_only_attack.json").write_text("{}")  # e.g. left by an earlier run's option
    assert main(flags(out, "--overwrite_output_dir")) == 0  # or start again from scratch, with the same key
    assert not (out / "model" / "weights_only_attack.json").exists()  # nothing of the old model outlives it
    again = json.loads((out / "model" / "metrics.json").read_text())["training"]
    assert again["resumed_from"] is None and again["global_step"] == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # none of the old run's left
    assert Path(f"{out}.key").read_bytes() == key


@pytest.mark.parametrize(
    ("extra", "data", "message"),
    [
        ((), "no/such/folder", "No dataset at no/such/folder"),
        ((), "mydata/images", "No folder mydata/images here"),  # or a Hub id, which offline cannot be looked up
        (("--image_size", 30, "--block_size", 16), "default", "--block_size 16 does not divide --image_size 30"),
        (("--image_size", 6), "default", "--image_size 6 leaves fewer than 7 blocks"),
        (("--resume_from_checkpoint", "nowhere/checkpoint-9"), "default", "no checkpoint there"),
        (("--mode", "fold", "--model", "resnet-small"), "default", "--mode fold needs a ViT"),
        ((), "one-class", "an image folder needs one sub-folder per class, and at least two"),
        (("--teacher", "nowhere/model"), "default", "--teacher nowhere/model: no config.json there"),
    ],
)
def test_a_run_with_a_wrong_setting_writes_no_key_file(tmp_path, capsys, monkeypatch, extra, data, message):
    monkeypatch.chdir(tmp_path)
    for i in range(4):
        Path("one-class/benign").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(f"one-class/benign/{i}.png")
    assert main(flags(Path("out"), *extra, data=data)) == 2
    assert message in one_line_error(capsys)
    assert not Path("out.key").exists() and not Path("out").exists()


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("mode: encrypted\nlearning_rate: [1e-3,\nmax_steps: 2\n")
    assert main([str(config), "--output_dir", str(tmp_path / "out")]) == 2
    line = one_line_error(capsys)
    assert f"{config} is not valid YAML" in line and "at line" in line
    assert not (tmp_path / "out.key").exists()


@pytest.mark.parametrize(("signum", "status", "said"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143,
                         "stopped by SIGTERM")])  # fmt: skip
def test_ctrl_c_and_sigterm_stop_training_with_one_line(tmp_path, capsys, monkeypatch, signum, status, said):
    def stopped(self, *args, **kwargs):
        os.kill(os.getpid(), signum)  # what the terminal, `docker stop` or systemd send
        raise AssertionError("the signal did not stop the run")

    monkeypatch.setattr(Trainer, "train", stopped)
    assert main(flags(tmp_path / "out")) == status
    line = one_line_error(capsys)
    assert f"training {said}" in line and "no checkpoint was saved yet" in line
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_class_too_small_for_every_split_is_named_and_metrics_json_stays_json(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for name, count in (("benign", 16), ("rare", 1)):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(count):
            image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
            image.save(tmp_path / "images" / name / f"{i}.png")
    with caplog.at_level("WARNING"):
        assert main(flags(tmp_path / "out", data=str(tmp_path / "images"))) == 0
    assert "['rare'] have no image in the" in caplog.text  # one image: missing from validation or test, or both
    strict = {"parse_constant": lambda name: pytest.fail(f"not JSON: {name}")}
    metrics = json.loads((tmp_path / "out" / "model" / "metrics.json").read_text(), **strict)
    history = json.loads((tmp_path / "out" / "log_history.json").read_text(), **strict)
    aucs = [metrics["test"]["roc_auc"], *(entry["eval_roc_auc"] for entry in history if "eval_roc_auc" in entry)]
    assert None in aucs  # one class alone in a split: its AUROC is undefined, written as null
