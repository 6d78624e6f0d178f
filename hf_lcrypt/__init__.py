"""hf-lcrypt: keyed block-wise image encryption and key-foldable Vision Transformers for Hugging Face.

The names below load on first use, so that `import hf_lcrypt` (and the `hf-lcrypt` command line) start without
torch or transformers. Using a model, configuration or processor class registers them with transformers' Auto
classes, so that `AutoModelForImageClassification.from_pretrained(folder)` works locally without trust_remote_code.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
PROJECT_URL = "https://github.com/hf-lcrypt/hf-lcrypt"
DOCS_URL = f"{PROJECT_URL}/blob/main/docs"  # messages and cards link here: a wheel install has no docs/ folder

_EXPORTS = {
    "ALL_STEPS": "keys",
    "LCryptKey": "keys",
    "KeyMismatchError": "keys",
    "check_key_id": "keys",
    "BlockCipher": "cipher",
    "LCryptViTConfig": "configuration_lcrypt",
    "LCryptImageProcessor": "image_processing_lcrypt",
    "LCryptViTForImageClassification": "modeling_lcrypt",
    "LCryptViTModel": "modeling_lcrypt",
}
_TRANSFORMERS_CLASSES = ("modeling_lcrypt", "configuration_lcrypt", "image_processing_lcrypt")

if TYPE_CHECKING:
    from .cipher import BlockCipher
    from .configuration_lcrypt import LCryptViTConfig
    from .image_processing_lcrypt import LCryptImageProcessor
    from .keys import ALL_STEPS, KeyMismatchError, LCryptKey, check_key_id
    from .modeling_lcrypt import LCryptViTForImageClassification, LCryptViTModel


def register_auto_classes() -> None:
    """Register the keyed ViT with AutoConfig, AutoModel, AutoModelForImageClassification and AutoImageProcessor.
    Saved folders carry the same classes as remote code (their config's auto_map); this is for local use."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    from .configuration_lcrypt import LCryptViTConfig
    from .image_processing_lcrypt import LCryptImageProcessor
    from .modeling_lcrypt import LCryptViTForImageClassification, LCryptViTModel

    AutoConfig.register(LCryptViTConfig.model_type, LCryptViTConfig, exist_ok=True)
    AutoModel.register(LCryptViTConfig, LCryptViTModel, exist_ok=True)
    AutoModelForImageClassification.register(LCryptViTConfig, LCryptViTForImageClassification, exist_ok=True)
    AutoImageProcessor.register(LCryptViTConfig, image_processor_classes={"pil": LCryptImageProcessor}, exist_ok=True)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hf_lcrypt' has no attribute {name!r}")
    if module in _TRANSFORMERS_CLASSES:
        register_auto_classes()
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "ALL_STEPS",
    "BlockCipher",
    "KeyMismatchError",
    "LCryptImageProcessor",
    "LCryptKey",
    "LCryptViTConfig",
    "LCryptViTForImageClassification",
    "LCryptViTModel",
    "__version__",
    "check_key_id",
    "register_auto_classes",
]
