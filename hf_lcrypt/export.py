"""Standard exports of a keyed model, for servers that cannot run remote code (model server role).

On the server's side a keyed model is a plain Vision Transformer with other weights: the key lives in its patch and
position embeddings, and only the key holder's processor (resize and encrypt) is special. So a keyed model with a
linear patch embedding exports as

- `format="vit"`: a plain `model_type: vit` checkpoint (`ViTForImageClassification`, safetensors) with a
  `ViTImageProcessor` config that only rescales and normalises inputs already encrypted at the model's size. It loads
  with `AutoModelForImageClassification` without `trust_remote_code`, on transformers 4.x and 5.x.
- `format="onnx"`: `model.onnx` (dynamic batch size) plus the same configs, checked with ONNX Runtime. Models with an
  MLP patch embedding, which `ViTForImageClassification` lacks, export to ONNX only.

Both keep the public cipher facts (key_id, geometry, steps, folded normalisation) under `lcrypt` in config.json, and
nothing secret: the key never enters this module.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cipher import size_pair
from .configuration_lcrypt import CIPHER_FIELDS, architecture_settings
from .modeling_lcrypt import LCryptViTForImageClassification

FORMATS = ("vit", "onnx")
METADATA_KEY = "lcrypt"  # the public cipher facts in an export's config.json
ONNX_FILE = "model.onnx"
ONNX_OPSET = 18
ONNX_ATOL = 1e-4
CLIENT = "hf-lcrypt (`hf-lcrypt classify`, `LCryptImageProcessor`) or the Space page's JavaScript (lcrypt.mjs)"


class ExportError(ValueError):
    """A model that cannot be exported in the requested format; the message says why and what to do instead."""


def cipher_metadata(config: Any) -> dict[str, Any]:
    """The public facts a client needs to encrypt for this model, as an export's config.json keeps them."""
    return {
        "key_id": config.key_id,
        "image_size": list(size_pair(config.image_size)),
        "block_size": int(config.block_size),
        "num_channels": int(config.num_channels),
        "cipher_steps": list(config.cipher_steps),
        "folded_image_mean": list(config.folded_image_mean),
        "folded_image_std": list(config.folded_image_std),
        "inputs": "encrypted",
        "client": CLIENT,
    }


def processor_config(config: Any) -> dict[str, Any]:
    """A `ViTImageProcessor` config that only rescales and normalises (with the folded mean and std) ciphertexts that
    already have the model's size: resizing a ciphertext would mix pixels across blocks."""
    height, width = size_pair(config.image_size)
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": False,
        "size": {"height": height, "width": width},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(config.folded_image_mean),
        "image_std": list(config.folded_image_std),
    }


def load_keyed(model: LCryptViTForImageClassification | str | os.PathLike) -> LCryptViTForImageClassification:
    """A keyed model, loaded from a folder if need be; refuses a model not bound to a key."""
    if not isinstance(model, LCryptViTForImageClassification):
        model = LCryptViTForImageClassification.from_pretrained(model)
    if model.config.key_id is None:
        raise ExportError("The model has no key_id: fold a key into it (from_plain or training) before exporting it.")
    return model.eval()


def to_standard_vit(model: LCryptViTForImageClassification):
    """The keyed model as a plain `ViTForImageClassification` with the same weights (so the same logits on the same
    encrypted, normalised inputs); its config keeps the public cipher facts under `lcrypt`."""
    from transformers import ViTConfig, ViTForImageClassification

    if model.config.patch_embedding_mlp_size is not None:
        raise ExportError(
            "This model has an MLP patch embedding, which a standard ViTForImageClassification does not have, so it "
            "cannot be a plain `vit` checkpoint; export it with --format onnx instead."
        )
    settings = {k: v for k, v in architecture_settings(model.config).items() if k not in CIPHER_FIELDS}
    config = ViTConfig.from_dict({**settings, METADATA_KEY: cipher_metadata(model.config)})
    config.architectures = ["ViTForImageClassification"]
    vit = ViTForImageClassification(config)
    vit.load_state_dict(model.state_dict(), strict=True)
    return vit.eval()


@contextlib.contextmanager
def _writing(out: str | os.PathLike) -> Iterator[Path]:
    """A hidden sibling folder to write the export in, moved to `out` (new or empty) only when everything was
    written and checked: a failed export leaves nothing behind."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new or empty output folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.replace(out)  # also over an empty folder of that name


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def export_vit(model: LCryptViTForImageClassification | str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the standard `vit` export of a keyed model into `out` (new or empty): config, safetensors weights and
    the processor config. `export_model` adds the model card."""
    keyed = load_keyed(model)
    with _writing(out) as folder:
        _write_vit(keyed, folder)
    return Path(out)


