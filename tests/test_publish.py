"""Hub publishing: the repository folder, the fresh-process check, the cards, the secret scan and the upload calls."""

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features
from datasets import Image as ImageFeature
from helpers import IMAGENET_MEAN, IMAGENET_STD, REPO_ROOT, tiny_vit
from huggingface_hub import DatasetCard, ModelCard, SpaceCard
from PIL import Image

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification, cli
from hf_lcrypt.attacks.record import AttackReport
from hf_lcrypt.encrypted_datasets import encrypt_dataset
from hf_lcrypt.hub import publish as publishing
from hf_lcrypt.hub.cards import build_model_card, build_space_card, sort_results
from hf_lcrypt.hub.checks import LeakyWeightsError, SecretLeakError, check_remote_load, find_secrets
from hf_lcrypt.hub.publish import PublicCheckpointWarning, publish_model, push_encrypted_dataset

# Shaped like what hf_lcrypt.training writes (metrics.json) and an AttackReport (attack_report.json).
METRICS = {
    "mode": "fold",
    "dataset": "someone/brain-mri",
    "base_model": "google/vit-base-patch16-224-in21k",
    "folded_from_public": False,
    "test": {"accuracy": 0.8125, "f1": 0.7, "roc_auc": 0.9, "f1_class_0": 0.5, "num_images": 16},
    "eval": {"accuracy": 0.75},
    "per_class_f1": {"class_0": 0.5},
    "fold_check": {"max_abs_logit_diff": 1e-6, "all_identical": True},
    "timings": {"train_seconds": 12.5},
    "attack_report": "attack_report.json",
}
ATTACK_REPORT = {
    "split": "test",
    "num_images": 16,
    "key_id": "0123456789abcdef",
    "wrong_key_id": "fedcba9876543210",
    "cipher": {"image_size": [32, 32], "block_size": 8},
    "accuracy": {"clean": 0.8125, "wrong_key": 0.25, "plain": 0.3125, "noise_0.05": 0.78, "bitflip_0.01": 0.5},
    "curves": {"noise": {"strength": [0.0, 0.05], "accuracy": [0.8125, 0.78]}},
    "history": [],
    "attacks": {"known-plaintext": {"pairs_needed": 2}},
}
EXPECTED_FILES = {
    "README.md",
    "attack_report.json",
    "attack_report.md",
    "cipher.py",
    "config.json",
    "configuration_lcrypt.py",
    "confusion_matrix.png",
    "folding.py",
    "image_processing_lcrypt.py",
    "keys.py",
    "metrics.json",
    "model.safetensors",
    "modeling_lcrypt.py",
    "png_metadata.py",
    "transformers_version.py",
    "preprocessor_config.json",
    "robustness_noise.png",
    "weights_only_attack.json",  # measured at publishing when the folder has none
}


def make_model_dir(folder: Path, key: LCryptKey, metrics: dict | None = None, patch_mlp: int | None = None) -> Path:
    """A folder shaped like the training pipeline's `<out>/model`, with files that must not be published."""
    keyed = LCryptViTForImageClassification.from_plain(
        tiny_vit(patch_mlp=patch_mlp), key, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    )
    keyed.save_pretrained(folder)
    LCryptImageProcessor.for_model(keyed).save_pretrained(folder)
    (folder / "metrics.json").write_text(json.dumps(METRICS if metrics is None else metrics))
    (folder / "attack_report.json").write_text(json.dumps(ATTACK_REPORT))
    (folder / "attack_report.md").write_text("# Attack report\n")
    Image.new("RGB", (8, 8)).save(folder / "confusion_matrix.png")
    Image.new("RGB", (8, 8)).save(folder / "robustness_noise.png")
    (folder / "training_args.bin").write_bytes(b"pickled")
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"state")
    key.save(folder / "model.key")  # a key file next to the model: must be left behind
    return folder


@pytest.fixture(scope="module")
def key() -> LCryptKey:
    return LCryptKey.generate()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, key) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("run") / "model", key)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, model_dir, key):
    """One real dry run (with the fresh-process check) shared by the tests that inspect its folder; also records how
    the child process was started."""
    out = tmp_path_factory.mktemp("dry") / "repo"
    children = []
    real_run = subprocess.run

    def spy(args, **kwargs):
        key_file = Path(kwargs["env"]["HF_LCRYPT_KEY_FILE"])
        children.append({"args": args, "env": kwargs["env"], "mode": key_file.stat().st_mode & 0o777})
        children[-1]["key_id"] = LCryptKey.load(key_file).key_id
        return real_run(args, **kwargs)

    with warnings.catch_warnings(record=True) as caught, pytest.MonkeyPatch.context() as patch:
        warnings.simplefilter("always")
        patch.setattr(subprocess, "run", spy)
        result = publish_model(model_dir, "someone/keyed-vit", key, dry_run_dir=out)
    return result, caught, children


