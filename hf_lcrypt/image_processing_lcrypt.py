"""Image processor that encrypts: RGB, resize, rescale, encrypt in the pixel domain, then normalise.

Encryption must come before normalisation (a channel shuffle does not commute with per-channel statistics) and after
any augmentation. The key is supplied at run time and never written to `preprocessor_config.json`.
"""

# isort: off
from .transformers_version import check_transformers_version  # noqa: F401  (first: checks the version)
# isort: on

import os
import warnings
from typing import Any

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, PILImageResampling
from transformers.processing_utils import ImagesKwargs

from .cipher import ALL_STEPS, BlockCipher, CipherCache, size_pair
from .keys import KEY_ENV_VAR, SPEC_VERSION, LCryptKey, check_key_id
from .png_metadata import decode, mismatches

# PIL modes with more than 8 bits per sample: converting them to RGB saturates them at 255.
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _deep_image(image: Any) -> str | None:
    """What makes `image` deeper than 8 bits (a 16-bit PIL mode, integers above 255), or None."""
    if isinstance(image, Image.Image):
        return f"has PIL mode {image.mode}" if image.mode in _DEEP_MODES else None
    if isinstance(image, torch.Tensor):
        integer = not image.is_floating_point() and image.dtype not in (torch.uint8, torch.bool)
        empty = image.numel() == 0
    elif isinstance(image, np.ndarray):
        integer, empty = image.dtype.kind in "iu" and image.dtype != np.uint8, image.size == 0
    else:
        return None
    if integer and not empty and int(image.max()) > 255:
        return f"has dtype {image.dtype} with values up to {int(image.max())}"
    return None


def _empty_or_flat(image: Any) -> str | None:
    """What makes an array or tensor no image at all (no pixels; a 2-D tensor, which transformers cannot read), or
    None. Only the shape is named, never the values."""
    if not isinstance(image, torch.Tensor | np.ndarray):
        return None
    shape = tuple(image.shape)
    if 0 in shape or len(shape) < 2:
        return f"is empty (shape {shape}): there is no pixel to process"
    if isinstance(image, torch.Tensor) and len(shape) == 2:
        return f"is a 2-D tensor of shape {shape}; give it a channel axis, image[None] (1, H, W) for greyscale"
    return None


def _upright(images: Any) -> Any:
    """PIL images turned as their EXIF orientation says (a phone photo is stored sideways with a rotation tag), in the
    same nesting as given; other images as they are."""
    if isinstance(images, list | tuple):
        return type(images)(_upright(image) for image in images)
    if isinstance(images, Image.Image) and images.getexif().get(ExifTags.Base.Orientation, 1) not in (0, 1):
        return ImageOps.exif_transpose(images)
    return images


def _unit_floats_to_bytes(images: Any) -> Any:
    """Float arrays and tensors in [0, 1] (as the cipher takes them) as the uint8 images they scale, in the same
    nesting; `encrypt_images` would otherwise read them as 0..255 and return black images."""
    if isinstance(images, list | tuple):
        return type(images)(_unit_floats_to_bytes(image) for image in images)
    floats = (isinstance(images, np.ndarray) and images.dtype.kind == "f") or (
        isinstance(images, torch.Tensor) and images.is_floating_point()
    )
    if floats and images.min() >= 0 and images.max() <= 1:
        scaled = np.rint(np.asarray(images, dtype=np.float64) * 255).astype(np.uint8)
        return torch.from_numpy(scaled) if isinstance(images, torch.Tensor) else scaled
    return images


def _flatten(images: Any) -> list[Any]:
    """The individual images of a single image, a list or a nested list (as the processor accepts them)."""
    if isinstance(images, list | tuple):
        return [image for item in images for image in _flatten(item)]
    return [images]


class LCryptImageProcessorKwargs(ImagesKwargs, total=False):
    block_size: int
    cipher_steps: list[str]
    key_id: str | None
    do_encrypt: bool


