"""The training pipeline, end to end on a tiny real subset of the embedded BreastMNIST, with a tiny ViT.

Two short runs (encrypted and fold mode, same seed and key) are shared by most tests; each takes a few seconds.
"""

import dataclasses
import json
import pickle
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import IMAGENET_MEAN, IMAGENET_STD, REPO_ROOT, tiny_vit
from PIL import Image, ImageOps
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

import hf_lcrypt
from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.cipher import ALL_STEPS
from hf_lcrypt.cli import build_parser as build_cli_parser
from hf_lcrypt.cli.train import run_train
from hf_lcrypt.hub import publish as publishing
from hf_lcrypt.image_datasets import label_maps, load_image_dataset
from hf_lcrypt.keys import KEY_ENV_VAR
from hf_lcrypt.plain_augment import Augment
from hf_lcrypt.splits import content_hashes, split_fingerprints
from hf_lcrypt.training import RunArguments, build_parser, load_or_create_key, parse_args, run, secret_init_seed
from hf_lcrypt.training import data as training_data
from hf_lcrypt.training.arguments import SAFE_EMBEDDING_INIT_SCALE
from hf_lcrypt.training.distillation import check_teacher_split
from hf_lcrypt.training.evaluation import compute_classification_metrics
from hf_lcrypt.training.models import build_setup, model_to_train
from hf_lcrypt.training.presets import PATCH_EMBEDDINGS, ModelPreset, register_model_preset, vit_preset
from hf_lcrypt.training.transforms import ImageTransform

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

NANO = "test-nano"
register_model_preset(NANO, vit_preset(hidden_size=32, layers=2, heads=2))
ATTACKS = ("clean", "wrong_key", "plain", "noise_0.05", "bitflip_0.01", "msb_0.1")


def settings(root: Path, name: str, **overrides) -> RunArguments:
    """Six steps of 8 images, evaluated and saved every 2 steps, no augmentation (so runs can be compared)."""
    values = {
        "data": "default",
        "model": NANO,
        "max_per_class": 16,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "max_steps": 6,
        "eval_strategy": "steps",
        "eval_steps": 2,
        "save_strategy": "steps",
        "save_steps": 2,
        "logging_steps": 1,
        "augment": False,
        "warmup_steps": 0,
        "attack_max_images": 32,  # the whole validation split
        "save_total_limit": None,
        "output_dir": str(root / name),
        "key_file": str(root / "keys" / "secret.key"),
        **overrides,
    }
    return RunArguments.from_dict(values)


# The key seeds the initialisation, so a fixed key makes the shared runs, and which checkpoint scores best, the same
# on every test run (with a fresh key the last checkpoint could score best, which a test below asserts it does not).
KEY = LCryptKey.from_hex("00" * 31 + "01")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("training")
    (root / "keys").mkdir()
    KEY.save(root / "keys" / "secret.key")
    return root


@pytest.fixture(scope="module")
def encrypted(root):
    return run(settings(root, "encrypted", mode="encrypted"))


@pytest.fixture(scope="module")
def folded(root, encrypted):  # after `encrypted`: the shared runs are compared step for step
    return run(settings(root, "fold", mode="fold"))


@pytest.fixture(scope="module")
def test_images() -> list[Image.Image]:
    return list(load_image_dataset("default", max_per_class=16)["test"]["image"])


def evaluations(log_history):
    return [entry for entry in log_history if "eval_loss" in entry]


def folder_logits(folder: Path, images, key: LCryptKey) -> torch.Tensor:
    """Logits of a saved model folder (or checkpoint) on `images` through its own saved processor, as a Hub user
    would run it; the processor encrypts unless it was saved with do_encrypt=False (plain fold-mode checkpoints)."""
    processor = AutoImageProcessor.from_pretrained(folder, key=key)
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(**processor(images, return_tensors="pt")).logits


def test_a_missing_key_file_is_created_owner_only_and_then_reused(tmp_path):
    path = tmp_path / "new" / "secret.key"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key == LCryptKey.load(path)


def test_the_secret_is_never_written_to_the_run_folder(root, encrypted):
    assert encrypted.metrics["key_id"] == KEY.key_id
    secret_hex, secret = KEY.to_hex().encode(), KEY.to_bytes()
    for path in (root / "encrypted").rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert secret_hex not in content.lower() and secret not in content, path


def test_attack_metrics_join_every_evaluation_without_replacing_it(encrypted, folded):
    for result in (encrypted, folded):
        evals = evaluations(result.log_history)
        assert [entry["step"] for entry in evals] == [2, 4, 6]
        for entry in evals:
            assert 0 <= entry["eval_accuracy"] <= 1
            for name in ATTACKS:
                assert 0 <= entry[f"eval_attack_{name}_accuracy"] <= 1, (entry["step"], name)
    # The attack suite's clean condition is the regular evaluation, done another way: same data, same model.
    for entry in evaluations(encrypted.log_history):
        assert entry["eval_attack_clean_accuracy"] == pytest.approx(entry["eval_accuracy"])


def test_output_folder_is_hub_ready(root, encrypted, test_images):
    model_dir = root / "encrypted" / "model"
    for name in (
        "config.json",
        "model.safetensors",
        "modeling_lcrypt.py",
        "preprocessor_config.json",
        "image_processing_lcrypt.py",
        "metrics.json",
        "confusion_matrix.png",
        "attack_report.json",
        "attack_report.md",
        "robustness_noise.png",
        "robustness_bitflip.png",
        "robustness_msb.png",
    ):
        assert (model_dir / name).is_file(), name
    assert not list(model_dir.glob("*.bin")) and not list(model_dir.glob("*.pt*"))  # no pickles
    processor_config = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert processor_config["key_id"] == KEY.key_id and KEY.to_hex() not in json.dumps(processor_config)

    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(encrypted.metrics, default=str))
    assert metrics["mode"] == "encrypted" and metrics["key_id"] == KEY.key_id
    assert set(metrics["per_class_f1"]) == {"malignant", "normal_or_benign"}
    assert metrics["data"]["duplicates"]["source"] == "given splits"
    assert metrics["timings"]["train_seconds"] > 0 and metrics["hardware"]["world_size"] == 1
    report = json.loads((model_dir / "attack_report.json").read_text())
    assert report["split"] == "test" and set(ATTACKS) <= set(report["accuracy"])

    # The folder holds the best checkpoint's weights (here not the last one's), reloaded after training.
    best = root / "encrypted" / metrics["best_validation"]["checkpoint"]
    assert best.name != "checkpoint-6"
    final, reference = (AutoModelForImageClassification.from_pretrained(p).state_dict() for p in (model_dir, best))
    assert final.keys() == reference.keys() and all(torch.equal(final[k], reference[k]) for k in final)

    # Loaded back from the folder alone, the model reproduces the reported test accuracy.
    labels = torch.as_tensor(list(load_image_dataset("default", max_per_class=16)["test"]["label"]))
    accuracy = (folder_logits(model_dir, test_images, KEY).argmax(-1) == labels).float().mean().item()
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])


