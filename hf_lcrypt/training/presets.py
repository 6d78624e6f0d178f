"""Models trained from scratch by `--model NAME`: ViTs that a key folds into, and convolutional baselines.

The CNN presets exist to measure what the seed paper only claims: block-wise encryption destroys the spatial locality
that convolutions rely on, while a ViT whose patch size equals the block size absorbs the key exactly. A CNN cannot
fold a key, so CNN presets train in `--mode plain` or `--mode encrypted` only.
"""

from collections.abc import Callable
from dataclasses import dataclass

from transformers import (
    ConvNextConfig,
    ConvNextForImageClassification,
    PreTrainedModel,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from ..configuration_lcrypt import LCryptViTConfig
from ..modeling_lcrypt import LCryptViTForImageClassification


@dataclass(frozen=True)
class ModelSpec:
    """What a preset needs to know to build a fresh model."""

    image_size: int
    block_size: int
    id2label: dict[int, str]
    label2id: dict[str, int]
    dropout: float = 0.0
    patch_embedding: str = "linear"


PATCH_EMBEDDINGS = ("linear", "mlp")


@dataclass(frozen=True)
class ModelPreset:
    """A named model built from scratch.

    `foldable` presets build a plain ViT with patch size = block size, which the key is folded into (a
    `ViTForImageClassification`, or for an MLP patch embedding the keyed class not bound to a key yet); other
    presets (e.g. CNNs) are trained on encrypted images as they are, and cannot run `--mode fold`.
    """

    build: Callable[[ModelSpec], PreTrainedModel]
    foldable: bool = True
    description: str = ""


MODEL_PRESETS: dict[str, ModelPreset] = {}


def register_model_preset(name: str, preset: ModelPreset) -> None:
    """Make `--model NAME` build `preset` (replacing a preset of that name)."""
    MODEL_PRESETS[name] = preset


def vit_preset(hidden_size: int, layers: int, heads: int) -> ModelPreset:
    """A plain ViT classifier of the given width and depth (MLP 4x wider, pre-norm, as in ViT/DeiT); with
    `spec.patch_embedding == "mlp"` its patch embedding is an MLP of that same 4x width."""

    def build(spec: ModelSpec) -> PreTrainedModel:
        settings = dict(
            image_size=spec.image_size,
            patch_size=spec.block_size,
            num_channels=3,
            hidden_size=hidden_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=4 * hidden_size,
            hidden_dropout_prob=spec.dropout,
            attention_probs_dropout_prob=spec.dropout,
            num_labels=len(spec.id2label),
            id2label=spec.id2label,
            label2id=spec.label2id,
        )
        if spec.patch_embedding == "mlp":
            config = LCryptViTConfig(**settings, patch_embedding_mlp_size=4 * hidden_size)
            return LCryptViTForImageClassification(config)
        return ViTForImageClassification(ViTConfig(**settings))

    return ModelPreset(build, foldable=True, description=f"ViT {hidden_size} wide, {layers} deep, {heads} heads")


# `micro` suits MedMNIST's 28x28 images on a CPU; `tiny` has DeiT-Ti's width at half its depth; `small` and `base`
# are DeiT-S and DeiT-B.
register_model_preset("micro", vit_preset(128, 4, 4))
register_model_preset("tiny", vit_preset(192, 6, 3))
register_model_preset("small", vit_preset(384, 12, 6))
register_model_preset("base", vit_preset(768, 12, 12))


def resnet_preset(hidden_sizes: list[int], depths: list[int], embedding_size: int) -> ModelPreset:
    """A ResNet with basic blocks (ResNet-18 layout for depths [2, 2, 2, 2])."""

    def build(spec: ModelSpec) -> PreTrainedModel:
        config = ResNetConfig(
            num_channels=3,
            embedding_size=embedding_size,
            hidden_sizes=hidden_sizes,
            depths=depths,
            layer_type="basic",
            num_labels=len(spec.id2label),
            id2label=spec.id2label,
            label2id=spec.label2id,
        )
        return ResNetForImageClassification(config)

    return ModelPreset(build, foldable=False, description=f"ResNet (basic blocks), widths {hidden_sizes}")


def convnext_preset(hidden_sizes: list[int], depths: list[int]) -> ModelPreset:
    """A ConvNeXt (patchify stem of 4x4, then depthwise 7x7 blocks)."""

    def build(spec: ModelSpec) -> PreTrainedModel:
        config = ConvNextConfig(
            num_channels=3,
            hidden_sizes=hidden_sizes,
            depths=depths,
            drop_path_rate=spec.dropout,
            num_labels=len(spec.id2label),
            id2label=spec.id2label,
            label2id=spec.label2id,
        )
        return ConvNextForImageClassification(config)

    return ModelPreset(build, foldable=False, description=f"ConvNeXt, widths {hidden_sizes}")


# resnet18 is ResNet-18 (11M parameters); resnet-small is ResNet-18's layout at half its widths (2.8M
# parameters), the CNN teacher of docs/results.md;
# convnext-small is a ConvNeXt at half of ConvNeXt-T's width (4.2M parameters).
register_model_preset("resnet18", resnet_preset([64, 128, 256, 512], [2, 2, 2, 2], embedding_size=64))
register_model_preset("resnet-small", resnet_preset([32, 64, 128, 256], [2, 2, 2, 2], embedding_size=32))
register_model_preset("convnext-small", convnext_preset([48, 96, 192, 384], [2, 2, 4, 2]))