@pytest.mark.slow  # a fresh Python process
def test_dry_run_writes_exactly_the_repository(dry_run, key):
    result, caught, _ = dry_run
    written = {p.relative_to(result.folder).as_posix() for p in result.folder.rglob("*") if p.is_file()}
    assert written == EXPECTED_FILES == set(result.files)
    assert set(result.skipped) == {"training_args.bin", "checkpoint-10/optimizer.pt", "model.key"}
    assert result.url is None
    assert not [w for w in caught if issubclass(w.category, PublicCheckpointWarning)]
    readme = (result.folder / "README.md").read_text()
    assert key.key_id in readme
    for needle in ("trust_remote_code=True", "HF_LCRYPT_KEY_FILE", "rekey", "docs/security.md", "known plaintext"):
        assert needle.lower() in readme.lower(), needle


@pytest.mark.slow  # a fresh Python process
def test_dry_run_folder_loads_in_fresh_process_that_gets_the_key_by_file(dry_run, key):
    result, _, children = dry_run
    assert result.max_logit_diff is not None and result.max_logit_diff <= 1e-4
    (child,) = children
    assert child["mode"] == 0o600 and child["key_id"] == key.key_id
    assert key.to_hex() not in " ".join(child["args"])
    assert not any(key.to_hex() in value for value in child["env"].values())
    assert child["env"]["HF_HUB_OFFLINE"] == "1" and child["env"]["PYTHONPATH"] == ""


