"""hf-lcrypt: keyed block-wise image encryption and key-foldable Vision Transformers for Hugging Face."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .cipher import ALL_STEPS, BlockCipher
from .configuration_lcrypt import LCryptViTConfig
from .image_processing_lcrypt import LCryptImageProcessor
from .keys import LCryptKey
from .modeling_lcrypt import LCryptViTForImageClassification, LCryptViTModel

__version__ = "0.1.0"

# Local use without trust_remote_code; saved folders carry the same classes as remote code (see auto_map).
AutoConfig.register(LCryptViTConfig.model_type, LCryptViTConfig, exist_ok=True)
AutoModel.register(LCryptViTConfig, LCryptViTModel, exist_ok=True)
AutoModelForImageClassification.register(LCryptViTConfig, LCryptViTForImageClassification, exist_ok=True)
AutoImageProcessor.register(LCryptViTConfig, image_processor_classes={"pil": LCryptImageProcessor}, exist_ok=True)

__all__ = [
    "ALL_STEPS",
    "BlockCipher",
    "LCryptImageProcessor",
    "LCryptKey",
    "LCryptViTConfig",
    "LCryptViTForImageClassification",
    "LCryptViTModel",
    "__version__",
]
