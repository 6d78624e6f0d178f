"""A saved keyed model loads with transformers alone (hf_lcrypt not importable) and reproduces its outputs."""

import json
import textwrap

import numpy as np
import pytest
import torch
from helpers import IMAGENET_MEAN, IMAGENET_STD, run_fresh_python, tiny_vit
from PIL import Image

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification

REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_lcrypt"] = None  # transformers alone: importing hf_lcrypt must fail
    try:
        import hf_lcrypt  # noqa: F401
        raise SystemExit("hf_lcrypt was importable")
    except ImportError:
        pass
    import numpy as np, torch
    from PIL import Image
    from transformers import (AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification,
                              pipeline)

    folder, key_hex, images_path = sys.argv[1], sys.argv[2], sys.argv[3]
    images = [Image.fromarray(a) for a in np.load(images_path)]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True, key=key_hex)
    model, info = AutoModelForImageClassification.from_pretrained(
        folder, trust_remote_code=True, output_loading_info=True
    )
    base = AutoModel.from_pretrained(folder, trust_remote_code=True)
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model.eval()(pixel_values).logits
        hidden = base.eval()(pixel_values).last_hidden_state
    classifier = pipeline("image-classification", model=folder, trust_remote_code=True, image_processor=processor,
                          top_k=1)
    print(json.dumps({
        "config_class": type(config).__name__,
        "model_class": type(model).__name__,
        "base_class": type(base).__name__,
        "processor_class": type(processor).__name__,
        "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
        "logits": logits.tolist(), "hidden_sum": float(hidden.sum()),
        "pipeline_labels": [r[0]["label"] for r in classifier(images)],
    }))
    """
)


@pytest.fixture(params=[None, 96], ids=["linear-patch-embedding", "mlp-patch-embedding"])
def saved_model(tmp_path, seeded, request):
    key = LCryptKey.generate()
    keyed = LCryptViTForImageClassification.from_plain(
        tiny_vit(patch_mlp=request.param), key, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    ).eval()
    processor = LCryptImageProcessor.for_model(keyed, key=key)
    folder = tmp_path / "keyed-model"
    keyed.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder, key, keyed, processor


def test_saved_folder_has_code_files_and_auto_map(saved_model):
    folder, _, _, _ = saved_model
    names = {p.name for p in folder.iterdir()}
    assert {
        "configuration_lcrypt.py",
        "modeling_lcrypt.py",
        "image_processing_lcrypt.py",
        "cipher.py",
        "keys.py",
        "transformers_version.py",
    } <= names
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert set(auto_map) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    processor_map = json.loads((folder / "preprocessor_config.json").read_text())["auto_map"]
    assert processor_map == {"AutoImageProcessor": "image_processing_lcrypt.LCryptImageProcessor"}
    for code in folder.glob("*.py"):  # remote code may only import its siblings
        for line in code.read_text().splitlines():
            assert "hf_lcrypt" not in line or line.lstrip().startswith("#"), f"{code.name}: {line}"


def test_no_secret_in_any_saved_file(saved_model):
    folder, key, _, _ = saved_model
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert key.to_bytes() not in data, path.name
            assert key.to_hex().encode() not in data.lower(), path.name


def test_fresh_process_without_hf_lcrypt_reproduces_logits(saved_model, tmp_path):
    folder, key, keyed, processor = saved_model
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    result = run_fresh_python(
        REMOTE_SCRIPT, folder, key.to_hex(), tmp_path / "images.npy", cwd=tmp_path, HF_HUB_OFFLINE="1"
    )
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert remote["config_class"] == "LCryptViTConfig"
    assert remote["model_class"] == "LCryptViTForImageClassification"
    assert remote["base_class"] == "LCryptViTModel"
    assert remote["processor_class"] == "LCryptImageProcessor"
    assert remote["missing"] == [] and remote["unexpected"] == []

    pil_images = [Image.fromarray(a) for a in images]
    with torch.no_grad():
        local = keyed(**processor(pil_images, return_tensors="pt")).logits
    assert torch.allclose(torch.tensor(remote["logits"]), local, atol=1e-5)
    expected_labels = [keyed.config.id2label[i] for i in local.argmax(-1).tolist()]
    assert remote["pipeline_labels"] == expected_labels