@pytest.mark.slow  # a fresh Python process
def test_fresh_process_check_fails_without_remote_code(dry_run, key, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(dry_run[0].folder, broken)
    (broken / "cipher.py").unlink()  # the model code imports it: transformers alone can no longer load the folder
    with pytest.raises(RuntimeError, match="does not load with transformers alone"):
        check_remote_load(broken, key)


@pytest.mark.slow  # a fresh Python process
def test_card_names_the_patch_embedding(tmp_path, model_dir, key):
    def described(card: str) -> str:
        return next(line for line in card.splitlines() if line.startswith("| patch embedding |"))

    mlp_dir = make_model_dir(tmp_path / "mlp", key, patch_mlp=96)
    width = json.loads((mlp_dir / "config.json").read_text())["patch_embedding_mlp_size"]
    linear, mlp = (build_model_card(d, f"someone/{d.name}").text for d in (model_dir, mlp_dir))
    assert "MLP" not in linear and "MLP" in described(mlp) and str(width) in described(mlp)


def test_card_metadata_round_trips_with_model_index(dry_run):
    result, _, _ = dry_run
    card = ModelCard.load(result.folder / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-classification"
    assert {"hf-lcrypt", "privacy", "medical-imaging"} <= set(data.tags)
    assert data.license == "apache-2.0" and data.datasets == ["someone/brain-mri"]
    assert data.base_model == METRICS["base_model"]
    assert data.metrics == ["accuracy", "f1", "roc_auc"]  # those present, in the card's order
    assert data.hf_lcrypt["key_id"] == json.loads((result.folder / "config.json").read_text())["key_id"]
    values = {(r.metric_type, r.metric_name): r.metric_value for r in data.eval_results}
    assert values == {
        ("accuracy", "Accuracy"): 0.8125,  # the test split wins over eval
        ("f1", "F1 (macro)"): 0.7,
        ("roc_auc", "AUROC (macro, one-vs-rest)"): 0.9,
        ("accuracy", "Accuracy (clean)"): 0.8125,
        ("accuracy", "Accuracy (wrong key)"): 0.25,
        ("accuracy", "Accuracy (plain)"): 0.3125,
        ("accuracy", "Accuracy (noise 0.05)"): 0.78,
        ("accuracy", "Accuracy (bitflip 0.01)"): 0.5,
    }
    assert {(r.dataset_type, r.dataset_split) for r in data.eval_results} == {("someone/brain-mri", "test")}
    assert "pairs needed" in card.text  # other attack numbers are listed in the body


def test_sort_results_reads_flat_and_nested_metrics():
    nested = sort_results({"validation": {"accuracy": 0.5, "f1": 0.4}, "noise": {"accuracy": 0.3}})
    assert nested.split == "validation"
    assert [(m, v) for m, _, v in nested.main] == [("accuracy", 0.5), ("f1", 0.4)]
    assert nested.attack == [] and nested.other == []
    report = AttackReport(
        key_id="0123456789abcdef",
        cipher={"block_size": 16},
        split="test",
        num_images=8,
        accuracy={"msb_0.1": 0.6, "noise_0.2": 0.4, "noise_0.05": 0.7, "wrong_key": 0.1, "clean": 0.9},
        attacks={"metrics": {"psnr": 7.5}},
    )
    flat = sort_results({"accuracy": 0.9, "eval_accuracy": 0.8, "epoch": 3, "flag": True}, report)
    assert flat.split == "eval" and [(m, v) for m, _, v in flat.main] == [("accuracy", 0.8)]
    # references first, then each family by increasing strength
    assert flat.attack == [
        ("clean", 0.9),
        ("wrong_key", 0.1),
        ("msb_0.1", 0.6),
        ("noise_0.05", 0.7),
        ("noise_0.2", 0.4),
    ]
    assert flat.other == [("metrics_psnr", 7.5)]
    bare = sort_results({"accuracy": 0.9})
    assert bare.split is None and bare.main == [("accuracy", "Accuracy", 0.9)]


def test_attack_report_round_trips_and_refuses_other_json(tmp_path):
    report = AttackReport.read(AttackReport(**ATTACK_REPORT).write(tmp_path))
    assert report == AttackReport(**ATTACK_REPORT)
    (tmp_path / "attack_report.json").write_text(json.dumps({**ATTACK_REPORT, "psnr": 1.0}))
    with pytest.raises(ValueError, match="not an hf-lcrypt attack report"):
        AttackReport.read(tmp_path)


@pytest.mark.parametrize("encoding", ["hex", "HEX", "raw", "base64"])
def test_secret_scan_finds_every_encoding(tmp_path, key, encoding):
    import base64

    secret = {
        "hex": key.to_hex().encode(),
        "HEX": key.to_hex().upper().encode(),
        "raw": key.to_bytes(),
        "base64": base64.b64encode(key.to_bytes()),
    }[encoding]
    (tmp_path / "clean.txt").write_bytes(b"nothing here")
    # Across a chunk boundary: the scan reads 64-byte chunks here.
    (tmp_path / "weights.bin").write_bytes(b"x" * 50 + secret + b"y" * 100)
    hits = find_secrets(tmp_path, key, chunk_size=64)
    assert {path.name for path, _ in hits} == {"weights.bin"}
    assert {"hex": "hex", "HEX": "hex", "raw": "raw bytes", "base64": "base64"}[encoding] in {name for _, name in hits}


def test_publish_refuses_a_planted_secret_and_removes_the_copy(tmp_path, model_dir, key):
    planted = tmp_path / "model"
    shutil.copytree(model_dir, planted)
    metrics = json.loads((planted / "metrics.json").read_text())
    (planted / "metrics.json").write_text(json.dumps({**metrics, "note": f"key {key.to_hex()}"}))
    out = tmp_path / "out"
    with pytest.raises(SecretLeakError, match=r"metrics\.json \(hex\)"):
        publish_model(planted, "someone/keyed-vit", key, dry_run_dir=out)
    assert not out.exists()


def test_publish_refuses_the_wrong_key_and_a_used_folder(tmp_path, model_dir, key):
    with pytest.raises(ValueError, match="not the one"):
        publish_model(model_dir, "someone/keyed-vit", LCryptKey.generate(), dry_run_dir=tmp_path / "a")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("x")
    with pytest.raises(FileExistsError):
        publish_model(model_dir, "someone/keyed-vit", key, dry_run_dir=tmp_path / "used")


class FakeApi:
    """Records HfApi calls; checks the uploaded folder while it still exists."""

    calls: list[tuple[str, dict]] = []

    def create_repo(self, **kwargs):
        self.calls.append(("create_repo", kwargs))
        return f"https://hub.example/{kwargs['repo_id']}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        kwargs["files"] = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        kwargs["readme"] = (folder / "README.md").read_text()
        self.calls.append(("upload_folder", kwargs))


@pytest.fixture
def fake_hub(monkeypatch):
    FakeApi.calls = []
    monkeypatch.setattr(publishing, "HfApi", FakeApi)
    return FakeApi.calls


def test_cli_upload_calls_hub_and_warns_about_public_checkpoints(model_dir, key, fake_hub, monkeypatch, capsys):
    monkeypatch.setattr(publishing, "check_remote_load", lambda folder, key: 0.0)  # the dry-run tests run it
    key_file = model_dir / "model.key"
    argv = [str(model_dir), "--repo-id", "someone/keyed-vit", "--key-file", str(key_file), "--private"]
    with pytest.warns(PublicCheckpointWarning, match="recover the key"):
        assert cli.main(["publish", *argv, "--folded-from-public"]) == 0
    assert [name for name, _ in fake_hub] == ["create_repo", "upload_folder"]
    create, upload = fake_hub[0][1], fake_hub[1][1]
    assert create == {"repo_id": "someone/keyed-vit", "repo_type": "model", "private": True, "exist_ok": True}
    assert upload["repo_id"] == "someone/keyed-vit" and upload["repo_type"] == "model"
    assert set(upload["files"]) == EXPECTED_FILES
    assert key.key_id in upload["commit_message"]
    assert "Uploaded to https://hub.example/someone/keyed-vit" in capsys.readouterr().out


def test_public_checkpoint_flag_in_metrics_warns(tmp_path, key, fake_hub, monkeypatch):
    monkeypatch.setattr(publishing, "check_remote_load", lambda folder, key: 0.0)
    metrics = {**METRICS, "folded_from_public": True, "dataset": "default"}  # default: the shipped BreastMNIST
    folder = make_model_dir(tmp_path / "model", key, metrics=metrics)
    with pytest.warns(PublicCheckpointWarning):
        result = publish_model(folder, "someone/folded", key)
    assert result.url == "https://hub.example/someone/folded" and result.folder is None
    assert fake_hub[0][1]["private"] is False
    readme = ModelCard(fake_hub[1][1]["readme"])
    assert readme.data.hf_lcrypt["folded_from_public"] is True
    assert readme.data.datasets is None and readme.data.eval_results[0].dataset_name == "breastmnist"
    assert "folded from a public checkpoint" in readme.text


def test_cli_without_key_file_fails(model_dir, monkeypatch, capsys):
    monkeypatch.delenv("HF_LCRYPT_KEY_FILE", raising=False)
    with pytest.raises(SystemExit) as stop:
        cli.main(["publish", str(model_dir), "--repo-id", "someone/x", "--dry-run", "/nonexistent/out"])
    assert stop.value.code == 2 and "--key-file" in capsys.readouterr().err


@pytest.fixture(scope="module")
def encrypted():
    key = LCryptKey.generate()
    rng = np.random.default_rng(0)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["benign", "malignant"])})

    def split(n: int) -> Dataset:
        images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]
        return Dataset.from_dict({"image": images, "label": [i % 2 for i in range(n)]}, features=features)

    from hf_lcrypt import BlockCipher

    cipher = BlockCipher(key, 32, 8)
    return encrypt_dataset(DatasetDict({"train": split(6), "test": split(3)}), cipher), cipher


