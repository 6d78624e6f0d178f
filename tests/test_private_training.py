"""Training without the key (docs/private-training.md): the data owner encrypts a dataset, a trainer who holds no key
and no plain image trains on it, and the key holder uses the model.

The end-to-end test runs the three roles as three processes in three separate folders; the trainer's process has no
HF_LCRYPT_* variable and fails if it ever constructs or loads an LCryptKey."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, run_cli
from PIL import Image

from hf_lcrypt import BlockCipher, LCryptKey
from hf_lcrypt.cli.client import LocalClassifier
from hf_lcrypt.encrypted_datasets import build_encrypted_dataset, image_params
from hf_lcrypt.hub.publish import push_encrypted_dataset
from hf_lcrypt.image_datasets import load_image_dataset
from hf_lcrypt.plain_augment import Augment
from hf_lcrypt.training import main as train_main

TRAINER = """
import sys
from hf_lcrypt import keys

def refuse(*args, **kwargs):
    raise AssertionError("the trainer constructed or loaded an LCryptKey")

keys.LCryptKey.__init__ = refuse
for name in ("load", "generate", "from_hex", "from_passphrase", "coerce"):
    setattr(keys.LCryptKey, name, classmethod(refuse))
from hf_lcrypt.training import main
sys.exit(main(sys.argv[1:]))
"""
QUICK = ["--model", "micro", "--max_steps", "3", "--per_device_train_batch_size", "16", "--attack_max_images", "8"]


def _env(**extra):
    env = {name: value for name, value in os.environ.items() if not name.startswith("HF_LCRYPT_")}
    return env | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"} | extra


def _run(command, cwd, **env):
    done = subprocess.run(command, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    """An encrypted BreastMNIST with 2 augmented copies of each training image, built in-process."""
    folder = tmp_path_factory.mktemp("owner")
    key = LCryptKey.generate()
    key.save(folder / "owner.key")
    cipher = BlockCipher(key, 28, 4)
    dataset, info = build_encrypted_dataset("default", cipher, augment_copies=2, max_per_class=24)
    push_encrypted_dataset(dataset, "owner/breastmnist-encrypted", cipher, dry_run_dir=folder / "ds", dataset_info=info)
    return folder / "owner.key", folder / "ds", key.key_id


def test_encrypted_dataset_layout_card_and_chunks(owner):
    key_file, ds, key_id = owner
    description = json.loads((ds / "lcrypt.json").read_text())
    assert description["key_id"] == key_id and description["block_size"] == 4
    assert description["dataset"]["augment_copies"] == 2
    assert "2 views of every training image" in (ds / "README.md").read_text()
    secret = LCryptKey.load(key_file).to_hex()
    assert all(secret not in p.read_bytes().hex() + p.read_text(errors="ignore") for p in ds.rglob("*") if p.is_file())
    loaded = load_image_dataset(ds)
    plain = load_image_dataset("default", max_per_class=24)
    assert len(loaded["train"]) == 2 * len(plain["train"])
    assert {n: len(loaded[n]) for n in ("validation", "test")} == {n: len(plain[n]) for n in ("validation", "test")}
    for split in loaded.values():  # every image names the key in its own PNG chunk
        assert {p["key_id"] for p in image_params(split)} == {key_id}
    # validation and test are the plain splits encrypted once: decrypting gives the plain images back exactly
    cipher = BlockCipher(LCryptKey.load(key_file), 28, 4)
    for row, plain_row in zip(loaded["test"], plain["test"], strict=True):
        expected = np.asarray(plain_row["image"].convert("RGB"))
        assert np.array_equal(cipher.decrypt(np.asarray(row["image"])), expected)


def test_splits_are_made_before_augmentation(owner):
    """Training view c of image i decrypts exactly to training image i shifted and flipped by draw c: views are made
    from the training split after it was split off, so no view of a test image is in it."""
    key_file, ds, _ = owner
    cipher = BlockCipher(LCryptKey.load(key_file), 28, 4)
    views = load_image_dataset(ds)["train"]["image"]
    train = [im.convert("RGB").resize((28, 28), Image.Resampling.BILINEAR) for im in plain_split("train")]
    for copy in range(2):
        torch.manual_seed(copy)  # seed 0, copy c: the owner's draws
        for i, image in enumerate(train):
            expected = np.asarray(Augment()(image))
            assert np.array_equal(cipher.decrypt(np.asarray(views[copy * len(train) + i])), expected), (copy, i)


def plain_split(name):
    return load_image_dataset("default", max_per_class=24)[name]["image"]


def test_encrypting_ciphertexts_is_refused_unless_asked(owner, tmp_path, capsys, monkeypatch):
    key_file, ds, key_id = owner
    monkeypatch.chdir(tmp_path)
    common = ["--key-file", key_file, "--image-size", 28, "--block-size", 4]
    rc, _, err = run_cli(capsys, "encrypt-dataset", ds, tmp_path / "twice", *common)
    assert rc == 1 and f"already encrypted (key_id {key_id})" in err and "--allow-encrypted" in err
    assert not (tmp_path / "twice").exists()
    # images that carry the chunk, without lcrypt.json, are refused too
    bare = tmp_path / "bare"
    shutil.copytree(ds / "data", bare / "data")
    rc, _, err = run_cli(capsys, "encrypt-dataset", bare, tmp_path / "twice", *common)
    assert rc == 1 and "already encrypted" in err
    rc, out, _ = run_cli(capsys, "encrypt-dataset", bare, tmp_path / "twice", *common, "--allow-encrypted")
    assert rc == 0 and (tmp_path / "twice" / "lcrypt.json").is_file()


def _train_refusal(capsys, *argv):
    assert train_main([str(a) for a in argv]) == 2
    return capsys.readouterr().err


def test_trainer_refusals(owner, tmp_path, capsys, monkeypatch):
    key_file, ds, key_id = owner
    monkeypatch.delenv("HF_LCRYPT_KEY_FILE", raising=False)
    out = ["--output_dir", tmp_path / "run", *QUICK]
    for flags, expected in (
        (["--mode", "fold"], "--mode fold trains on plain images"),
        (["--mode", "plain"], "--mode plain trains on plain images"),
        (["--augment", "true"], "--augment needs shifts, flips"),
        (["--augment_orientation"], "--augment_orientation needs"),
        (["--image_size", "32"], "--image_size 32 differs from"),
        (["--block_size", "7"], "--block_size 7 differs from"),
        (["--attack_weights_only"], "--attack_weights_only scores"),
        (["--push_to_hub"], "--push_to_hub without the key"),
        (["--key_file", tmp_path / "absent.key"], "a key file is never created"),
    ):
        assert expected in _train_refusal(capsys, "--data", ds, *out, *flags), flags
    other = LCryptKey.generate()
    other.save(tmp_path / "other.key")
    err = _train_refusal(capsys, "--data", ds, *out, "--key_file", tmp_path / "other.key")
    assert other.key_id in err and key_id in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "run.key").exists()


def test_mixed_key_ids_are_refused(owner, tmp_path, capsys, monkeypatch):
    _, ds, key_id = owner
    other = BlockCipher(LCryptKey.generate(), 28, 4)
    dataset, _ = build_encrypted_dataset("default", other, max_per_class=8)
    push_encrypted_dataset(dataset, "x/y", other, dry_run_dir=tmp_path / "other")
    mixed = tmp_path / "mixed"
    shutil.copytree(ds, mixed)
    for old in (mixed / "data").glob("test-*"):
        old.unlink()
    for part in (tmp_path / "other" / "data").glob("test-*"):
        shutil.copy(part, mixed / "data" / part.name)
    err = _train_refusal(capsys, "--data", mixed, "--output_dir", tmp_path / "run", *QUICK)
    assert f"split 'test' (key_id {other.key_id})" in err and key_id in err


def test_three_roles_in_three_processes(tmp_path):
    owner_dir, trainer_dir, holder_dir = (tmp_path / name for name in ("owner", "trainer", "holder"))
    for folder in (owner_dir, trainer_dir, holder_dir):
        folder.mkdir()
    cli = [sys.executable, "-m", "hf_lcrypt.cli"]

    # the data owner: a key and the encrypted dataset with augmented copies
    _run([*cli, "keygen", "owner.key"], owner_dir)
    _run(
        [*cli, "encrypt-dataset", "default", "dataset", "--key-file", "owner.key", "--image-size", "28",
         "--block-size", "4", "--augment-copies", "2"],
        owner_dir,
    )  # fmt: skip
    key_id = json.loads((owner_dir / "dataset" / "lcrypt.json").read_text())["key_id"]
    handed_over = trainer_dir / "dataset"
    shutil.copytree(owner_dir / "dataset", handed_over)

    # the trainer: no key, no HF_LCRYPT_* variable, and a process that fails on any LCryptKey
    _run(
        [sys.executable, "-c", TRAINER, "--data", "dataset", "--output_dir", "run", *QUICK, "--contrast", "0.2",
         "--block_erasing", "0.5", "--pixel_noise", "0.02"],
        trainer_dir,
    )  # fmt: skip
    assert not [p for p in trainer_dir.rglob("*.key")], "the trainer wrote a key file"
    model_dir = trainer_dir / "run" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert config["key_id"] == key_id == metrics["key_id"] and metrics["trained_without_key"]
    report = json.loads((model_dir / "attack_report.json").read_text())
    assert "wrong_key" not in report["accuracy"] and "noise_0.1" in report["accuracy"]
    assert "hf-lcrypt attack" in report["for_the_key_holder"]["command"]

    # the key holder: the plain test images, classified with the key, score the trainer's test accuracy exactly
    plain_test = load_image_dataset("default")["test"]
    images = holder_dir / "test"
    images.mkdir()
    names = plain_test.features["label"].names
    for i, row in enumerate(plain_test):
        row["image"].save(images / f"{i:04d}.png")
    done = _run(
        [*cli, "classify", "--model", str(model_dir), "--key-file", str(owner_dir / "owner.key"), "--json", "test"],
        holder_dir,
    )
    predictions = json.loads(done.stdout)
    correct = sum(p["label"] == names[label] for p, label in zip(predictions, plain_test["label"], strict=True))
    assert len(predictions) == len(plain_test) == metrics["test"]["num_images"]
    assert correct / len(predictions) == metrics["test"]["accuracy"]


@pytest.mark.slow
def test_two_processes_train_without_the_key(owner, tmp_path):
    _, ds, key_id = owner
    command = [
        # `-m`: this interpreter (and this checkout) in every process, whatever the `accelerate` script's shebang says
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        str(REPO_ROOT / "scripts" / "train.py"), "--data", str(ds), "--output_dir", str(tmp_path / "run"),
        "--model", "micro", "--max_steps", "2", "--per_device_train_batch_size", "4", "--attack_max_images", "8",
        "--block_cutmix", "1.0",
    ]  # fmt: skip
    _run(command, tmp_path)
    assert not list(tmp_path.rglob("*.key"))
    ranks = [json.loads(p.read_text()) for p in (tmp_path / "run" / "ranks").glob("rank-*.json")]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    metrics = json.loads((tmp_path / "run" / "model" / "metrics.json").read_text())
    assert metrics["key_id"] == key_id and metrics["hardware"]["world_size"] == 2 and metrics["trained_without_key"]


def test_the_owner_key_file_trains_without_encrypting_twice(owner, tmp_path, monkeypatch):
    """With the dataset's own key file the run uses the ciphertexts as they are: the key holder's accuracy on the plain
    test images (encrypted once, by the classifier) equals the run's."""
    key_file, ds, key_id = owner
    monkeypatch.delenv("HF_LCRYPT_KEY_FILE", raising=False)
    run = tmp_path / "run"
    assert train_main([str(a) for a in ("--data", ds, "--output_dir", run, "--key_file", key_file, *QUICK)]) == 0
    metrics = json.loads((run / "model" / "metrics.json").read_text())
    assert metrics["key_id"] == key_id and not metrics["trained_without_key"]
    plain = load_image_dataset("default", max_per_class=24)["test"]
    predictions = LocalClassifier(run / "model", key_file).classify(list(plain["image"]))
    names = plain.features["label"].names
    correct = sum(p.label == names[label] for p, label in zip(predictions, plain["label"], strict=True))
    assert correct / len(plain) == metrics["test"]["accuracy"]


def test_a_hub_dataset_is_detected_by_its_lcrypt_json(owner, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    from hf_lcrypt.encrypted_datasets import read_encrypted_source

    _, ds, key_id = owner
    asked = []

    def download(repo_id, filename, repo_type=None):
        asked.append((repo_id, filename, repo_type))
        if repo_id == "hospital/plain":
            raise EntryNotFoundError("no lcrypt.json")
        return str(ds / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    source = read_encrypted_source("hospital/brain-encrypted")
    assert source.key_id == key_id and source.block_size == 4 and source.dataset_info["augment_copies"] == 2
    assert read_encrypted_source("hospital/plain") is None
    assert asked == [
        ("hospital/brain-encrypted", "lcrypt.json", "dataset"),
        ("hospital/plain", "lcrypt.json", "dataset"),
    ]
