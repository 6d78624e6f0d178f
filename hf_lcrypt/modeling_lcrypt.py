"""Keyed ViT models: a plain ViT whose patch and position embeddings absorb a block-wise cipher key.

The forward pass is exactly `transformers`' ViT, so a keyed model costs nothing extra at inference; all key handling
happens once, in `from_plain` and `rekey`.
"""

# isort: off
from .transformers_version import check_transformers_version  # noqa: F401  (first: checks the version)
# isort: on

import copy
import os
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedConfig, ViTConfig, ViTForImageClassification, ViTModel
from transformers.activations import ACT2FN
from transformers.image_processing_base import ImageProcessingMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.models.vit.modeling_vit import ViTPatchEmbeddings

from .cipher import ALL_STEPS, BlockCipher, size_pair
from .configuration_lcrypt import CIPHER_FIELDS, LCryptViTConfig, architecture_settings
from .folding import apply_fold, fold_map
from .keys import LCryptKey, check_key_id

# Checkpoints name ViT weights as transformers 4 did ("encoder.layer.0.attention.attention.query"). transformers 5
# renames them on load for its own ViT classes only, and skips custom-code classes; `LCryptViTModel` as the loaded
# class (AutoModel) gets the same renaming through the public `key_mapping` argument of `from_pretrained`.
LEGACY_VIT_WEIGHT_NAMES = {
    r"encoder\.layer\.": "layers.",
    r"attention\.attention\.query": "attention.q_proj",
    r"attention\.attention\.key": "attention.k_proj",
    r"attention\.attention\.value": "attention.v_proj",
    r"attention\.output\.dense": "attention.o_proj",
    r"intermediate\.dense": "mlp.fc1",
    r"(?<!attention\.)output\.dense": "mlp.fc2",
}


_USE_THE_MODELS_KEY = "Use the key file the model was trained or folded with."


def _check_no_interpolation(interpolate_pos_encoding: bool | None) -> None:
    if interpolate_pos_encoding:
        raise ValueError(
            "interpolate_pos_encoding=True is not supported by a keyed ViT: its position embeddings follow the key's "
            "scrambled block grid, which interpolation would destroy. Resize images to the model's image_size instead."
        )


def _check_key_id(config: LCryptViTConfig, lcrypt_key_id: str | Sequence[str] | None) -> None:
    """Refuse inputs that `LCryptImageProcessor` encrypted with another key than the one folded into the model."""
    check_key_id(
        lcrypt_key_id,
        config.key_id,
        "The key these pixel_values were encrypted with",
        "this model is folded with",
        "Its predictions would be at chance level: use the processor saved with this model "
        "(AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True, key=...)) or "
        "LCryptImageProcessor.for_model(model, key=...) with this model's key.",
    )


class LCryptMLPPatchEmbeddings(ViTPatchEmbeddings):
    """Patch embedding as a two-layer MLP applied to each flattened patch (more capacity before the first attention
    layer). `projection` (patch size kernel and stride) is the only layer that sees pixels, and it sees a whole
    block, so the key folds into it exactly as into a linear patch embedding."""

    def __init__(self, config: LCryptViTConfig):
        super().__init__(config)
        width = config.patch_embedding_mlp_size
        self.projection = nn.Conv2d(config.num_channels, width, kernel_size=self.patch_size, stride=self.patch_size)
        self.activation = ACT2FN[config.hidden_act]
        self.out_proj = nn.Linear(width, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.activation(super().forward(pixel_values)))


class LCryptViTModel(ViTModel):
    """`ViTModel` whose embeddings expect images encrypted with the key named by `config.key_id`."""

    config: LCryptViTConfig

    def __init__(self, config: LCryptViTConfig, add_pooling_layer: bool = True, use_mask_token: bool = False):
        super().__init__(config, add_pooling_layer=add_pooling_layer, use_mask_token=use_mask_token)
        if config.patch_embedding_mlp_size is not None:
            self.embeddings.patch_embeddings = LCryptMLPPatchEmbeddings(config)
            self.init_weights()  # only the new, not yet initialised layers

    @classmethod
    def from_pretrained(cls, *args, key_mapping: dict[str, str] | None = None, **kwargs) -> "LCryptViTModel":
        return super().from_pretrained(*args, key_mapping=key_mapping or LEGACY_VIT_WEIGHT_NAMES, **kwargs)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.BoolTensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        lcrypt_key_id: str | Sequence[str] | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """`lcrypt_key_id` is what `LCryptImageProcessor` adds to its output: the key_id it encrypted with."""
        _check_no_interpolation(interpolate_pos_encoding)
        _check_key_id(self.config, lcrypt_key_id)
        return super().forward(pixel_values, bool_masked_pos=bool_masked_pos, attention_mask=attention_mask, **kwargs)


