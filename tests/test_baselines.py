"""CNN baselines: the training loop, metrics and saving work for non-ViT presets, in plain and encrypted mode."""

import json

import pytest
from transformers import AutoModelForImageClassification

from hf_lcrypt import LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.presets import MODEL_PRESETS, ModelSpec
from hf_lcrypt.training import RunArguments, run

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
    assert metrics["mode"] == mode and metrics["model"]["preset"] == model
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and "roc_auc" in metrics["test"]
    assert metrics["model"]["cipher_steps"] == (
        [] if mode == "plain" else ["pixel_shuffle", "negative_positive", "block_scramble"]
    )
    history = [entry for entry in result.log_history if "eval_accuracy" in entry]
    assert history and "eval_attack_wrong_key_accuracy" in history[-1]
    model_dir = result.paths["model_folder"]
    assert (model_dir / "confusion_matrix.png").stat().st_size > 0
    reloaded = AutoModelForImageClassification.from_pretrained(model_dir)
    assert type(reloaded).__name__.startswith(("ResNet", "ConvNext"))
    saved = json.loads((model_dir / "metrics.json").read_text())
    assert saved["test"]["accuracy"] == pytest.approx(metrics["test"]["accuracy"])


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
