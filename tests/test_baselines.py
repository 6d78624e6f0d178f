"""CNN baselines: the training loop, metrics and saving work for non-ViT presets, in plain and encrypted mode."""

import json

import pytest
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

from hf_lcrypt import LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.image_datasets import load_image_dataset
from hf_lcrypt.training import RunArguments, run
from hf_lcrypt.training.presets import MODEL_PRESETS, ModelSpec

pytestmark = pytest.mark.slow

CNN_PRESETS = ["resnet-small", "convnext-small"]


def settings(tmp_path, model: str, mode: str) -> RunArguments:
    return RunArguments.from_dict(
        {
            "data": "default",
            "model": model,
            "mode": mode,
            "image_size": 32,
            "block_size": 4,
            "max_per_class": 8,
            "per_device_train_batch_size": 8,
            "max_steps": 2,
            "eval_strategy": "steps",
            "eval_steps": 2,
            "save_strategy": "steps",
            "save_steps": 2,
            "augment": False,
            "attack_max_images": 16,
            "output_dir": str(tmp_path / f"{model}-{mode}"),
            "key_file": str(tmp_path / "secret.key"),
        }
    )


@pytest.mark.parametrize("model", CNN_PRESETS)
@pytest.mark.parametrize("mode", ["plain", "encrypted"])
def test_cnn_presets_train_evaluate_and_save(tmp_path, model, mode):
    result = run(settings(tmp_path, model, mode))
    metrics = result.metrics
    assert metrics["mode"] == mode and metrics["model"]["preset"] == model and "roc_auc" in metrics["test"]
    history = [entry for entry in result.log_history if "eval_accuracy" in entry]
    assert history and "eval_attack_wrong_key_accuracy" in history[-1]
    model_dir = result.paths["model_folder"]
    assert (model_dir / "confusion_matrix.png").stat().st_size > 0
    reloaded = AutoModelForImageClassification.from_pretrained(model_dir)
    assert type(reloaded).__name__.startswith(("ResNet", "ConvNext"))
    saved = json.loads((model_dir / "metrics.json").read_text())
    assert saved["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    # Loaded back from the folder alone with its saved processor, which encrypts in encrypted mode only, the model
    # reproduces the reported test accuracy.
    processor = AutoImageProcessor.from_pretrained(model_dir, key=LCryptKey.load(tmp_path / "secret.key"))
    test_split = load_image_dataset("default", max_per_class=8)["test"]
    inputs = processor(list(test_split["image"]), return_tensors="pt")["pixel_values"]
    plain_inputs = processor(list(test_split["image"]), return_tensors="pt", do_encrypt=False)["pixel_values"]
    assert torch.equal(inputs, plain_inputs) == (mode == "plain")
    with torch.no_grad():
        logits = reloaded.eval()(pixel_values=inputs).logits
    accuracy = (logits.argmax(-1) == torch.as_tensor(test_split["label"])).float().mean().item()
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])


def test_fold_refuses_cnns(tmp_path):
    with pytest.raises(ValueError, match="--mode fold needs a ViT"):
        run(settings(tmp_path, "resnet-small", "fold"))
    spec = ModelSpec(32, 4, {0: "a", 1: "b"}, {"a": 0, "b": 1})
    cnn = MODEL_PRESETS["resnet-small"].build(spec)
    with pytest.raises(TypeError, match="Convolutional models cannot absorb"):
        LCryptViTForImageClassification.from_plain(
            cnn, LCryptKey.generate(), image_mean=(0.5,) * 3, image_std=(0.5,) * 3
        )


def test_presets_have_the_documented_sizes():
    spec = ModelSpec(64, 8, {i: str(i) for i in range(4)}, {str(i): i for i in range(4)})
    sizes = {name: sum(p.numel() for p in MODEL_PRESETS[name].build(spec).parameters()) for name in MODEL_PRESETS}
    assert 11.0e6 < sizes["resnet18"] < 11.4e6  # ResNet-18
    assert 2.7e6 < sizes["resnet-small"] < 2.9e6
    assert not MODEL_PRESETS["resnet18"].foldable and MODEL_PRESETS["tiny"].foldable