class LCryptViTForImageClassification(ViTForImageClassification):
    """Keyed ViT classifier; build one from a plain ViT with `from_plain` and move it to a new key with `rekey`."""

    config: LCryptViTConfig
    # The weights a key folds into (docs/architecture.md): the first patch-embedding layer, whose columns it permutes
    # and sign-flips, and the position embeddings, whose rows it permutes. A plain ViT has them under the same names.
    key_bearing_parameter_names = (
        "vit.embeddings.patch_embeddings.projection.weight",
        "vit.embeddings.position_embeddings",
    )

    def __init__(self, config: LCryptViTConfig):
        # `self.vit` stays transformers' own ViTModel, so its checkpoint names load as every ViT's do.
        super().__init__(config)
        if config.patch_embedding_mlp_size is not None:
            self.vit.embeddings.patch_embeddings = LCryptMLPPatchEmbeddings(config)
            self.init_weights()  # only the new, not yet initialised layers
        self._lcrypt_key: LCryptKey | None = None

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        attention_mask: torch.Tensor | None = None,
        lcrypt_key_id: str | Sequence[str] | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        """`lcrypt_key_id` is what `LCryptImageProcessor` adds to its output: the key_id it encrypted with."""
        _check_no_interpolation(interpolate_pos_encoding)
        _check_key_id(self.config, lcrypt_key_id)
        return super().forward(pixel_values, labels=labels, attention_mask=attention_mask, **kwargs)

    # -- key folding ------------------------------------------------------------------------------------------
    @classmethod
    def from_plain(
        cls,
        plain: ViTForImageClassification | str | os.PathLike,
        key: LCryptKey | str | bytes,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        steps: Sequence[str] = ALL_STEPS,
        keyed_image_mean: Sequence[float] | None = None,
        keyed_image_std: Sequence[float] | None = None,
        **from_pretrained_kwargs,
    ) -> "LCryptViTForImageClassification":
        """Turn a plain ViT (object, local folder or Hub id) into a keyed model with identical outputs.

        The plain model is a `ViTForImageClassification`, or this class not bound to a key yet (`config.key_id` is
        `None`: how a ViT with an MLP patch embedding, which `ViTForImageClassification` lacks, trains on plain
        images). `image_mean`/`image_std` are the plain model's normalisation (read from its processor config when
        loading by id or path); the keyed processor normalises encrypted images with `keyed_image_mean`/`std`
        (default: the same). Both are folded into the patch embedding, so the equivalence holds for any values.
        """
        if isinstance(plain, str | os.PathLike):
            source = plain
            config_dict, _ = PreTrainedConfig.get_config_dict(source, **from_pretrained_kwargs)
            loader = cls if config_dict.get("model_type") == LCryptViTConfig.model_type else ViTForImageClassification
            plain = loader.from_pretrained(source, **from_pretrained_kwargs)
            if image_mean is None or image_std is None:
                proc, _ = ImageProcessingMixin.get_image_processor_dict(source, **from_pretrained_kwargs)
                image_mean = proc.get("image_mean") if image_mean is None else image_mean
                image_std = proc.get("image_std") if image_std is None else image_std
        if isinstance(plain, LCryptViTForImageClassification) and plain.config.key_id is not None:
            raise TypeError("This model is already keyed; use model.rekey(new_key) to move it to another key.")
        if not isinstance(plain, ViTForImageClassification):
            raise TypeError(
                f"from_plain folds a key into a transformers ViTForImageClassification, got {type(plain).__name__}. "
                "Convolutional models cannot absorb a block-wise key (convolutions mix pixels across blocks); train "
                "them on encrypted images instead."
            )
        if image_mean is None or image_std is None:
            raise ValueError(
                "Pass image_mean and image_std: the normalisation the plain model was trained with is folded into the "
                "weights, and a wrong value silently breaks the equivalence (e.g. (0.5, 0.5, 0.5) for ViT checkpoints "
                "from google/, IMAGENET_DEFAULT_MEAN/STD for most others)."
            )
        channels = plain.config.num_channels
        config = LCryptViTConfig.from_dict(
            {
                **architecture_settings(plain.config),
                "cipher_steps": list(steps),
                "folded_image_mean": list(keyed_image_mean if keyed_image_mean is not None else image_mean)[:channels],
                "folded_image_std": list(keyed_image_std if keyed_image_std is not None else image_std)[:channels],
            }
        )
        # Build without random initialisation, then take a copy of the plain weights.
        with torch.device("meta"):
            keyed = cls(config)
        state = {name: tensor.detach().clone() for name, tensor in plain.state_dict().items()}
        keyed.load_state_dict(state, assign=True, strict=True)
        keyed.train(plain.training)
        keyed._fold(LCryptKey.coerce(key), image_mean, image_std, inverse=False)
        return keyed

    def rekey(self, new_key: LCryptKey | str | bytes, current_key: LCryptKey | str | bytes | None = None) -> None:
        """Move the model to `new_key` in place, without retraining (e.g. one base model, one key per client).

        The current key is needed to undo the old folding: it is remembered in memory after `from_plain`/`rekey`,
        otherwise pass it as `current_key` (it is checked against `config.key_id`).
        """
        current = LCryptKey.coerce(current_key) if current_key is not None else self._lcrypt_key
        if current is None:
            raise ValueError(
                "rekey needs the key the model is folded with now: pass current_key=... (a loaded model does not keep "
                "its secret)."
            )
        check_key_id(current.key_id, self.config.key_id, "current_key", "the model is folded with", _USE_THE_MODELS_KEY)
        mean, std = self.config.folded_image_mean, self.config.folded_image_std
        self._fold(current, mean, std, inverse=True)
        self._fold(LCryptKey.coerce(new_key), mean, std, inverse=False)

    def to_plain(self, key: LCryptKey | str | bytes) -> ViTForImageClassification:
        """The plain ViT this keyed model is equivalent to, for inputs normalised with `config.folded_image_mean/std`:
        the checkpoint the key holder folded, or would have folded (`from_plain`'s inverse). A model with an MLP patch
        embedding, which `ViTForImageClassification` lacks, stays this class, not bound to a key."""
        key = LCryptKey.coerce(key)
        check_key_id(key.key_id, self.config.key_id, "The key", "the model is folded with", _USE_THE_MODELS_KEY)
        plain = copy.deepcopy(self)
        plain._fold(key, self.config.folded_image_mean, self.config.folded_image_std, inverse=True)
        if self.config.patch_embedding_mlp_size is not None:
            return plain
        settings = {k: v for k, v in architecture_settings(plain.config).items() if k not in CIPHER_FIELDS}
        vit = ViTForImageClassification(ViTConfig.from_dict(settings)).to(self.device)
        vit.load_state_dict(plain.state_dict())
        return vit.train(self.training)

    def _fold(self, key: LCryptKey, mean: Sequence[float], std: Sequence[float], inverse: bool) -> None:
        """Fold `key` in (or out): the plain side of the map is normalised with (mean, std), the keyed side with the
        config's folded normalisation."""
        cipher = self.cipher(key)
        fmap = fold_map(cipher, mean, std, self.config.folded_image_mean, self.config.folded_image_std)
        embeddings = self.vit.embeddings
        apply_fold(embeddings.patch_embeddings.projection, embeddings.position_embeddings, fmap, inverse=inverse)
        self.config.key_id = None if inverse else key.key_id
        self._lcrypt_key = None if inverse else key

    @classmethod
    def key_bearing_parameters(cls, model: ViTForImageClassification) -> list[nn.Parameter]:
        """`model`'s weights that carry the key (patch-embedding weight, position embeddings), in that order: a keyed
        model's, or a plain ViT's before folding. Training scales and groups them; the weight attacks read them."""
        return [model.get_parameter(name) for name in cls.key_bearing_parameter_names]

    def cipher(self, key: LCryptKey | str | bytes) -> BlockCipher:
        """The `BlockCipher` this model expects its inputs encrypted with, for `key`."""
        size = self.config.image_size
        return BlockCipher(
            key,
            image_size=size_pair(size),
            block_size=self.config.block_size,
            channels=self.config.num_channels,
            steps=self.config.cipher_steps,
        )


LCryptViTConfig.register_for_auto_class()
LCryptViTModel.register_for_auto_class("AutoModel")
LCryptViTForImageClassification.register_for_auto_class("AutoModelForImageClassification")

__all__ = ["LCryptMLPPatchEmbeddings", "LCryptViTForImageClassification", "LCryptViTModel"]
