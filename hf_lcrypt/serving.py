"""A model server's side: ciphertext in, class probabilities out, no key anywhere (model server role).

`load_served_model` takes any of the three forms of a keyed model, a folder or a Hub id:

- the remote-code model (`model_type: lcrypt-vit`), run with hf-lcrypt's classes;
- its standard export (`model_type: vit`, `hf-lcrypt export --format vit`), run with transformers' own
  `ViTForImageClassification` and `ViTImageProcessor`: no hf-lcrypt, no remote code;
- its ONNX export (`--format onnx`), run with ONNX Runtime and the same `ViTImageProcessor`.

This module imports nothing of hf-lcrypt for the two exports, so a server that only serves them can copy it alone.
All three take ciphertexts that already have the model's size and only rescale and normalise them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

KEYED_MODEL_TYPE = "lcrypt-vit"
METADATA_KEY = "lcrypt"  # where an export keeps the public cipher facts (hf_lcrypt.export)


def _config_dict(source: str | os.PathLike) -> dict[str, Any]:
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(str(source))
    return config


def _labels(config: dict[str, Any]) -> list[str]:
    id2label = config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


class ServedModel:
    """One model behind the server's endpoint. `info` is the public description a client needs to encrypt for it
    (geometry, block size, steps, key_id, labels); `form` is `keyed`, `vit` or `onnx`."""

    def __init__(self, form: str, info: dict[str, Any], logits_fn: Any):
        self.form = form
        self.info = info
        self.height, self.width = info["image_size"]
        self._logits = logits_fn

    def logits(self, ciphertexts: list[Image.Image]) -> np.ndarray:
        """Logits (float32, one row per image) of RGB ciphertexts of the model's size."""
        return self._logits([image.convert("RGB") for image in ciphertexts])

    def probabilities(self, ciphertext: Image.Image) -> dict[str, float]:
        logits = self.logits([ciphertext])[0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return {label: float(p) for label, p in zip(self.info["labels"], probs, strict=True)}


def _info(config: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "image_size": [int(s) for s in meta["image_size"]],
        "block_size": int(meta["block_size"]),
        "channels": int(meta.get("num_channels", config.get("num_channels", 3))),
        "cipher_steps": list(meta["cipher_steps"]),
        "key_id": meta.get("key_id"),
        "labels": _labels(config),
    }


def _serve_keyed(source: str | os.PathLike) -> ServedModel:
    import torch

    from .cipher import size_pair
    from .image_processing_lcrypt import LCryptImageProcessor
    from .modeling_lcrypt import LCryptViTForImageClassification

    model = LCryptViTForImageClassification.from_pretrained(source).eval()
    processor = LCryptImageProcessor.for_model(model)
    config = model.config
    meta = {
        "image_size": size_pair(config.image_size),
        "block_size": config.block_size,
        "num_channels": config.num_channels,
        "cipher_steps": config.cipher_steps,
        "key_id": config.key_id,
    }

    def logits(images: list[Image.Image]) -> np.ndarray:
        batch = processor(images, do_encrypt=False, do_resize=False, return_tensors="pt")
        with torch.inference_mode():
            return model(**batch).logits.float().numpy()

    return ServedModel("keyed", _info(config.to_dict(), meta), logits)


def _serve_vit(source: str | os.PathLike, config: dict[str, Any]) -> ServedModel:
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(source, trust_remote_code=False).eval()
    processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=False)

    def logits(images: list[Image.Image]) -> np.ndarray:
        with torch.inference_mode():
            return model(**processor(images, return_tensors="pt")).logits.float().numpy()

    return ServedModel("vit", _info(config, config[METADATA_KEY]), logits)


def _serve_onnx(source: str | os.PathLike, config: dict[str, Any]) -> ServedModel:
    import onnxruntime as ort
    from transformers import AutoImageProcessor

    meta = config[METADATA_KEY]
    path = Path(source) / meta["onnx_file"]
    if not path.is_file():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(str(source), meta["onnx_file"]))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    processor = AutoImageProcessor.from_pretrained(source, trust_remote_code=False)

    def logits(images: list[Image.Image]) -> np.ndarray:
        pixels = np.asarray(processor(images, return_tensors="np")["pixel_values"], dtype=np.float32)
        return session.run(["logits"], {"pixel_values": pixels})[0]

    return ServedModel("onnx", _info(config, meta), logits)


def load_served_model(source: str | os.PathLike) -> ServedModel:
    """The model in `source` (folder or Hub id), in whichever of the three forms it was saved."""
    config = _config_dict(source)
    if config.get("model_type") == KEYED_MODEL_TYPE:
        return _serve_keyed(source)
    meta = config.get(METADATA_KEY)
    if config.get("model_type") != "vit" or not meta:
        raise ValueError(
            f"{source} is neither a keyed hf-lcrypt model nor its export (config.json with model_type lcrypt-vit, or "
            "vit with an `lcrypt` entry from hf-lcrypt export)."
        )
    return _serve_onnx(source, config) if meta.get("onnx_file") else _serve_vit(source, config)