def test_fold_mode_keyed_model_predicts_as_the_plain_model(root, folded, test_images):
    check = folded.metrics["fold_check"]
    assert check["all_identical"] and check["max_abs_logit_diff"] < 1e-4
    # Independently of the run's own check: the best plain checkpoint on plain images vs the published keyed model.
    best = root / "fold" / folded.metrics["best_validation"]["checkpoint"]
    plain = ViTForImageClassification.from_pretrained(best).eval()
    plain_processor = LCryptImageProcessor.from_pretrained(best)
    assert plain_processor.do_encrypt is False
    with torch.no_grad():
        expected = plain(**plain_processor(test_images, return_tensors="pt")).logits
    got = folder_logits(root / "fold" / "model", test_images, KEY)
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)
    assert json.loads((root / "fold" / "model" / "config.json").read_text())["model_type"] == "lcrypt-vit"


def test_encrypted_training_tracks_plain_training_step_for_step(root, encrypted, folded, test_images):
    """Same seed, data order and initialisation (folded): with mean = std = 0.5 the key is a signed permutation of
    the patch-embedding inputs and of the position embeddings, and AdamW is equivariant to that (docs/training.md)."""
    losses = {
        mode: [e["loss"] for e in result.log_history if "loss" in e]
        for mode, result in (("encrypted", encrypted), ("fold", folded))
    }
    assert len(losses["encrypted"]) == 6
    np.testing.assert_allclose(losses["encrypted"], losses["fold"], atol=1e-5)
    # After the last step: the encrypted run's keyed model vs the fold run's plain model with the key folded in.
    keyed = LCryptViTForImageClassification.from_plain(root / "fold" / "checkpoint-6", KEY)
    processor = LCryptImageProcessor.for_model(keyed, key=KEY)
    with torch.no_grad():
        folded_logits = keyed.eval()(**processor(test_images, return_tensors="pt")).logits
    trained_logits = folder_logits(root / "encrypted" / "checkpoint-6", test_images, KEY)
    assert torch.allclose(trained_logits, folded_logits, atol=1e-4, rtol=0)
    assert (trained_logits - folder_logits(root / "encrypted" / "checkpoint-2", test_images, KEY)).abs().max() > 1e-2


def test_resume_continues_from_the_last_checkpoint(root, encrypted, test_images):
    """Interrupt the encrypted run after step 4 (drop what came later), resume: step 6 is the full run's step 6."""
    interrupted = root / "resumed"
    shutil.copytree(root / "encrypted", interrupted, ignore=shutil.ignore_patterns("checkpoint-6", "model"))
    result = run(settings(root, "resumed", mode="encrypted", resume_from_checkpoint="last"))
    assert Path(result.metrics["training"]["resumed_from"]).name == "checkpoint-4"
    assert result.metrics["training"]["global_step"] == 6
    assert [entry["step"] for entry in evaluations(result.log_history)] == [2, 4, 6]
    expected = folder_logits(root / "encrypted" / "checkpoint-6", test_images, KEY)
    assert torch.allclose(folder_logits(interrupted / "checkpoint-6", test_images, KEY), expected, atol=1e-5, rtol=0)
    assert (
        json.loads((interrupted / "model" / "metrics.json").read_text())["training"]["resumed_from"] == "checkpoint-4"
    )


def test_weight_average_is_checkpointed_resumed_and_becomes_the_final_model(root, encrypted, test_images):
    """An EMA run: training is the same run's without the average, bit for bit (so its best checkpoint scores as
    that run's); each checkpoint holds the average; a resumed run reaches the full run's average; the final model is
    the average at the last step, and the saved folder predicts as scored."""
    folder = root / "ema" / "run"
    full = run(settings(root, "ema/run", mode="encrypted", ema_decay=0.5))
    trained, without = (load_file(f / "checkpoint-6" / "model.safetensors") for f in (folder, root / "encrypted"))
    assert trained.keys() == without.keys() and all(torch.equal(trained[n], v) for n, v in without.items())
    report = full.metrics["weight_average"]
    assert report["decay"] == 0.5 and report["metric"] == "accuracy"
    scores = report["scores"]
    saved = folder_logits(folder / "model", test_images, KEY)
    labels = load_image_dataset("default", max_per_class=16)["test"]["label"]
    accuracy = float((saved.argmax(-1) == torch.as_tensor(labels)).float().mean())
    assert accuracy == pytest.approx(scores["weight_average"]["test"]) == full.metrics["test"]["accuracy"]

    average_file = "weight_average.safetensors"
    assert all((folder / f"checkpoint-{step}" / average_file).is_file() for step in (2, 4, 6))
    final = AutoModelForImageClassification.from_pretrained(folder / "model").state_dict()
    last_average = load_file(folder / "checkpoint-6" / average_file)
    assert all(torch.equal(final[name], value) for name, value in last_average.items())
    best = load_file(folder / full.metrics["best_validation"]["checkpoint"] / "model.safetensors")  # own names
    assert best.keys() == last_average.keys()
    assert not all(torch.equal(final[name], value) for name, value in best.items())
    interrupted = root / "ema-resumed"
    shutil.copytree(folder, interrupted, ignore=shutil.ignore_patterns("checkpoint-6", "model"))
    run(settings(root, "ema-resumed", mode="encrypted", ema_decay=0.5, resume_from_checkpoint="last"))
    expected = load_file(folder / "checkpoint-6" / average_file)
    resumed = load_file(interrupted / "checkpoint-6" / average_file)
    assert resumed.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        settings(root, "bad", ema_decay=1.5)
    with pytest.raises(ValueError, match="--metric_for_best_model, which must then be a classification score"):
        run(settings(root, "bad", ema_decay=0.5, metric_for_best_model="loss"))
    assert not (root / "bad").exists()


