"""The training pipeline, end to end on a tiny real subset of the embedded BreastMNIST, with a tiny ViT.

Two short runs (encrypted and fold mode, same seed and key) are shared by most tests; each takes a few seconds.
"""

import dataclasses
import json
import pickle
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
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification, training
from hf_lcrypt.cli import main
from hf_lcrypt.data import content_hashes, label_maps, load_image_dataset, split_fingerprints
from hf_lcrypt.evaluation import compute_classification_metrics
from hf_lcrypt.keys import KEY_ENV_VAR
from hf_lcrypt.presets import PATCH_EMBEDDINGS, ModelPreset, register_model_preset, vit_preset
from hf_lcrypt.training import (
    Augment,
    ImageTransform,
    TrainConfig,
    check_teacher_split,
    config_from_namespace,
    load_or_create_key,
    parse_config,
    run,
    secret_init_seed,
)

pytestmark = pytest.mark.slow

NANO = "test-nano"
register_model_preset(NANO, vit_preset(hidden_size=32, layers=2, heads=2))
ATTACKS = ("clean", "wrong_key", "plain", "noise_0.05", "bitflip_0.01", "msb_0.1")


def settings(root: Path, name: str, **overrides) -> TrainConfig:
    """Six steps of 8 images, evaluated and saved every 2 steps, no augmentation (so runs can be compared)."""
    values = {
        "data": "default",
        "model": NANO,
        "max_per_class": 16,
        "batch_size": 8,
        "max_steps": 6,
        "eval_steps": 2,
        "logging_steps": 1,
        "augment": False,
        "warmup": 0,
        "attack_max_images": 32,  # the whole validation split
        "save_total_limit": None,
        "output_dir": str(root / name),
        "key_file": str(root / "keys" / "secret.key"),
        **overrides,
    }
    return TrainConfig(**values)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models gain nothing from a second thread, and spinning OpenMP threads on a busy CPU made these runs
    several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def results_table(folder: Path) -> str:
    """What experiments/results_table.py prints for the runs under `folder`."""
    script = REPO_ROOT / "experiments" / "results_table.py"
    command = [sys.executable, str(script), str(folder)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


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
    result = run(settings(root, "resumed", mode="encrypted", resume=True))
    assert Path(result.metrics["training"]["resumed_from"]).name == "checkpoint-4"
    assert result.metrics["training"]["global_step"] == 6
    assert [entry["step"] for entry in evaluations(result.log_history)] == [2, 4, 6]
    expected = folder_logits(root / "encrypted" / "checkpoint-6", test_images, KEY)
    assert torch.allclose(folder_logits(interrupted / "checkpoint-6", test_images, KEY), expected, atol=1e-5, rtol=0)
    # The run timed only steps 5 and 6, a third of its epochs: the table's s/epoch and training time say so.
    metrics_file = interrupted / "model" / "metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["timings"]["train_seconds"] = 600.0
    metrics_file.write_text(json.dumps(metrics))
    table = results_table(root)
    cells = next(line for line in table.splitlines() if line.startswith("| resumed | encrypted |")).split(" | ")
    assert cells[8] == f"{600 / (metrics['training']['epoch'] / 3):.0f}"
    assert "| 10.0 min after resuming from checkpoint-4 |" in table


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
    values = [f"{scores[c][s]:.3f}" for s in ("validation", "test") for c in ("best_checkpoint", "weight_average")]
    assert f"| run | 0.5 | {' | '.join(values)} |" in results_table(root / "ema")

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
    run(settings(root, "ema-resumed", mode="encrypted", ema_decay=0.5, resume=True))
    expected = load_file(folder / "checkpoint-6" / average_file)
    resumed = load_file(interrupted / "checkpoint-6" / average_file)
    assert resumed.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        settings(root, "bad", ema_decay=1.5)
    with pytest.raises(ValueError, match="--metric, which must then be a classification score"):
        run(settings(root, "bad", ema_decay=0.5, metric="loss"))
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
    result = run(settings(tmp_path, "folded", from_plain=str(tmp_path / "plain"), epochs=0, max_steps=None))
    assert result.metrics["training"]["global_step"] == 0 and result.metrics["base_model"] == str(tmp_path / "plain")
    with torch.no_grad():
        expected = plain(**processor([im.convert("RGB") for im in test_images], return_tensors="pt")).logits
    key = LCryptKey.load(tmp_path / "keys" / "secret.key")
    assert torch.allclose(folder_logits(tmp_path / "folded" / "model", test_images, key), expected, atol=1e-4, rtol=0)
    saved = json.loads((tmp_path / "folded" / "model" / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == pytest.approx(IMAGENET_MEAN) and saved["block_size"] == 4
    with pytest.raises(ValueError, match="--block-size 7 differs"):
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
    with pytest.raises(ValueError, match="folded with key"):
        run(settings(root, "encrypted", mode="encrypted", resume=True, key_file=str(other)))
    with pytest.raises(ValueError, match="no checkpoint"):
        run(settings(tmp_path, "empty", resume=True))


def test_yaml_config_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("mode: fold\nepochs: 3\nbatch-size: 4\ncipher_steps: [block_scramble]\n")
    config = parse_config(["--config", str(path), "--epochs", "5", "--no-augment"])
    assert (config.mode, config.epochs, config.batch_size, config.augment) == ("fold", 5.0, 4, False)
    assert config.cipher_steps == ["block_scramble"] and config.lr == TrainConfig().lr
    assert parse_config(["--resume"]).resume is True
    assert parse_config(["--output-dir", "out/run"]).key_path == Path("out/run.key")
    path.write_text("epocs: 3\n")
    with pytest.raises(ValueError, match="epocs"):
        parse_config(["--config", str(path)])
    with pytest.raises(ValueError, match="mode"):
        TrainConfig(mode="plaintext")


def test_cli_train_subcommand_takes_the_same_settings(tmp_path, monkeypatch):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 3\nlr: 1e-3\n")  # YAML reads 1e-3 as a string; the config makes it a float
    seen = []
    monkeypatch.setattr(training, "run_from_namespace", lambda args: seen.append(config_from_namespace(args)) or 0)
    assert main(["train", "--config", str(path), "--mode", "fold"]) == 0
    (config,) = seen
    assert (config.mode, config.epochs, config.lr) == ("fold", 3.0, 1e-3)


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
    assert parse_config(["--augment-orientation"]).augment_orientation
    assert not parse_config([]).augment_orientation


def test_augment_orientations_are_the_symmetries_it_draws():
    pixels = torch.arange(16 * 16, dtype=torch.uint8).reshape(1, 1, 16, 16)
    square = pixels[0, 0].numpy()
    for augment, expected in (
        (Augment(flip=False), {square.tobytes()}),
        (Augment(), {square.tobytes(), square[:, ::-1].tobytes()}),
        (Augment(rotate90=True), {np.rot90(p, k).tobytes() for p in (square, square[:, ::-1]) for k in range(4)}),
    ):
        views = [view(pixels)[0, 0].numpy().tobytes() for view in augment.orientations()]
        assert len(views) == len(expected) and set(views) == expected
        assert views[0] == square.tobytes()  # the identity first: its logits are the single-view test logits


def test_tta_averages_the_probabilities_of_the_mirrored_and_encrypted_views(tmp_path, test_images):
    """The key holder mirrors each plain test image, encrypts both views and averages the model's probabilities;
    recomputed here through the saved folder and its processor, as a Hub user would. The fixed key, since it seeds the
    initialisation: after two steps, some keys' models rank the test images alike in both views."""
    (tmp_path / "keys").mkdir()
    KEY.save(tmp_path / "keys" / "secret.key")
    result = run(settings(tmp_path, "tta", mode="encrypted", augment=True, tta=True, max_steps=2))
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
    table = results_table(tmp_path)
    single, averaged = result.metrics["test"], [f"{tta[name]:.3f}" for name in ("accuracy", "f1", "roc_auc")]
    assert f"| tta | 2 | {single['accuracy']:.3f} | {' | '.join(averaged)} |" in table
    with pytest.raises(ValueError, match="--tta .* needs --augment"):
        settings(tmp_path, "no-augment", tta=True)


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
    with pytest.raises(ValueError, match="--patch-embedding mlp applies to the ViT presets"):
        settings(tmp_path, "cnn-mlp", model="resnet-small", patch_embedding="mlp")
    with pytest.raises(ValueError, match="--patch-embedding mlp applies to the ViT presets"):
        settings(tmp_path, "hub-mlp", from_plain="google/vit-base-patch16-224-in21k", patch_embedding="mlp")
    with pytest.raises(ValueError, match="patch_embedding must be one of"):
        settings(tmp_path, "conv", patch_embedding="conv")
    assert parse_config(["--patch-embedding", "mlp"]).patch_embedding == "mlp"
    linear_only = vit_preset(32, 1, 2).build
    register_model_preset(
        "test-linear-only", ModelPreset(lambda spec: linear_only(dataclasses.replace(spec, patch_embedding="linear")))
    )
    with pytest.raises(ValueError, match="ignores --patch-embedding mlp"):
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
    shipped = Path(training.__file__).parent / "assets" / "breastmnist.npz"
    check_teacher_split(Path(teacher["teacher"]), TrainConfig(data=str(shipped)), fingerprints_of(str(shipped)))
    # Teachers saved before fingerprints are checked by their settings; before --split-seed, runs split with --seed.
    old = tmp_path / "old-teacher"
    old.mkdir()
    (old / "metrics.json").write_text(json.dumps({"config": {"seed": 3, "max_per_class": None}}))
    check_teacher_split(old, TrainConfig(seed=0, split_seed=3), {})
    with pytest.raises(ValueError, match="--split-seed 3 and --max-per-class None, this run uses 0 and None"):
        check_teacher_split(old, TrainConfig(seed=3, split_seed=0), {})


def test_seed_leaves_the_split_alone(tmp_path, monkeypatch):
    """Runs of several seeds are compared on one held-out test split: --split-seed, not --seed, splits the data."""
    split_seeds = []

    def record(source, *, seed, **kwargs):
        split_seeds.append(seed)
        raise RuntimeError("recorded")

    monkeypatch.setattr(training, "load_image_dataset", record)
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
    if patch_embedding == "mlp":  # the results table names the variant, and its command reproduces it
        table = results_table(tmp_path)
        assert f"| encrypted | encrypted | {NANO}, MLP patches |" in table
        assert "--patch-embedding mlp" in table
    same = results["encrypted"].metrics["test"]["accuracy"] == results["fold"].metrics["test"]["accuracy"]
    assert same, "the two runs' models should agree on the test split after six identical steps"


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_hold_only_known_settings(path):
    config = parse_config(["--config", str(path)])
    assert config.mode in ("encrypted", "fold", "plain")


def test_hub_vit_recipe_runs_offline_on_a_local_plain_vit(tmp_path):
    """configs/vit-base-in21k.yaml with a local stand-in for google/vit-base-patch16-224-in21k (same 0.5
    normalisation, no head) and a few steps on the CPU: the recipe's settings (mixup, label smoothing, workers) work."""
    plain_dir = tmp_path / "plain-vit"
    tiny_vit(image_size=32, patch_size=8).save_pretrained(plain_dir)
    ViTImageProcessorPil(image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(plain_dir)
    recipe = Path(__file__).parents[1] / "configs" / "vit-base-in21k.yaml"
    config = parse_config(["--config", str(recipe)])
    assert config.from_plain == "google/vit-base-patch16-224-in21k" and config.mode == "encrypted"
    config = dataclasses.replace(
        config,
        from_plain=str(plain_dir),
        data="default",
        max_per_class=8,
        max_steps=2,
        batch_size=4,
        bf16=False,
        num_proc=0,
        attack_max_images=8,
        output_dir=str(tmp_path / "run"),
        key_file=str(tmp_path / "run.key"),
    )
    result = run(config)
    assert result.metrics["model"]["block_size"] == 8 and result.metrics["config"]["mixup"] == 0.2
    assert result.metrics["training"]["global_step"] == 2