def test_encrypted_dataset_dry_run(tmp_path, encrypted):
    dataset, cipher = encrypted
    result = push_encrypted_dataset(
        dataset, "someone/encrypted-set", cipher, dry_run_dir=tmp_path / "ds", license="cc-by-4.0", source="breastmnist"
    )
    assert result.files == [
        "README.md",
        "data/test-00000-of-00001.parquet",
        "data/train-00000-of-00001.parquet",
        "lcrypt.json",
    ]
    card = DatasetCard.load(tmp_path / "ds" / "README.md")
    assert card.data.license == "cc-by-4.0" and card.data.task_categories == ["image-classification"]
    assert card.data.hf_lcrypt["key_id"] == cipher.key_id
    assert {c["split"] for c in card.data.configs[0]["data_files"]} == {"train", "test"}
    assert cipher.key_id in card.text and "`benign`" in card.text
    assert find_secrets(tmp_path / "ds", cipher.key) == []


def test_dataset_reload_check_detects_a_changed_pixel(tmp_path, encrypted):
    dataset, cipher = encrypted
    push_encrypted_dataset(dataset, "someone/encrypted-set", cipher, dry_run_dir=tmp_path / "ds")

    def change_one_value(example: dict, index: int) -> dict:
        if index == 1:
            pixels = np.array(example["image"])
            pixels[0, 0, 0] ^= 1
            example["image"] = Image.fromarray(pixels)
        return example

    changed = DatasetDict({**dataset, "test": dataset["test"].map(change_one_value, with_indices=True)})
    with pytest.raises(RuntimeError, match="Row 1 of split 'test', column 'image'"):
        publishing._check_dataset_reload(tmp_path / "ds", changed)


