"""Configuration of a keyed ViT: a `ViTConfig` plus the public facts about the cipher folded into its weights."""

# isort: off
from .transformers_version import check_transformers_version  # noqa: F401  (first: checks the version)
# isort: on

import re

from huggingface_hub.dataclasses import strict
from transformers import ViTConfig

from .cipher import ALL_STEPS, size_pair
from .keys import SPEC_VERSION  # noqa: F401  (transformers 4.x copies only direct imports: reach its clear error)

# Written into every saved config, so that transformers alone (trust_remote_code) finds each Auto class, AutoModel too.
AUTO_MAP = {
    "AutoConfig": "configuration_lcrypt.LCryptViTConfig",
    "AutoModel": "modeling_lcrypt.LCryptViTModel",
    "AutoModelForImageClassification": "modeling_lcrypt.LCryptViTForImageClassification",
}
# The fields a keyed config adds to a ViTConfig.
CIPHER_FIELDS = (
    "block_size",
    "cipher_steps",
    "folded_image_mean",
    "folded_image_std",
    "patch_embedding_mlp_size",
    "key_id",
)


@strict
class LCryptViTConfig(ViTConfig):
    r"""
    block_size (`int`, *optional*):
        Side of the cipher's blocks. Always `patch_size` (only then does the key fold into the patch embedding): a
        read-only view of it, written to config.json for readers of the file; a value given must equal it.
    cipher_steps (`list[str]`, *optional*):
        Cipher steps the model expects, a subset of `pixel_shuffle`, `negative_positive`, `block_scramble`.
    folded_image_mean (`list[float]`, *optional*):
        Per-channel mean the processor normalises encrypted images with (part of the folded affine map).
    folded_image_std (`list[float]`, *optional*):
        Per-channel std the processor normalises encrypted images with.
    patch_embedding_mlp_size (`int`, *optional*):
        Hidden width of a two-layer MLP patch embedding (`None`: the usual linear one). Its first layer sees each
        whole flattened patch, so the key folds into it exactly as into a linear patch embedding.
    key_id (`str`, *optional*):
        Public fingerprint of the key the weights are folded with (`None` for a model not bound to a key yet).
        The secret key itself is never part of the configuration.
    """

    model_type = "lcrypt-vit"

    cipher_steps: list[str] | None = None
    folded_image_mean: list[float] | None = None
    folded_image_std: list[float] | None = None
    patch_embedding_mlp_size: int | None = None
    key_id: str | None = None

    def __post_init__(self, **kwargs):
        self._given_block_size = kwargs.pop("block_size", None)
        self.cipher_steps = list(ALL_STEPS if self.cipher_steps is None else self.cipher_steps)
        self.folded_image_mean = [0.5] * self.num_channels if self.folded_image_mean is None else self.folded_image_mean
        self.folded_image_std = [0.5] * self.num_channels if self.folded_image_std is None else self.folded_image_std
        self.folded_image_mean = [float(v) for v in self.folded_image_mean]
        self.folded_image_std = [float(v) for v in self.folded_image_std]
        super().__post_init__(**kwargs)
        self.auto_map = {**AUTO_MAP, **(getattr(self, "auto_map", None) or {})}

    @property
    def block_size(self) -> int:
        """Side of the cipher's blocks: the patch size, so that every block is one token."""
        return self.patch_size if isinstance(self.patch_size, int) else self.patch_size[0]

    def to_dict(self) -> dict:
        return {**super().to_dict(), "block_size": self.block_size}

    def validate_cipher(self):
        patch = self.patch_size if isinstance(self.patch_size, int) else tuple(self.patch_size)
        given = self.__dict__.pop("_given_block_size", None)  # checked once, then block_size is patch_size
        if given is not None and (type(given) is not int or given != patch):
            raise ValueError(
                f"block_size ({given!r}) must equal patch_size ({patch}): only then is every block one token "
                "and the key foldable into the patch embedding. Use the same value for both."
            )
        if patch != self.block_size:
            raise ValueError(f"patch_size must be one int, the side of a square block (got {patch}).")
        size = size_pair(self.image_size)
        if any(s % self.block_size for s in size):
            raise ValueError(f"image_size {size} is not a multiple of block_size {self.block_size}; resize the images.")
        unknown = sorted(set(self.cipher_steps) - set(ALL_STEPS))
        if unknown:
            raise ValueError(f"Unknown cipher step(s) {unknown} in cipher_steps; choose from {list(ALL_STEPS)}.")
        for name in ("folded_image_mean", "folded_image_std"):
            values = getattr(self, name)
            if len(values) != self.num_channels:
                raise ValueError(f"{name} needs one value per channel ({self.num_channels}), got {values}.")
        if any(s <= 0 for s in self.folded_image_std):
            raise ValueError(f"folded_image_std must be positive, got {self.folded_image_std}.")
        if self.patch_embedding_mlp_size is not None and self.patch_embedding_mlp_size < 1:
            raise ValueError(
                f"patch_embedding_mlp_size must be a positive width, got {self.patch_embedding_mlp_size}; use None for "
                "a linear patch embedding."
            )
        if self.key_id is not None and not re.fullmatch(r"[0-9a-f]{16}", self.key_id):
            raise ValueError(
                f"key_id is a 16-character lowercase hex fingerprint (LCryptKey.key_id), got {self.key_id!r}."
            )


def architecture_settings(config: ViTConfig) -> dict:
    """A config's settings without what saving adds (model type, architectures, auto_map, version), to build the
    config of another ViT class, plain or keyed, from them."""
    settings = config.to_dict()
    for field in ("model_type", "architectures", "auto_map", "transformers_version"):
        settings.pop(field, None)
    return settings


__all__ = ["LCryptViTConfig"]