@pytest.mark.parametrize("patch_mlp", [None, 64])
def test_from_plain_checkpoint_is_folded_with_its_own_normalisation(tmp_path, test_images, patch_mlp):
    """--from-plain with no training only folds: the keyed model reproduces the checkpoint, ImageNet statistics and
    all; the published folder carries them as its normalisation. An MLP patch embedding's plain checkpoint (the
    keyed class, not bound to a key) is taken the same way."""
    plain = tiny_vit(image_size=28, patch_size=4, labels=2, patch_mlp=patch_mlp)
    plain.save_pretrained(tmp_path / "plain")
    processor = ViTImageProcessorPil(size={"height": 28, "width": 28}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    processor.save_pretrained(tmp_path / "plain")
    result = run(settings(tmp_path, "folded", from_plain=str(tmp_path / "plain"), num_train_epochs=0, max_steps=-1))
    assert result.metrics["training"]["global_step"] == 0 and result.metrics["base_model"] == str(tmp_path / "plain")
    with torch.no_grad():
        expected = plain(**processor([im.convert("RGB") for im in test_images], return_tensors="pt")).logits
    key = LCryptKey.load(tmp_path / "keys" / "secret.key")
    assert torch.allclose(folder_logits(tmp_path / "folded" / "model", test_images, key), expected, atol=1e-4, rtol=0)
    saved = json.loads((tmp_path / "folded" / "model" / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == pytest.approx(IMAGENET_MEAN) and saved["block_size"] == 4
    with pytest.raises(ValueError, match="--block_size 7 differs"):
        run(settings(tmp_path, "clash", from_plain=str(tmp_path / "plain"), block_size=7))
    with pytest.raises(ValueError, match="already keyed"):
        run(settings(tmp_path, "keyed", from_plain=str(tmp_path / "folded" / "model")))


def test_a_folder_without_splits_is_split_by_content_and_its_duplicates_reported(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("benign", "malignant"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (20, 24), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    for copy in ("copy1.png", "copy2.png"):  # two byte-identical copies of one image
        shutil.copy(tmp_path / "images" / "benign" / "0.png", tmp_path / "images" / "benign" / copy)
    result = run(settings(tmp_path, "folder", data=str(tmp_path / "images"), max_per_class=None, max_steps=1))
    duplicates = result.metrics["data"]["duplicates"]
    assert duplicates["source"] == "split_by_content"
    assert (duplicates["duplicate_groups"], duplicates["duplicate_files"]) == (1, 2)
    assert sum(result.metrics["data"]["splits"].values()) == 26
    assert result.metrics["data"]["classes"] == ["benign", "malignant"]


def test_resume_refuses_a_checkpoint_folded_with_another_key(root, encrypted, tmp_path):
    other = tmp_path / "other.key"
    with pytest.raises(ValueError, match="is folded with"):
        run(settings(root, "encrypted", mode="encrypted", resume_from_checkpoint="last", key_file=str(other)))
    with pytest.raises(ValueError, match="no checkpoint"):
        run(settings(tmp_path, "empty", resume_from_checkpoint="last"))


def test_a_config_file_then_flags(tmp_path):
    """The HF convention (`train.py config.yaml`, read as `HfArgumentParser.parse_yaml_file` reads it), with flags
    overriding the file, both spellings of every flag, and JSON files alike."""
    path = tmp_path / "run.yaml"
    path.write_text("mode: fold\nnum_train_epochs: 3\nper_device_train_batch_size: 4\ncipher_steps: [block_scramble]\n")
    from_file = parse_args([str(path)])
    hf_way = build_parser().parse_yaml_file(path)
    assert (from_file.cipher.mode, from_file.training.num_train_epochs) == (hf_way[2].mode, hf_way[5].num_train_epochs)
    path.write_text(path.read_text().replace("per_device_train_batch_size", "per-device-train-batch-size"))
    args = parse_args([str(path), "--num_train_epochs", "5", "--no-augment", "--learning-rate", "1e-3"])
    assert (args.cipher.mode, args.training.num_train_epochs, args.training.per_device_train_batch_size) == (
        "fold",
        5.0,
        4,
    )
    assert args.data.augment is False and args.training.learning_rate == 1e-3
    assert args.cipher.cipher_steps == ["block_scramble"]
    assert parse_args(["--config", str(path)]).cipher.mode == "fold"
    json_path = tmp_path / "run.json"
    json_path.write_text(json.dumps({"mode": "plain", "learning_rate": "2e-4", "resume_from_checkpoint": "last"}))
    args = parse_args([str(json_path), "--output-dir", "out/run"])
    assert (args.cipher.mode, args.cipher.cipher_steps, args.training.learning_rate) == ("plain", [], 2e-4)
    assert args.training.resume_from_checkpoint == "last" and args.key_path == Path("out/run.key")
    assert parse_args(["--output_dir", "out/run"]).training.output_dir == "out/run"

    path.write_text("epocs: 3\n")
    with pytest.raises(ValueError, match="epocs"):
        parse_args([str(path)])
    path.write_text("epochs: 3\n")  # only the transformers spelling, num_train_epochs
    with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['epochs'\]"):
        parse_args([str(path)])
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['--batch-size', '4'\]"):
        parse_args(["--batch-size", "4"])
    with pytest.raises(ValueError, match="--mode must be one of"):
        RunArguments.from_dict({"mode": "plaintext"})


def documented_defaults() -> dict[str, str]:
    """docs/training.md's table of the `TrainingArguments` defaults hf-lcrypt changes: {flag: value as documented}."""
    text = (REPO_ROOT / "docs" / "training.md").read_text()
    rows = text[text.index("| flag | hf-lcrypt | transformers |") :].split("\n\n")[0].splitlines()[2:]
    documented = {}
    for row in rows:
        flags, ours, _ = (cell.strip() for cell in row.strip("|").split("|"))
        values = re.sub(r"\s*\([^)]*\)", "", ours).replace("`", "").split(", ")  # without the explanations
        documented.update(zip(re.findall(r"--(\w+)", flags), values, strict=True))
    return documented


def as_documented(value) -> str:
    """A parsed training argument as the docs write it."""
    value = getattr(value, "value", value)  # enums
    if isinstance(value, bool):
        return str(value).lower()
    if value == []:
        return "none"  # report_to: no tracker
    return f"{value:g}" if isinstance(value, float) else str(value)


def same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)  # 5e-4 and 0.0005
    except ValueError:
        return False


def test_our_defaults_are_the_documented_ones_and_every_training_argument_is_the_users(tmp_path):
    defaults, documented = parse_args([]).training, documented_defaults()
    assert len(documented) >= 15
    pin_memory = documented.pop("dataloader_pin_memory")
    assert pin_memory == "only with CUDA" and defaults.dataloader_pin_memory == torch.cuda.is_available()
    for flag, value in documented.items():
        parsed = as_documented(getattr(defaults, flag))
        assert parsed == value or same_number(parsed, value), (flag, parsed, value)
    chosen = parse_args(
        ["--lr_scheduler_type", "constant", "--eval_strategy", "no", "--save_strategy", "no"]
        + ["--load_best_model_at_end", "false", "--report_to", "tensorboard", "--gradient_accumulation_steps", "3"]
        + ["--torch_compile", "--dataloader_num_workers", "2", "--max_grad_norm", "0.5", "--optim", "adafactor"]
    ).training
    assert (chosen.lr_scheduler_type.value, chosen.eval_strategy.value, chosen.load_best_model_at_end) == (
        "constant",
        "no",
        False,
    )
    assert chosen.report_to == ["tensorboard"] and chosen.gradient_accumulation_steps == 3 and chosen.torch_compile
    assert (chosen.dataloader_num_workers, chosen.max_grad_norm, chosen.optim.value) == (2, 0.5, "adafactor")
    with pytest.raises(ValueError, match="remove_unused_columns must stay False"):
        parse_args(["--remove_unused_columns", "true"])
    with pytest.raises(ValueError, match="--bf16_full_eval casts the model's own weights .* use --bf16"):
        parse_args(["--bf16_full_eval", "--use_cpu"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_bf16_without_a_gpu_is_refused_clearly_or_runs_on_the_cpu_when_asked(tmp_path):
    with pytest.raises(ValueError, match="--bf16 needs a GPU with bfloat16 support.*--use_cpu"):
        parse_args(["--bf16"])
    (tmp_path / "keys").mkdir()
    KEY.save(tmp_path / "keys" / "secret.key")
    result = run(settings(tmp_path, "bf16", bf16=True, use_cpu=True, max_steps=2, attack_max_images=8))
    assert result.metrics["hardware"]["mixed_precision"] == "bf16" and result.metrics["training"]["global_step"] == 2
    assert all(np.isfinite(loss) for loss in train_losses(result))


def test_cli_train_subcommand_passes_everything_to_the_training_parser(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("num_train_epochs: 3\nlearning_rate: 1e-3\n")  # YAML reads 1e-3 as a string; parsing casts it
    args = build_cli_parser().parse_args(["train", str(path), "--mode", "fold", "--output-dir", "x"])
    assert args.handler is run_train and args.train_args == [str(path), "--mode", "fold", "--output-dir", "x"]
    parsed = parse_args(args.train_args)
    assert (parsed.cipher.mode, parsed.training.num_train_epochs, parsed.training.learning_rate) == ("fold", 3.0, 1e-3)
    help_text = subprocess.run(
        [sys.executable, "-m", "hf_lcrypt", "train", "--help"], capture_output=True, text=True, timeout=300
    )
    assert help_text.returncode == 0
    for flag in ("--gradient_accumulation_steps", "--push_to_hub", "--mode", "--teacher", "--attack_max_images"):
        assert flag in help_text.stdout


def test_augment_shifts_and_flips_plain_images_to_rgb():
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28) % 251
    augment = Augment(max_shift=0.08)
    torch.manual_seed(0)
    outputs = [np.asarray(augment(Image.fromarray(pixels))) for _ in range(16)]
    assert all(o.shape == (28, 28, 3) and o.dtype == np.uint8 for o in outputs)
    assert len({o.tobytes() for o in outputs}) > 8
    # Every output is the input moved by at most 2 pixels (0.08 * 28), perhaps mirrored: its centre is in there.
    reference = {np.asarray(Image.fromarray(p).convert("RGB"))[2:-2, 2:-2].tobytes() for p in (pixels, pixels[:, ::-1])}
    for out in outputs:
        windows = {out[dy : dy + 24, dx : dx + 24].tobytes() for dy in range(5) for dx in range(5)}
        assert windows & reference
    torch.manual_seed(0)
    assert np.array_equal(np.asarray(augment(Image.fromarray(pixels))), outputs[0])


def test_augment_orientation_draws_each_of_the_eight_symmetries_of_the_square():
    pixels = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    symmetries = {np.rot90(p, k).tobytes() for p in (pixels, pixels[:, ::-1]) for k in range(4)}
    assert len(symmetries) == 8
    augment = Augment(max_shift=0.0, rotate90=True)
    torch.manual_seed(0)
    drawn = {np.asarray(augment(Image.fromarray(pixels)))[..., 0].tobytes() for _ in range(200)}
    assert drawn == symmetries
    assert parse_args(["--augment_orientation"]).data.augment_orientation
    assert not parse_args([]).data.augment_orientation


def test_augment_orientations_are_the_symmetries_it_draws():
    square = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    for augment, expected in (
        (Augment(flip=False), {square.tobytes()}),
        (Augment(), {square.tobytes(), square[:, ::-1].tobytes()}),
        (Augment(rotate90=True), {np.rot90(p, k).tobytes() for p in (square, square[:, ::-1]) for k in range(4)}),
    ):
        views = [np.asarray(view(Image.fromarray(square)))[..., 0].tobytes() for view in augment.orientations()]
        assert len(views) == len(expected) and set(views) == expected
        assert views[0] == square.tobytes()  # the identity first: its logits are the single-view test logits


def test_tta_averages_the_probabilities_of_the_mirrored_and_encrypted_views(tmp_path, test_images):
    """The key holder mirrors each plain test image, encrypts both views and averages the model's probabilities;
    recomputed here through the saved folder and its processor, as a Hub user would. The fixed key, since it seeds the
    initialisation: after two steps, some keys' models rank the test images alike in both views (so do this key's
    with the key-hiding initialisation scale, hence the preset's own here)."""
    (tmp_path / "keys").mkdir()
    KEY.save(tmp_path / "keys" / "secret.key")
    options = dict(mode="encrypted", augment=True, tta=True, max_steps=2, embedding_init_scale=1.0)
    result = run(settings(tmp_path, "tta", **options))
    tta = result.metrics["test_tta"]
    assert tta["views"] == 2
    views = (test_images, [ImageOps.mirror(image) for image in test_images])
    probabilities = torch.stack([folder_logits(tmp_path / "tta" / "model", v, KEY).softmax(-1) for v in views])
    test_split = load_image_dataset("default", max_per_class=16)["test"]
    labels, names = np.array(test_split["label"]), label_maps(test_split)[0]
    expected = compute_classification_metrics(probabilities.mean(0).log().numpy(), labels, names)
    single = compute_classification_metrics(probabilities[0].log().numpy(), labels, names)
    assert tta["accuracy"] == pytest.approx(expected["accuracy"])
    assert tta["roc_auc"] == pytest.approx(expected["roc_auc"])  # AUROC sees the averaged probabilities themselves
    assert result.metrics["test"]["roc_auc"] == pytest.approx(single["roc_auc"])  # and `test` the single view's,
    assert single["roc_auc"] != pytest.approx(expected["roc_auc"])  # which differ here
    assert result.metrics["test"]["num_images"] == len(labels)
    with pytest.raises(ValueError, match="--tta .* needs --augment"):
        settings(tmp_path, "no-augment", tta=True)


def test_the_test_split_is_scored_by_trainer_predict(root, test_images, monkeypatch):
    """metrics.json's test scores are `Trainer.predict`'s (the run's collator, batch size, precision and
    `compute_metrics`, sharded under `accelerate launch`): here in fold mode, where the folded keyed model takes the
    Trainer's place, with test-time augmentation and a weight average, each a split passed through `predict`."""
    predictions = []
    trainer_predict = Trainer.predict

    def recording(trainer, dataset, *args, **kwargs):
        output = trainer_predict(trainer, dataset, *args, **kwargs)
        predictions.append((trainer.model, output))
        return output

    monkeypatch.setattr(Trainer, "predict", recording)
    options = dict(mode="fold", augment=True, tta=True, ema_decay=0.5, max_steps=2)
    metrics = run(settings(root, "predicted", **options)).metrics
    keyed = [output for model, output in predictions if isinstance(model, LCryptViTForImageClassification)]
    assert len(keyed) == 2  # the identity view and its mirror image
    scored = {name.removeprefix("test_"): keyed[0].metrics[f"test_{name}"] for name in ("accuracy", "f1", "roc_auc")}
    assert {name: metrics["test"][name] for name in scored} == scored
    assert metrics["test"]["loss"] == keyed[0].metrics["test_loss"]
    # What the Trainer predicted is what the saved folder predicts for the key holder, on each view.
    model_dir = root / "predicted" / "model"
    mirrored = [ImageOps.mirror(image) for image in test_images]
    for output, views in zip(keyed, (test_images, mirrored), strict=True):
        expected = folder_logits(model_dir, views, KEY)
        assert torch.allclose(torch.from_numpy(output.predictions), expected, atol=1e-5, rtol=0)
    assert metrics["fold_check"]["all_identical"] and metrics["test_tta"]["views"] == 2
    assert set(metrics["weight_average"]["scores"]["weight_average"]) == {"validation", "test"}


def test_image_transform_pickles_without_the_secret(tmp_path, monkeypatch):
    key = LCryptKey.generate()
    processor = LCryptImageProcessor(image_size=32, block_size=4, image_mean=[0.5] * 3, image_std=[0.5] * 3, key=key)
    transform = ImageTransform(processor)
    data = pickle.dumps(transform)
    assert key.to_bytes() not in data and key.to_hex().encode() not in data
    batch = {"image": [Image.new("L", (28, 28), 90), Image.new("RGB", (30, 20), (1, 2, 3))], "label": [0, 1]}
    key.save(tmp_path / "k.key")
    monkeypatch.setenv(KEY_ENV_VAR, str(tmp_path / "k.key"))  # how a spawned DataLoader worker finds the key
    restored = pickle.loads(data)(batch)
    assert torch.equal(restored["pixel_values"], transform(batch)["pixel_values"])
    assert restored["labels"].tolist() == [0, 1]


def test_fold_mode_needs_a_foldable_model(tmp_path):
    register_model_preset("test-unfoldable", ModelPreset(vit_preset(32, 1, 2).build, foldable=False))
    with pytest.raises(ValueError, match="--mode fold needs a ViT"):
        run(settings(tmp_path, "unfoldable", mode="fold", model="test-unfoldable"))


def test_mlp_patch_embedding_is_for_vit_presets_only(tmp_path):
    with pytest.raises(ValueError, match="--patch_embedding mlp applies to the ViT presets"):
        settings(tmp_path, "cnn-mlp", model="resnet-small", patch_embedding="mlp")
    with pytest.raises(ValueError, match="--patch_embedding mlp applies to the ViT presets"):
        settings(tmp_path, "hub-mlp", from_plain="google/vit-base-patch16-224-in21k", patch_embedding="mlp")
    with pytest.raises(ValueError, match="--patch_embedding must be one of"):
        settings(tmp_path, "conv", patch_embedding="conv")
    assert parse_args(["--patch-embedding", "mlp"]).model.patch_embedding == "mlp"
    linear_only = vit_preset(32, 1, 2).build
    register_model_preset(
        "test-linear-only", ModelPreset(lambda spec: linear_only(dataclasses.replace(spec, patch_embedding="linear")))
    )
    with pytest.raises(ValueError, match="ignores --patch_embedding mlp"):
        run(settings(tmp_path, "ignored", model="test-linear-only", patch_embedding="mlp"))


def test_initialisation_seed_is_secret_but_reproducible():
    key = LCryptKey.generate()
    assert secret_init_seed(key, 0) == secret_init_seed(LCryptKey(key.to_bytes()), 0)
    assert secret_init_seed(key, 0) != secret_init_seed(key, 1)
    assert secret_init_seed(key, 0) != secret_init_seed(LCryptKey.generate(), 0)


def train_losses(result) -> list[float]:
    return [entry["loss"] for entry in result.log_history if "loss" in entry]


def test_a_rerun_with_the_same_key_file_is_bit_identical_and_a_new_key_is_a_new_initialisation(root):
    """docs/results.md: a row reproduces only with its key file, even in plain mode (the key seeds the init)."""
    augmented = dict(mode="plain", augment=True, augment_orientation=True, max_steps=3, attack_max_images=8)
    first, again = (run(settings(root, f"rerun-{name}", **augmented)) for name in ("first", "again"))
    other = run(settings(root, "rerun-other-key", key_file=str(root / "keys" / "other.key"), **augmented))
    assert train_losses(first) == train_losses(again)
    assert train_losses(first) != train_losses(other)


def test_distilled_encrypted_training_still_tracks_plain_training(root, encrypted, folded):
    """With a teacher (here the fold run's keyed model, which encrypts its own view) and mixup, the encrypted run
    and the plain (fold) run see the same teacher outputs and the same mixes, so they still agree step for step; and
    the teacher changes the training, so it really is used."""
    teacher = {"teacher": str(root / "fold" / "model"), "distillation": "soft", "distill_alpha": 0.7, "mixup": 0.4}
    distilled = {mode: run(settings(root, f"distilled-{mode}", mode=mode, **teacher)) for mode in ("encrypted", "fold")}
    np.testing.assert_allclose(train_losses(distilled["encrypted"]), train_losses(distilled["fold"]), atol=1e-5)
    assert distilled["fold"].metrics["fold_check"]["all_identical"]
    assert abs(train_losses(distilled["encrypted"])[0] - train_losses(encrypted)[0]) > 1e-3
    assert distilled["encrypted"].metrics["config"]["teacher"] == teacher["teacher"]


def test_a_teacher_of_other_classes_is_refused(root, folded, tmp_path):
    data = tmp_path / "three-classes"
    for name in ("a", "b", "c"):
        (data / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (16, 16), (i * 60, len(name) * 40, ord(name))).save(data / name / f"{i}.png")
    with pytest.raises(ValueError, match="predicts classes"):
        run(settings(tmp_path, "wrong-teacher", data=str(data), teacher=str(root / "fold" / "model")))


def fingerprints_of(data: str, max_per_class: int = 16, split_seed: int = 0) -> dict[str, str]:
    dataset = load_image_dataset(data, max_per_class=max_per_class, seed=split_seed)
    return split_fingerprints({name: content_hashes(split) for name, split in dataset.items()})


def test_a_teacher_trained_on_another_split_is_refused(root, folded, tmp_path):
    """A teacher of another split may have trained on this run's test images and would leak them to the student.
    What counts is which images its validation and test splits held, not the path or the settings that chose them."""
    teacher = {"teacher": str(root / "fold" / "model"), "key_file": str(root / "keys" / "secret.key")}
    assert folded.metrics["data"]["split_fingerprints"] == fingerprints_of("default")
    with pytest.raises(ValueError, match="its validation split holds other images.*may have seen this run's test"):
        run(settings(tmp_path, "other-split", split_seed=1, **teacher))
    with pytest.raises(ValueError, match="its validation split holds other images"):
        run(settings(tmp_path, "other-subset", max_per_class=8, **teacher))
    # Other data with the same split settings: the shipped images re-encoded as PNG files (other bytes), with the
    # validation and test splits swapped.
    swapped = tmp_path / "swapped"
    for split, ds in load_image_dataset("default", max_per_class=16).items():
        name = {"validation": "test", "test": "validation"}.get(split, split)
        for i, (image, label) in enumerate(zip(ds["image"], ds["label"], strict=True)):
            folder = swapped / name / ds.features["label"].int2str(label)
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{i}.png")
    with pytest.raises(ValueError, match="other data or another split"):
        run(settings(tmp_path, "other-data", data=str(swapped), **teacher))
    # The same images by another path pass.
    shipped = Path(hf_lcrypt.__file__).parent / "assets" / "breastmnist.npz"
    check_teacher_split(Path(teacher["teacher"]), 0, 16, fingerprints_of(str(shipped)))
    # Teachers saved before fingerprints are checked by their settings; before --split-seed, runs split with --seed.
    old = tmp_path / "old-teacher"
    old.mkdir()
    (old / "metrics.json").write_text(json.dumps({"config": {"seed": 3, "max_per_class": None}}))
    check_teacher_split(old, 3, None, {})
    with pytest.raises(ValueError, match="--split_seed 3 and --max_per_class None, this run uses 0 and None"):
        check_teacher_split(old, 0, None, {})


def test_seed_leaves_the_split_alone(tmp_path, monkeypatch):
    """Runs of several seeds are compared on one held-out test split: --split-seed, not --seed, splits the data."""
    split_seeds = []

    def record(source, *, seed, **kwargs):
        split_seeds.append(seed)
        raise RuntimeError("recorded")

    monkeypatch.setattr(training_data, "load_image_dataset", record)
    for seed, split_seed in ((0, 0), (5, 0), (0, 1)):
        with pytest.raises(RuntimeError, match="recorded"):
            run(settings(tmp_path, f"seed-{seed}-{split_seed}", seed=seed, split_seed=split_seed))
    assert split_seeds == [0, 0, 1]


@pytest.mark.parametrize("patch_embedding", PATCH_EMBEDDINGS)
def test_on_real_brain_mri_fold_is_exact_and_encrypted_training_tracks_plain(shared_data, tmp_path, patch_embedding):
    """The issue's check on a small real subset (8 scans per class and split, 32x32, blocks of 8), for both patch
    embeddings: an MLP one absorbs the key in its first layer as a linear one does."""
    real = {
        "data": str(shared_data / "brain-tumor-mri" / "train"),
        "max_per_class": 8,
        "image_size": 32,
        "patch_embedding": patch_embedding,
    }
    results = {mode: run(settings(tmp_path, mode, mode=mode, **real)) for mode in ("encrypted", "fold")}
    assert results["fold"].metrics["fold_check"]["all_identical"]
    assert results["fold"].metrics["fold_check"]["max_abs_logit_diff"] < 1e-4
    assert results["fold"].metrics["data"]["classes"] == ["glioma", "meningioma", "notumor", "pituitary"]
    np.testing.assert_allclose(train_losses(results["encrypted"]), train_losses(results["fold"]), atol=1e-5)
    for result in results.values():
        assert result.metrics["model"]["patch_embedding"] == patch_embedding
        saved = json.loads((result.paths["model_folder"] / "config.json").read_text())
        assert saved.get("patch_embedding_mlp_size") == (None if patch_embedding == "linear" else 4 * 32)
    same = results["encrypted"].metrics["test"]["accuracy"] == results["fold"].metrics["test"]["accuracy"]
    assert same, "the two runs' models should agree on the test split after six identical steps"


def test_hub_vit_recipe_runs_offline_on_a_local_plain_vit(tmp_path):
    """configs/vit-base-in21k.yaml with a local stand-in for google/vit-base-patch16-224-in21k (same 0.5
    normalisation, no head) and a few steps on the CPU: the recipe's settings (mixup, label smoothing, workers) work."""
    plain_dir = tmp_path / "plain-vit"
    tiny_vit(image_size=32, patch_size=8).save_pretrained(plain_dir)
    ViTImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(plain_dir)
    recipe = Path(__file__).parents[1] / "configs" / "vit-base-in21k.yaml"
    recipe_settings = parse_args([str(recipe), "--use_cpu"])  # it asks for --bf16, for GPUs
    assert recipe_settings.model.from_plain == "google/vit-base-patch16-224-in21k"
    assert recipe_settings.cipher.mode == "encrypted" and recipe_settings.training.bf16
    local = ["--from_plain", str(plain_dir), "--data", "default", "--max_per_class", "8", "--max_steps", "2"]
    local += ["--per_device_train_batch_size", "4", "--bf16", "false", "--dataloader_num_workers", "0"]
    local += ["--attack_max_images", "8", "--output_dir", str(tmp_path / "run"), "--key_file", str(tmp_path / "k")]
    result = run(parse_args([str(recipe), *local]))
    assert result.metrics["model"]["block_size"] == 8 and result.metrics["config"]["mixup"] == 0.2
    assert result.metrics["training_args"]["label_smoothing_factor"] == 0.1
    assert result.metrics["training"]["global_step"] == 2


def test_training_arguments_change_what_the_run_does(root, encrypted):
    """Accumulating 2 batches per step, a linear schedule and 4 steps: the saved arguments say so, and the run did
    it (4 optimiser steps of 16 images are 2 epochs of the 32 training images, the rate fell in a straight line)."""
    flags = ["--gradient_accumulation_steps", "2", "--lr_scheduler_type", "linear", "--max_steps", "4"]
    base = settings(root, "accumulated")
    argv = [
        "--model", NANO, "--max_per_class", "16", "--per_device_train_batch_size", "8",
        "--eval_strategy", "steps", "--eval_steps", "2", "--save_strategy", "steps", "--save_steps", "2",
        "--logging_steps", "1", "--no_augment", "--warmup_steps", "0", "--attack_max_images", "8",
        "--output_dir", base.training.output_dir, "--key_file", base.cipher.key_file, *flags,
    ]  # fmt: skip
    result = run(parse_args(argv))
    saved = result.metrics["training_args"]
    assert (saved["gradient_accumulation_steps"], saved["lr_scheduler_type"], saved["max_steps"]) == (2, "linear", 4)
    assert result.metrics["training"]["global_step"] == 4 and result.metrics["training"]["epoch"] == pytest.approx(2)
    assert encrypted.metrics["training_args"]["gradient_accumulation_steps"] == 1
    assert encrypted.metrics["training"]["epoch"] == pytest.approx(1.5)  # 6 steps of 8 images
    rates = [entry["learning_rate"] for entry in result.log_history if "loss" in entry]
    assert len(rates) == 4 and rates[0] == pytest.approx(5e-4)
    np.testing.assert_allclose(np.diff(rates), -5e-4 / 4, rtol=1e-6)  # linear; the cosine default is not
    cosine = [entry["learning_rate"] for entry in encrypted.log_history if "loss" in entry]
    assert not np.allclose(np.diff(cosine), np.diff(cosine)[0])


def test_push_to_hub_goes_through_the_publish_checks_and_never_pushes_the_key(root, monkeypatch):
    """The Hub is unreachable here: the upload itself is replaced, and sees the checked folder."""
    uploads = []

    def upload(folder: Path, repo_id: str, repo_type: str, private: bool, message: str) -> str:
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        uploads.append({"repo_id": repo_id, "private": private, "files": files})
        return f"https://huggingface.co/{repo_id}"

    monkeypatch.setattr(publishing, "_upload", upload)
    options = dict(max_steps=2, attack_max_images=8, push_to_hub=True, hub_model_id="you/keyed-nano")
    result = run(settings(root, "pushed", hub_private_repo=True, **options))
    assert [(u["repo_id"], u["private"]) for u in uploads] == [("you/keyed-nano", True)]
    files = uploads[0]["files"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "metrics.json"} <= set(files)
    assert not any(name.startswith("checkpoint") or name.endswith((".key", ".bin", ".pt")) for name in files)
    for name, content in files.items():
        assert KEY.to_bytes() not in content and KEY.to_hex().encode() not in content.lower(), name
    card = files["README.md"].decode()
    assert "model-index" in card and KEY.key_id in card
    assert "weights_only_attack.json" in files and "The flips and the pixel layout stay at chance" in card
    assert result.paths["hub"] == Path("https://huggingface.co/you/keyed-nano")
    assert result.metrics["training_args"]["push_to_hub"] is True  # the user's choice, recorded as given
    with pytest.raises(ValueError, match="--push_to_hub publishes keyed ViTs"):
        run(settings(root, "pushed-cnn", model="resnet-small", push_to_hub=True, max_steps=1))


def documented_train_commands() -> list[tuple[str, list[str]]]:
    """Every `scripts/train.py` / `hf-lcrypt train` command in the README, the docs and the configs' comments, as
    (where, arguments); `...` (more flags of the reader's choice) is dropped."""
    commands = []
    docs = sorted((REPO_ROOT / "docs").glob("*.md"))
    for path in [REPO_ROOT / "README.md", *docs, *(REPO_ROOT / "configs").glob("*.yaml")]:
        text = path.read_text().replace("\\\n", " ")
        for line in text.splitlines():
            line = line.lstrip("#").strip()
            for marker in ("scripts/train.py", "hf-lcrypt train"):
                head, found, tail = line.partition(marker)
                if found and head.count("`") % 2 == 0 and not line.startswith(("-", "|")):  # not inline code
                    tail = tail.split("#")[0]
                    commands.append((f"{path.name}: {line}", [t for t in shlex.split(tail) if t != "..."]))
    return commands


def test_every_documented_command_and_config_parses(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the commands name configs/... from the repository's root
    commands = documented_train_commands()
    assert len(commands) >= 8
    cpu = [] if torch.cuda.is_available() else ["--use_cpu"]  # configs for GPUs ask for --bf16
    for where, argv in commands:
        try:
            parse_args(argv + (cpu if "bf16" in " ".join(argv) or any(a.endswith(".yaml") for a in argv) else []))
        except (ValueError, SystemExit) as err:
            pytest.fail(f"{where}: {err}")
    for config in sorted((REPO_ROOT / "configs").glob("*.yaml")):
        assert parse_args([str(config), *cpu]).cipher.mode in ("encrypted", "fold", "plain"), config


def test_checkpoints_keep_the_models_parameter_names_only_while_training(tmp_path):
    """The workaround for transformers#48805 rests on a private switch: this fails when a release stops honouring
    it (then check whether the Trainer reloads its ViT checkpoints by itself, and drop the workaround)."""
    from safetensors import safe_open

    from hf_lcrypt.training.models import checkpoints_keep_parameter_names

    model = LCryptViTForImageClassification.from_plain(tiny_vit(), KEY, (0.5,) * 3, (0.5,) * 3)

    def saved_names(folder: Path) -> set[str]:
        model.save_pretrained(folder)
        with safe_open(str(folder / "model.safetensors"), "pt") as weights:
            return set(weights.keys())

    checkpoints_keep_parameter_names(model, True)
    assert saved_names(tmp_path / "checkpoint") == set(model.state_dict())
    checkpoints_keep_parameter_names(model, False)
    standard = saved_names(tmp_path / "model")
    assert standard != set(model.state_dict()) and any(".encoder.layer." in name for name in standard)
    reloaded = LCryptViTForImageClassification.from_pretrained(tmp_path / "model")
    assert all(torch.equal(v, reloaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_embedding_mitigations_are_checked_and_need_a_vit(tmp_path):
    """The weights-only attack's mitigations (docs/security.md): flags that act on a ViT's key-bearing embeddings."""
    with pytest.raises(ValueError, match="--patch_dropout act on a ViT's embeddings; 'resnet-small' has none"):
        settings(tmp_path, "cnn", model="resnet-small", patch_dropout=0.1)
    with pytest.raises(ValueError, match=r"--patch_dropout is a share of tokens to drop, in \[0, 1\), got 1.0"):
        settings(tmp_path, "all", patch_dropout=1.0)
    with pytest.raises(ValueError, match="--embedding_init_scale must be positive"):
        settings(tmp_path, "zero", embedding_init_scale=0.0)
    with pytest.raises(ValueError, match="--embedding_weight_decay must be >= 0"):
        settings(tmp_path, "negative", embedding_weight_decay=-1.0)
    with pytest.raises(ValueError, match="not --from_plain weights"):
        settings(tmp_path, "hub", from_plain="google/vit-base-patch16-224-in21k", embedding_init_scale=2.0)
    with pytest.raises(ValueError, match="--position_init_scale must be positive"):
        settings(tmp_path, "zero-positions", position_init_scale=-1.0)
    with pytest.raises(ValueError, match="--freeze_position_embeddings act on a ViT's embeddings"):
        settings(tmp_path, "cnn-frozen", model="resnet-small", freeze_position_embeddings=True)
    with pytest.raises(ValueError, match="--position_init_scale scales a preset's fresh initialisation"):
        settings(tmp_path, "hub-positions", from_plain="google/vit-base-patch16-224-in21k", position_init_scale=2.0)
    parsed = parse_args(["--patch-dropout", "0.2", "--embedding_weight_decay", "0.5", "--embedding-init-scale", "4"])
    assert (parsed.model.patch_dropout, parsed.model.embedding_weight_decay, parsed.model.embedding_init_scale) == (
        0.2,
        0.5,
        4.0,
    )


def fresh_setup(tmp_path: Path, **overrides):
    """The test preset's setup from one fixed initialisation seed."""
    torch.manual_seed(0)
    return build_setup(settings(tmp_path, "setup", **overrides), {0: "a", 1: "b"}, {"a": 0, "b": 1})


KEY_BEARING = {"vit.embeddings.patch_embeddings.projection.weight", "vit.embeddings.position_embeddings"}


def test_embedding_init_scale_multiplies_the_key_bearing_embeddings_only(tmp_path):
    base = fresh_setup(tmp_path, embedding_init_scale=1.0).model.state_dict()
    scaled = fresh_setup(tmp_path, embedding_init_scale=4.0).model.state_dict()
    for name, value in base.items():
        assert torch.equal(scaled[name], 4.0 * value if name in KEY_BEARING else value), name


def test_position_init_scale_multiplies_the_position_embeddings_alone(tmp_path):
    base = fresh_setup(tmp_path, embedding_init_scale=1.0).model.state_dict()
    scaled = fresh_setup(tmp_path, embedding_init_scale=2.0, position_init_scale=30.0).model.state_dict()
    factors = {"vit.embeddings.patch_embeddings.projection.weight": 2.0, "vit.embeddings.position_embeddings": 30.0}
    for name, value in base.items():
        assert torch.equal(scaled[name], factors.get(name, 1.0) * value), name


def test_frozen_position_embeddings_stay_at_their_folded_initialisation(tmp_path):
    options = dict(mode="encrypted", freeze_position_embeddings=True, attack_max_images=8, max_steps=3, save_steps=1)
    options.update(save_strategy="steps", eval_strategy="steps", eval_steps=1)
    run(settings(tmp_path, "frozen", **options))
    first = load_file(tmp_path / "frozen" / "checkpoint-1" / "model.safetensors")
    last = load_file(tmp_path / "frozen" / "checkpoint-3" / "model.safetensors")  # the last step, not the best one
    positions, patches = sorted(KEY_BEARING, reverse=True)
    assert torch.equal(first[positions], last[positions])
    assert not torch.equal(first[patches], last[patches])  # the rest trains
    saved = torch.load(tmp_path / "frozen" / "checkpoint-3" / "optimizer.pt", weights_only=True)["param_groups"]
    assert [group["weight_decay"] for group in saved][-1] == 0.0 and len(saved[-1]["params"]) == 1  # the patch weight


def test_presets_trained_from_scratch_hide_the_key_by_default(tmp_path, root, encrypted):
    assert parse_args([]).model.embedding_init_scale == SAFE_EMBEDDING_INIT_SCALE > 1  # scripts/train.py's parser
    assert parse_args(["--model", "resnet-small"]).model.embedding_init_scale == 1.0  # nothing to scale
    base = fresh_setup(tmp_path, embedding_init_scale=1.0).model.state_dict()
    default = fresh_setup(tmp_path).model.state_dict()
    for name, value in base.items():
        assert torch.equal(default[name], SAFE_EMBEDDING_INIT_SCALE * value if name in KEY_BEARING else value), name
    # The model a default run saved (no mitigation flag) still carries the secret initialisation at that scale.
    trained = load_file(root / "encrypted" / "model" / "model.safetensors")
    initial_std = LCryptViTForImageClassification.from_pretrained(root / "encrypted" / "model").config.initializer_range
    for name in KEY_BEARING:
        assert trained[name].std() > 5 * initial_std, name
    # ...and keeps it at that scale: no weight decay on the key-bearing embeddings, the Trainer's split for the rest.
    groups = torch.load(root / "encrypted" / "checkpoint-6" / "optimizer.pt", weights_only=True)["param_groups"]
    assert groups[-1]["weight_decay"] == 0.0 and len(groups[-1]["params"]) == len(KEY_BEARING)
    assert {group["weight_decay"] for group in groups[:-1]} == {0.0, parse_args([]).training.weight_decay}
    assert parse_args(["--model", "resnet-small"]).model.embedding_weight_decay is None  # --weight_decay for all


def test_publish_accepts_a_model_trained_with_the_default(root, encrypted, tmp_path):
    folder = root / "encrypted" / "model"
    result = publishing.publish_model(folder, "someone/default", KEY, dry_run_dir=tmp_path / "repo")
    gate = result.weights_only["gate"]
    assert gate["leaks"] == [] and not gate["published_despite_leak"]
    assert result.weights_only["flips_right"] < gate["thresholds"]["flips_right"]
    assert not (folder / "weights_only_attack.json").exists()  # measured in the repository folder, not the run's


def test_patch_dropout_drops_patch_tokens_while_training_and_keeps_the_fold_exact(tmp_path):
    steps = list(ALL_STEPS)
    reference = fresh_setup(tmp_path).model.eval()
    setup = fresh_setup(tmp_path)
    keyed = model_to_train(setup, "encrypted", setup.folder(KEY, steps), patch_dropout=0.5)
    plain = model_to_train(fresh_setup(tmp_path), "fold", setup.folder(KEY, steps), patch_dropout=0.5)
    pixels = torch.rand(4, 3, 32, 32) * 2 - 1
    encrypted = LCryptImageProcessor(image_size=32, block_size=setup.block_size, key=KEY).cipher(32, 32)
    ciphertext = encrypted.encrypt((pixels + 1) / 2) * 2 - 1
    with torch.no_grad():
        expected = reference(pixels).logits
        assert torch.allclose(plain.eval()(pixels).logits, expected, atol=1e-5)
        assert torch.allclose(keyed.eval()(ciphertext).logits, expected, atol=1e-5)
        tokens = reference.vit.embeddings(pixels)  # CLS + 64 patch tokens
        half = (tokens.shape[1] - 1) // 2
        for model, inputs in ((plain, pixels), (keyed, ciphertext)):
            kept = model.train().vit.embeddings(inputs)
            assert kept.shape == (4, 1 + half, tokens.shape[-1])  # half of the patch tokens, the CLS token first
            assert torch.allclose(kept[:, 0], tokens[:, 0], atol=1e-6)
        kept = plain.train().vit.embeddings(pixels)
        for image in range(4):  # whole tokens of that image, each once
            distances = (kept[image, 1:, None] - tokens[image, None, 1:]).abs().amax(-1)
            assert (distances.min(-1).values < 1e-5).all()
            assert len(set(distances.argmin(-1).tolist())) == half
        assert not torch.allclose(plain.train()(pixels).logits, expected, atol=1e-5)  # training drops, evaluation not


def test_embedding_weight_decay_is_a_parameter_group_of_its_own_that_resumes(tmp_path):
    options = dict(mode="encrypted", embedding_weight_decay=0.5, attack_max_images=8, max_steps=2)
    result = run(settings(tmp_path, "decay", **options))
    assert result.metrics["config"]["embedding_weight_decay"] == 0.5
    saved = torch.load(tmp_path / "decay" / "checkpoint-2" / "optimizer.pt", weights_only=True)["param_groups"]
    assert [group["weight_decay"] for group in saved] == [0.05, 0.0, 0.5]
    assert len(saved[-1]["params"]) == 2  # the patch-embedding weight and the position embeddings
    assert len({group["lr"] for group in saved}) == 1  # the scheduler drives the new group too
    model = LCryptViTForImageClassification.from_pretrained(tmp_path / "decay" / "model")
    assert sum(len(group["params"]) for group in saved) == len(list(model.parameters()))
    resumed = run(settings(tmp_path, "decay", resume_from_checkpoint="last", **{**options, "max_steps": 4}))
    assert resumed.metrics["training"]["global_step"] == 4


def test_attack_weights_only_scores_the_final_model_for_its_card(tmp_path):
    from hf_lcrypt.hub.cards import build_model_card

    result = run(settings(tmp_path, "weights", mode="encrypted", attack_weights_only=True, max_steps=2))
    folder = tmp_path / "weights" / "model"
    assert result.paths["weights_only_attack"] == folder / "weights_only_attack.json"
    scores = json.loads((folder / "weights_only_attack.json").read_text())
    assert scores["num_images"] == 32 and scores["reference_model"] is False
    shares = ("flips_right", "pixels_in_place", "blocks_in_place", "recognised_decrypted", "recognised_plain")
    assert all(0.0 <= scores[name] <= 1.0 for name in shares)
    # The plain twin on the plain test images is the keyed model on their ciphertexts, which metrics.json scored.
    report = json.loads((folder / "attack_report.json").read_text())
    assert scores["recognised_plain"] == pytest.approx(report["accuracy"]["clean"])
    card = " ".join(build_model_card(folder, "someone/keyed").text.split())
    assert f"{100 * scores['flips_right']:.0f} % of the negative-positive flips" in card
    assert (
        f"(this one's plain twin) classifies those decryptions with accuracy {scores['recognised_decrypted']:.2f}"
        in card
    )
    with pytest.raises(ValueError, match="--attack_weights_only reads a ViT's embeddings; 'resnet-small' has none"):
        run(settings(tmp_path, "cnn", model="resnet-small", attack_weights_only=True))
