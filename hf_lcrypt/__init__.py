"""hf-lcrypt: keyed block-wise image encryption and key-foldable Vision Transformers for Hugging Face."""

from .cipher import ALL_STEPS, BlockCipher
from .keys import LCryptKey

__version__ = "0.1.0"

__all__ = ["ALL_STEPS", "BlockCipher", "LCryptKey", "__version__"]