def test_encrypted_dataset_upload(encrypted, fake_hub):
    dataset, cipher = encrypted
    result = push_encrypted_dataset(dataset, "someone/encrypted-set", cipher, private=True)
    assert result.url == "https://hub.example/someone/encrypted-set"
    create, upload = fake_hub[0][1], fake_hub[1][1]
    assert create == {"repo_id": "someone/encrypted-set", "repo_type": "dataset", "private": True, "exist_ok": True}
    assert upload["repo_type"] == "dataset" and "lcrypt.json" in upload["files"]


def test_space_readme_is_the_rendered_template():
    """The committed card is the template's rendering; its sdk_version is any gradio that pyproject.toml allows
    (the template writes the installed one, which need not be the one the card was rendered with)."""
    import tomllib

    from packaging.requirements import Requirement

    readme = REPO_ROOT / "space" / "README.md"
    card = SpaceCard.load(readme)
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    gradio = next(Requirement(d) for d in dependencies if Requirement(d).name == "gradio")
    assert gradio.specifier.contains(card.data.sdk_version), (card.data.sdk_version, str(gradio))
    rendered = build_space_card()
    rendered.data.sdk_version = card.data.sdk_version  # content is rendered from the data on access
    assert readme.read_text() == rendered.content, (
        "space/README.md is out of date: regenerate it with "
        "python -c \"from hf_lcrypt.hub.cards import build_space_card; build_space_card().save('space/README.md')\""
    )


def save_keyed(keyed: LCryptViTForImageClassification, folder: Path) -> Path:
    keyed.save_pretrained(folder)
    LCryptImageProcessor.for_model(keyed).save_pretrained(folder)
    return folder


@pytest.mark.slow  # a fresh Python process
def test_publish_refuses_weights_that_give_the_key_away_unless_allowed_and_the_card_says_so(tmp_path, capsys):
    from test_weights_only import KEY as SMOOTH_KEY
    from test_weights_only import folded_model

    _, keyed = folded_model(smooth=True)  # a smooth plain model folded: its correlations show the flips
    folder = save_keyed(keyed, tmp_path / "leaky")
    with pytest.raises(LeakyWeightsError, match="give part of its key away.*flips_right 1.00.*--allow-leaky-weights"):
        publish_model(folder, "someone/leaky", SMOOTH_KEY, dry_run_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists() and not (folder / "weights_only_attack.json").exists()
    key_file = tmp_path / "smooth.key"
    SMOOTH_KEY.save(key_file)
    command = ["publish", str(folder), "--repo-id", "someone/leaky", "--key-file", str(key_file)]
    assert cli.main([*command, "--dry-run", str(tmp_path / "refused")]) == 1
    assert "--allow-leaky-weights" in capsys.readouterr().err
    assert cli.main([*command, "--dry-run", str(tmp_path / "allowed"), "--allow-leaky-weights"]) == 0
    assert "ABOVE CHANCE (flips_right, pixel_neighbours_kept), published as allowed" in capsys.readouterr().out
    card = ModelCard.load(tmp_path / "allowed" / "README.md")
    assert card.data.hf_lcrypt["weights_leak_allowed"] == ["flips_right", "pixel_neighbours_kept"]
    assert "These weights give part of the key away: flips_right, pixel_neighbours_kept" in card.text
    assert "published anyway, with `--allow-leaky-weights`" in card.text
    scores = json.loads((tmp_path / "allowed" / "weights_only_attack.json").read_text())
    assert scores["flips_right"] == 1.0 and scores["gate"]["published_despite_leak"]


def test_publish_measures_random_weights_at_chance_and_says_so(dry_run):
    result, _, _ = dry_run
    assert result.weights_only["gate"]["leaks"] == []
    assert result.weights_only["flips_right"] < result.weights_only["gate"]["thresholds"]["flips_right"]
    card = ModelCard.load(result.folder / "README.md")
    assert card.data.hf_lcrypt["weights_leak_allowed"] == []
    assert "The flips and the pixel layout stay at chance" in card.text