def _write_vit(keyed: LCryptViTForImageClassification, folder: Path) -> None:
    to_standard_vit(keyed).save_pretrained(folder)
    _write_json(folder / "preprocessor_config.json", processor_config(keyed.config))


def export_onnx(
    model: LCryptViTForImageClassification | str | os.PathLike, out: str | os.PathLike, atol: float = ONNX_ATOL
) -> Path:
    """Write `model.onnx` (dynamic batch size; pixel_values in, logits out) with config.json and the processor config
    into `out` (new or empty), and check ONNX Runtime against the keyed model at batch sizes 1 and 32."""
    keyed = load_keyed(model)
    with _writing(out) as folder:
        _write_onnx(keyed, folder, atol)
    return Path(out)


def _write_onnx(keyed: LCryptViTForImageClassification, out: Path, atol: float = ONNX_ATOL) -> None:
    height, width = size_pair(keyed.config.image_size)
    example = torch.randn(2, keyed.config.num_channels, height, width)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet_exporter():
        torch.onnx.export(
            _LogitsOnly(keyed).eval(),
            (example,),
            str(out / ONNX_FILE),
            input_names=["pixel_values"],
            output_names=["logits"],
            dynamic_shapes={"pixel_values": {0: batch}},
            opset_version=ONNX_OPSET,
            external_data=False,
            dynamo=True,
            verbose=False,
        )
    settings = {k: v for k, v in architecture_settings(keyed.config).items() if k not in CIPHER_FIELDS}
    mlp = keyed.config.patch_embedding_mlp_size
    _write_json(
        out / "config.json",
        {
            **settings,
            "model_type": "vit",
            "architectures": ["ViTForImageClassification"],
            METADATA_KEY: {**cipher_metadata(keyed.config), "patch_embedding_mlp_size": mlp, "onnx_file": ONNX_FILE},
        },
    )
    _write_json(out / "preprocessor_config.json", processor_config(keyed.config))
    check_onnx(out / ONNX_FILE, keyed, atol=atol)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporter's notes that do not concern a ViT (torchvision operators, pytree deprecations)."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        exporter_log.setLevel(level)


class _LogitsOnly(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def check_onnx(
    path: str | os.PathLike, model: torch.nn.Module, batch_sizes: tuple[int, ...] = (1, 32), atol: float = ONNX_ATOL
) -> float:
    """Run the ONNX graph with ONNX Runtime on seeded random inputs and compare with `model`; returns the largest
    logit difference, or raises if it is over `atol`."""
    session = onnx_session(path)
    config = model.config
    height, width = size_pair(config.image_size)
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in batch_sizes:
        pixels = torch.randn(n, config.num_channels, height, width, generator=generator)
        with torch.inference_mode():
            expected = model(pixel_values=pixels).logits.numpy()
        (got,) = session.run(["logits"], {"pixel_values": pixels.numpy()})
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > atol:
        raise RuntimeError(f"ONNX Runtime's logits differ from the model's by {worst:.3g} (over {atol:g}) on {path}.")
    return worst


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session (onnxruntime is the optional extra `hf-lcrypt[onnx]`)."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ImportError("ONNX export and serving need onnxruntime: pip install 'hf-lcrypt[onnx]'.") from err
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_model(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    format: str = "vit",
    *,
    repo_id: str | None = None,
    license: str | None = None,
    base_model: str | None = None,
    folded_from_public: bool = False,
) -> Path:
    """`hf-lcrypt export`: the standard or ONNX export of the keyed model folder `model_dir`, with its model card."""
    from .hub.cards import DEFAULT_LICENSE, build_export_card, is_folded_from_public

    if format not in FORMATS:
        raise ExportError(f"Unknown export format {format!r}; choose from {', '.join(FORMATS)}.")
    out = Path(out)
    keyed = load_keyed(model_dir)
    if format == "vit":
        to_standard_vit(keyed)  # refuses an MLP patch embedding before anything is written
    with _writing(out) as folder:
        (_write_vit if format == "vit" else _write_onnx)(keyed, folder)
        card = build_export_card(
            folder,
            repo_id or f"your-name/{out.resolve().name}",
            license=license or DEFAULT_LICENSE,
            base_model=base_model,
            folded_from_public=is_folded_from_public(model_dir, folded_from_public),
        )
        card.save(folder / "README.md")
    return out
