"""The model a run trains and its key: a preset built from scratch or a plain checkpoint, folded with the key (or not,
in fold mode), with the image geometry and normalisation it implies; the key file; the checkpoint to resume from."""

from __future__ import annotations

import json
import logging
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedModel, ViTForImageClassification
from transformers.image_processing_base import ImageProcessingMixin
from transformers.trainer_utils import get_last_checkpoint

from ..configuration_lcrypt import LCryptViTConfig, architecture_settings
from ..image_processing_lcrypt import LCryptImageProcessor
from ..keys import LCryptKey, check_key_id
from ..modeling_lcrypt import LCryptViTForImageClassification
from .arguments import RunArguments
from .presets import MODEL_PRESETS, ModelSpec

logger = logging.getLogger(__name__)

# Normalisation of models trained from scratch. With mean = std = 0.5 the fold map of the key is a pure signed
# permutation (no bias offset), which is what makes encrypted training track plain training (docs/training.md).
HALF = (0.5, 0.5, 0.5)


def default_block_size(image_size: int) -> int:
    """The largest block side up to 16 that divides the image and leaves at least 7 blocks per side."""
    sides = [b for b in range(1, 17) if image_size % b == 0 and image_size // b >= 7]
    if not sides:
        raise ValueError(
            f"--image_size {image_size} leaves fewer than 7 blocks a side for every block size; use at least 7 "
            "(e.g. 32, 64 or 224), or give --block_size."
        )
    return max(sides)


def check_geometry(args: RunArguments) -> None:
    """The image and block sizes, checked before anything is written (a key file included)."""
    image_size, block_size = args.data.image_size, args.cipher.block_size
    source = args.model.from_plain
    if source is None:
        image_size = image_size or 32
        block_size = block_size or default_block_size(image_size)
        if image_size % block_size:
            fits = max(1, round(image_size / block_size)) * block_size
            raise ValueError(
                f"--block_size {block_size} does not divide --image_size {image_size}; pick sizes that it divides, "
                f"e.g. --image_size {fits}."
            )
        return
    config = AutoConfig.from_pretrained(source)
    if isinstance(config, LCryptViTConfig) and config.key_id is not None:
        raise ValueError(f"{source} is already keyed; --from_plain takes a plain ViT (use rekey to change keys).")
    for flag, wanted, actual in (
        ("--image_size", image_size, config.image_size),
        ("--block_size", block_size, config.patch_size),
    ):
        if wanted is not None and wanted != actual:
            raise ValueError(f"{flag} {wanted} differs from the --from_plain model's {actual}; leave it out.")


def check_output_dir(output_dir: Path, resume_from: str | None, overwrite: bool, main_process: bool = True) -> None:
    """The convention of transformers' example scripts: a folder that holds a run, finished or not, is never silently
    trained over. `--resume_from_checkpoint` continues it; `--overwrite_output_dir` starts again from scratch (its
    checkpoints removed now, its model folder replaced when the new one is ready); otherwise it is refused."""
    if resume_from or not output_dir.is_dir():
        return
    last = get_last_checkpoint(str(output_dir))
    if (output_dir / "model" / "config.json").is_file():
        held = f"a finished run (its model in {output_dir / 'model'})"
    elif last is not None:
        held = f"an unfinished run (last checkpoint {Path(last).name})"
    else:
        return
    if not overwrite:
        raise ValueError(
            f"{output_dir} holds {held}. Pass --resume_from_checkpoint last to continue it, --overwrite_output_dir to "
            "train again from scratch and replace it, or another --output_dir."
        )
    logger.warning("--overwrite_output_dir: training again from scratch in %s, which holds %s.", output_dir, held)
    if main_process:
        for checkpoint in output_dir.glob("checkpoint-*"):
            shutil.rmtree(checkpoint)


@dataclass
class Setup:
    """The model to train and the geometry and normalisation it implies."""

    model: PreTrainedModel
    foldable: bool
    image_size: int
    block_size: int
    image_mean: list[float]
    image_std: list[float]

    def processor(
        self, key: LCryptKey | None, cipher_steps: list[str], key_id: str | None = None
    ) -> LCryptImageProcessor:
        """The processor of this geometry: encrypting with `key`, or only resizing and normalising without one (then
        images that carry hf-lcrypt's PNG chunk must name `key_id`, if given)."""
        geometry = {"image_size": self.image_size, "block_size": self.block_size, "cipher_steps": list(cipher_steps)}
        geometry |= {"image_mean": self.image_mean, "image_std": self.image_std}
        if key:
            return LCryptImageProcessor(**geometry, key=key)
        return LCryptImageProcessor(**geometry, do_encrypt=False, key_id=key_id)

    def folder(self, key: LCryptKey, cipher_steps: list[str]) -> Callable[[PreTrainedModel], PreTrainedModel]:
        """The map from a plain model of this setup to its keyed copy."""
        return partial(
            LCryptViTForImageClassification.from_plain,
            key=key,
            image_mean=self.image_mean,
            image_std=self.image_std,
            steps=cipher_steps,
        )

    def binder(self, key_id: str, cipher_steps: list[str]) -> Callable[[PreTrainedModel], PreTrainedModel]:
        """Without the key: the map from a freshly initialised plain model to a keyed model bound to `key_id` with
        the same weights. A random initialisation folded with a key is distributed as the unfolded one (the fold
        permutes and sign-flips i.i.d. symmetric weights), so training on ciphertexts from it is keyed training."""
        return partial(bind_to_key_id, key_id=key_id, steps=cipher_steps, mean=self.image_mean, std=self.image_std)


def bind_to_key_id(
    plain: PreTrainedModel, key_id: str, steps: list[str], mean: list[float], std: list[float]
) -> LCryptViTForImageClassification:
    """A keyed ViT (`config.key_id`) holding `plain`'s weights as they are: for a fresh secret initialisation only,
    since the weights are not folded with any key."""
    channels = plain.config.num_channels
    settings = {**architecture_settings(plain.config), "cipher_steps": list(steps), "key_id": key_id}
    config = LCryptViTConfig.from_dict(
        settings | {"folded_image_mean": mean[:channels], "folded_image_std": std[:channels]}
    )
    with torch.device("meta"):
        keyed = LCryptViTForImageClassification(config)
    keyed.load_state_dict({k: v.detach().clone() for k, v in plain.state_dict().items()}, assign=True, strict=True)
    keyed.train(plain.training)
    return keyed


def fresh_init_seed() -> int:
    """A secret seed for a keyless run's initialisation, from the operating system: a seed anyone can regenerate
    would give the key away by matching weights (docs/security.md), and without the key none can be derived."""
    return secrets.randbits(32)


def secret_init_seed(key: LCryptKey, seed: int) -> int:
    """Seed of a from-scratch model's initialisation, derived from the key and `--seed`.

    A keyed model folded from an initialisation anyone can regenerate (a public seed) gives its key away by matching
    weights, even after training (docs/security.md); a key-derived seed keeps runs reproducible for the key holder.
    """
    return int.from_bytes(key.stream("model-init", f"seed={seed}", 4), "big")


def load_or_create_key(path: Path) -> LCryptKey:
    """Load the key file, or create it (mode 0600) when absent. Only the key id is ever logged."""
    if path.is_file():
        key = LCryptKey.load(path)
        logger.info("Loaded key %s from %s", key.key_id, path)
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = LCryptKey.generate()
    key.save(path)
    logger.warning("Created a new key %s in %s (mode 0600): keep it secret and backed up.", key.key_id, path)
    return key


def build_setup(args: RunArguments, id2label: dict[int, str], label2id: dict[str, int]) -> Setup:
    """A preset built from scratch, or the `--from_plain` checkpoint with a new classification head."""
    model_args, image_size, block_size = args.model, args.data.image_size, args.cipher.block_size
    if model_args.from_plain is None:
        image_size = image_size or 32
        block_size = block_size or default_block_size(image_size)
        preset = MODEL_PRESETS[model_args.model]
        spec = ModelSpec(image_size, block_size, id2label, label2id, model_args.dropout, model_args.patch_embedding)
        model = preset.build(spec)
        if model_args.patch_embedding == "mlp" and getattr(model.config, "patch_embedding_mlp_size", None) is None:
            raise ValueError(
                f"Preset {model_args.model!r} ignores --patch_embedding mlp (its build function does not read "
                "ModelSpec.patch_embedding); build it with vit_preset, or leave the flag out."
            )
        if preset.foldable:
            patch_weight, positions = LCryptViTForImageClassification.key_bearing_parameters(model)
            with torch.no_grad():
                patch_weight.mul_(model_args.embedding_init_scale)
                positions.mul_(model_args.position_init_scale)
        return Setup(model, preset.foldable, image_size, block_size, list(HALF), list(HALF))

    source = model_args.from_plain
    check_geometry(args)
    unbound = isinstance(AutoConfig.from_pretrained(source), LCryptViTConfig)  # e.g. a fold run's MLP-patch ViT
    model = (LCryptViTForImageClassification if unbound else ViTForImageClassification).from_pretrained(
        source, num_labels=len(id2label), id2label=id2label, label2id=label2id, ignore_mismatched_sizes=True
    )
    actual_size, patch = model.config.image_size, model.config.patch_size
    try:
        processor_dict, _ = ImageProcessingMixin.get_image_processor_dict(source)
        mean, std = processor_dict["image_mean"], processor_dict["image_std"]
    except (OSError, KeyError):
        logger.warning(
            "%s has no processor config with image_mean/image_std; normalising with mean = std = 0.5.", source
        )
        mean, std = HALF, HALF
    channels = model.config.num_channels
    return Setup(model, True, actual_size, patch, list(mean)[:channels], list(std)[:channels])


def check_foldable(mode: str, foldable: bool) -> None:
    if mode == "fold" and not foldable:
        raise ValueError("--mode fold needs a ViT; this preset trains in --mode encrypted or plain.")


def model_to_train(
    setup: Setup,
    mode: str,
    fold: Callable[[PreTrainedModel], PreTrainedModel],
    patch_dropout: float = 0.0,
    freeze_position_embeddings: bool = False,
) -> PreTrainedModel:
    """On ciphertext (encrypted and plain mode) a ViT starts from the folded copy of its initialisation; a CNN, and
    fold mode's plain ViT, start as built. `patch_dropout` > 0 drops that share of patch tokens while it trains;
    frozen position embeddings stay at their (secret) initialisation, the key's block order folded in."""
    check_foldable(mode, setup.foldable)
    model = fold(setup.model) if mode != "fold" and setup.foldable else setup.model
    checkpoints_keep_parameter_names(model, True)
    if patch_dropout > 0:
        model.vit.embeddings.register_forward_hook(partial(_drop_patch_tokens, patch_dropout))
    if freeze_position_embeddings:
        LCryptViTForImageClassification.key_bearing_parameters(model)[1].requires_grad_(False)
    return model


def _drop_patch_tokens(p: float, module: nn.Module, args: tuple, tokens: torch.Tensor) -> torch.Tensor:
    """timm's `PatchDropout` on the embeddings' output: while training, keep the CLS token and a random
    `1 - p` share of the patch tokens (at least one), each image its own. The key permutes whole tokens and position
    embeddings together, so a uniformly random subset of tokens is the same draw for the keyed and the plain model and
    the fold stays exact; in evaluation nothing is dropped."""
    if not module.training or p == 0.0:
        return tokens
    cls, patches = tokens[:, :1], tokens[:, 1:]
    keep = max(1, int(patches.shape[1] * (1.0 - p)))
    chosen = torch.randn(patches.shape[:2], device=tokens.device).argsort(dim=-1)[:, :keep]
    kept = patches.gather(1, chosen.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
    return torch.cat([cls, kept], dim=1)


def checkpoints_keep_parameter_names(model: PreTrainedModel, keep: bool) -> None:
    """Whether `save_pretrained` writes the model's own parameter names (`keep`) or the Hub's legacy ViT names.

    The Trainer of transformers 5.24-5.25 reloads its checkpoints (resume, best model) with a plain
    `load_state_dict`, which does not undo the legacy renaming that `save_pretrained` applies to ViT weights, and so
    silently loads nothing (transformers#48805; fix proposed in transformers#48822). No public switch exists: this is
    the one place that sets the private `_weight_conversions`, and tests/test_training.py fails if a release stops
    honouring it. Training keeps the names; the final model folder is written in the standard layout."""
    if keep:
        model._weight_conversions = []
    else:
        vars(model).pop("_weight_conversions", None)


def find_checkpoint(resume_from: str | None, output_dir: Path) -> str | None:
    """The checkpoint `--resume_from_checkpoint` names (`last`: the latest one in the output folder)."""
    if not resume_from:
        return None
    checkpoint: str | None = resume_from
    if resume_from.lower() in ("last", "true"):
        checkpoint = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if checkpoint is None:
            raise ValueError(f"--resume_from_checkpoint {resume_from}: no checkpoint-* folder in {output_dir}.")
    if not (Path(checkpoint) / "config.json").is_file():
        raise ValueError(f"--resume_from_checkpoint {checkpoint}: no checkpoint there (no config.json).")
    return checkpoint


def checkpoint_key_id(checkpoint: str | None) -> str | None:
    """The key_id a checkpoint's weights are folded with (None: plain, or no checkpoint)."""
    if checkpoint is None:
        return None
    return json.loads((Path(checkpoint) / "config.json").read_text()).get("key_id")


def check_checkpoint_key(checkpoint: str | None, key_id: str, what: str = "The key file's key") -> None:
    """Refuse to resume a checkpoint whose weights are folded with another key than `what` (which has `key_id`)."""
    check_key_id(
        key_id,
        checkpoint_key_id(checkpoint),
        what,
        f"{checkpoint} is folded with",
        "Resume with the key (or the dataset) the checkpoint was trained with, or start a new --output_dir.",
    )