class LCryptImageProcessor(PilBackend):
    """Turns images into encrypted, normalised `pixel_values` for a keyed ViT.

    Args:
        image_size: side (or (height, width)) the images are resized to; the model's `image_size`.
        block_size: the cipher block side; the model's patch size.
        key: the secret key (an `LCryptKey`, hex string or key-file path). Without it, the key file named by the
            `HF_LCRYPT_KEY_FILE` environment variable is used when an image is processed.
        key_id: public fingerprint of the key the model expects; a different key is refused.
        cipher_steps: which cipher steps to apply (must match the model's `cipher_steps`).
    """

    valid_kwargs = LCryptImageProcessorKwargs
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    image_mean = IMAGENET_STANDARD_MEAN
    image_std = IMAGENET_STANDARD_STD
    size = {"height": 224, "width": 224}
    do_resize = True
    do_rescale = True
    do_normalize = True
    do_convert_rgb = True
    block_size = 16
    cipher_steps = list(ALL_STEPS)
    key_id = None
    do_encrypt = True

    def __init__(self, image_size: int | tuple[int, int] | None = None, key: Any = None, **kwargs):
        if image_size is not None:
            height, width = size_pair(image_size)
            kwargs["size"] = {"height": int(height), "width": int(width)}
        super().__init__(**kwargs)
        self._key: LCryptKey | None = None
        self._ciphers: CipherCache | None = None
        if key is not None:
            self.set_key(key)

    # -- key handling -----------------------------------------------------------------------------------------
    def set_key(self, key: Any) -> None:
        """Attach the secret key (kept in memory only). It must match `key_id` when the processor has one."""
        key = LCryptKey.coerce(key)
        check_key_id(
            key.key_id,
            self.key_id,
            "This key",
            "the model was made for",
            "Use the key file that was used to train or fold the model; a wrong key gives meaningless outputs.",
        )
        self.key_id = key.key_id
        self._key = key
        self._ciphers = None

    def _resolve_key(self, key: Any = None) -> LCryptKey:
        if key is not None:
            self.set_key(key)
        if self._key is None and os.environ.get(KEY_ENV_VAR):
            self.set_key(os.environ[KEY_ENV_VAR])
        if self._key is None:
            model = f" for the model's key (key_id {self.key_id})" if self.key_id else ""
            raise ValueError(
                f"No key{model}: this processor encrypts images, so it needs the secret key file. Supply it in one "
                f"of these ways: set the environment variable {KEY_ENV_VAR}=/path/to/secret.key before processing; "
                "or load the processor with it, AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=True, "
                "key='/path/to/secret.key'), and pass that to pipeline('image-classification', model=model_dir, "
                "trust_remote_code=True, image_processor=processor); or call processor(images, key=...)."
            )
        return self._key

    def cipher(self, height: int, width: int, channels: int = 3, key: Any = None) -> BlockCipher:
        """The (cached) cipher for this geometry."""
        resolved = self._resolve_key(key)
        if self._ciphers is None or self._ciphers.key is not resolved:
            self._ciphers = CipherCache(resolved, self.block_size, self.cipher_steps)
        return self._ciphers.get(height, width, channels)

    @classmethod
    def for_model(cls, model_or_config: Any, key: Any = None, **kwargs) -> "LCryptImageProcessor":
        """The processor matching a keyed model (or its config): size, block size, steps, normalisation, key_id."""
        config = getattr(model_or_config, "config", model_or_config)
        size = config.image_size
        settings = {
            "image_size": size_pair(size),
            "block_size": config.block_size,
            "cipher_steps": list(config.cipher_steps),
            "image_mean": list(config.folded_image_mean),
            "image_std": list(config.folded_image_std),
            "key_id": config.key_id,
        }
        return cls(**{**settings, **kwargs}, key=key)

    @classmethod
    def from_dict(cls, image_processor_dict: dict[str, Any], **kwargs):
        key = kwargs.pop("key", None)
        result = super().from_dict(image_processor_dict, **kwargs)
        processor = result[0] if isinstance(result, tuple) else result
        if key is not None:
            processor.set_key(key)
        return result

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop("_key", None)
        output.pop("_ciphers", None)
        return output

    def __repr__(self) -> str:
        return f"{self.__class__.__name__} {self.to_json_string()}"

    # -- processing -------------------------------------------------------------------------------------------
    def preprocess(self, images, *args, key: Any = None, **kwargs) -> BatchFeature:
        """Process images; `key=` overrides the processor's key for this call (and is then kept).

        Before anything else, the inputs are checked for what would otherwise give silent garbage: images of more
        than 8 bits (refused), floats already in [0, 1] about to be rescaled again (warned), and, for images that
        are already encrypted (`do_encrypt=False`), PNGs whose hf-lcrypt parameters do not match (refused).
        """
        if key is not None:
            self.set_key(key)
        images, flat = self._upright_and_checked(images)
        if kwargs.get("do_rescale", self.do_rescale):
            self._warn_if_rescaled(flat)
        if not kwargs.get("do_encrypt", self.do_encrypt):
            self._check_encrypted(flat)
        return super().preprocess(images, *args, **kwargs)

    def _upright_and_checked(self, images: Any) -> tuple[Any, list[Any]]:
        """The images turned upright (EXIF) and checked (depth, shape, animation, transparency), and their flat list."""
        images = _upright(images)
        flat = _flatten(images)
        self._check_depth(flat)
        self._check_shapes(flat)
        return images, flat

    @staticmethod
    def _check_shapes(images: list[Any]) -> None:
        """Refuse images that would give garbage or a message printing every value; warn about what RGB drops."""
        for i, image in enumerate(images):
            detail = _empty_or_flat(image)
            if detail:
                raise ValueError(f"Image {i} {detail}.")
            if not isinstance(image, Image.Image):
                continue
            if getattr(image, "n_frames", 1) > 1:
                warnings.warn(
                    f"Image {i} is animated ({image.n_frames} frames); only its first frame is processed.",
                    UserWarning,
                    stacklevel=5,
                )
            transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
            if transparent and image.convert("RGBA").getchannel("A").getextrema()[0] < 255:
                warnings.warn(
                    f"Image {i} has transparent pixels; converting it to RGB drops the transparency (flatten it "
                    "onto the background you want first, e.g. with PIL's Image.alpha_composite).",
                    UserWarning,
                    stacklevel=5,
                )

    @staticmethod
    def _check_depth(images: list[Any]) -> None:
        for i, image in enumerate(images):
            detail = _deep_image(image)
            if detail:
                raise ValueError(
                    f"Image {i} {detail}: more than 8 bits per sample, which converting to 8-bit RGB would saturate "
                    "at 255. Convert it first with a windowing you choose, e.g. to_8bit(array) from the hf-lcrypt "
                    "package's image_io module (linear from darkest to brightest value), or pass floats in [0, 1] "
                    "with do_rescale=False."
                )

    @staticmethod
    def _warn_if_rescaled(images: list[Any]) -> None:
        for image in images:
            floats = (isinstance(image, np.ndarray) and image.dtype.kind == "f") or (
                isinstance(image, torch.Tensor) and image.is_floating_point()
            )
            if floats and len(image.reshape(-1)) and image.min() >= 0 and image.max() <= 1:
                warnings.warn(
                    "The images are floats already in [0, 1], and do_rescale=True would divide them by 255 again "
                    "(near-black images, poor predictions). Pass do_rescale=False for such inputs.",
                    UserWarning,
                    stacklevel=4,
                )
                return

    def _check_encrypted(self, images: list[Any]) -> None:
        """Already encrypted PNGs carry their public parameters: they must be this processor's.

        Images without them pass silently: do_encrypt=False is also how plain images are only resized (the attack
        suite, plain training), and nothing tells such a PNG from a ciphertext written without parameters.
        """
        expected = {
            "spec": SPEC_VERSION,
            "block_size": self.block_size,
            "steps": [step for step in ALL_STEPS if step in self.cipher_steps],
            "image_size": [self.size.height, self.size.width],
        }
        if self.key_id is not None:
            expected["key_id"] = self.key_id
        for i, image in enumerate(images):
            params = decode(image.info, f"Image {i}") if isinstance(image, Image.Image) else None
            if params is None:
                continue
            differ = mismatches(params, expected)
            if differ:
                raise ValueError(
                    f"Image {i} was encrypted with {', '.join(differ)}; this processor (do_encrypt=False) is for "
                    "another key or geometry, and the model would see noise. Use the processor saved with the model "
                    "of that key_id, or encrypt the original images with this one."
                )

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size,
        resample,
        do_center_crop: bool,
        crop_size,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean,
        image_std,
        do_pad,
        pad_size,
        return_tensors,
        do_encrypt: bool = True,
        **kwargs,
    ) -> BatchFeature:
        if do_resize:
            images = [self.resize(image=image, size=size, resample=resample) for image in images]
        if do_center_crop:
            images = [self.center_crop(image, crop_size) for image in images]
        shapes = {image.shape for image in images}
        if len(shapes) != 1:
            raise ValueError(f"Images have different sizes {sorted(shapes)}; keep do_resize=True to batch them.")
        batch = torch.from_numpy(np.stack(images))  # (B, C, H, W)
        channels, height, width = batch.shape[1:]
        extra = {}
        if do_encrypt:
            cipher = self.cipher(height, width, channels)
            # The keyed model's forward compares this with its config's key_id (a processor of another key would
            # otherwise give chance-level predictions without a word).
            extra["lcrypt_key_id"] = cipher.key_id
            if batch.dtype == torch.uint8 and do_rescale and np.isclose(rescale_factor, 1 / 255):
                batch = cipher.encrypt(batch)  # the uint8 flip 255 - x equals the float flip 1 - x after rescaling
            else:
                batch = batch.float() * rescale_factor if do_rescale else batch.float()
                do_rescale = False
                batch = cipher.encrypt(batch)
        # Rescale and normalise in one affine pass over the whole batch.
        scale = torch.full((channels,), float(rescale_factor) if do_rescale else 1.0)
        shift = torch.zeros(channels)
        if do_normalize:
            mean = torch.as_tensor(image_mean, dtype=torch.float32).expand(channels)
            std = torch.as_tensor(image_std, dtype=torch.float32).expand(channels)
            scale, shift = scale / std, -mean / std
        pixel_values = torch.addcmul(shift.view(1, -1, 1, 1), batch.float(), scale.view(1, -1, 1, 1))
        if return_tensors != "pt":
            pixel_values = pixel_values.numpy()
            if return_tensors is None:
                pixel_values = list(pixel_values)
        return BatchFeature(data={"pixel_values": pixel_values, **extra}, tensor_type=return_tensors)

    # -- viewable images for the key holder -------------------------------------------------------------------
    def encrypt_images(self, images, key: Any = None) -> list[Image.Image]:
        """Encrypt images (resized to the processor size, RGB) and return them as viewable PIL images."""
        return self._transform_images(images, key, inverse=False)

    def decrypt_images(self, images, key: Any = None) -> list[Image.Image]:
        """Decrypt images produced by `encrypt_images` (exact for lossless images such as PNG)."""
        return self._transform_images(images, key, inverse=True)

    def _transform_images(self, images, key: Any, inverse: bool) -> list[Image.Image]:
        images, _ = self._upright_and_checked(images)
        prepared = self._prepare_image_like_inputs(_unit_floats_to_bytes(images), do_convert_rgb=True)
        if inverse:  # never resample ciphertext: resizing mixes pixels across blocks
            sizes = {image.shape[1:] for image in prepared}
            expected = (self.size.height, self.size.width)
            if sizes != {expected}:
                raise ValueError(f"Encrypted images must be exactly {expected} pixels, got {sorted(sizes)}.")
        else:
            prepared = [self.resize(image=image, size=self.size, resample=self.resample) for image in prepared]
        batch = np.stack(prepared).transpose(0, 2, 3, 1)  # (B, H, W, C)
        batch = np.clip(batch, 0, 255).astype(np.uint8) if batch.dtype != np.uint8 else batch
        cipher = self.cipher(batch.shape[1], batch.shape[2], batch.shape[3], key=key)
        out = cipher.decrypt(batch) if inverse else cipher.encrypt(batch)
        return [Image.fromarray(image) for image in out]


LCryptImageProcessor.register_for_auto_class()

__all__ = ["LCryptImageProcessor"]
