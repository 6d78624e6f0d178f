"""The encryption image processor: same pipeline as ViT's, with encryption between rescaling and normalisation."""

import numpy as np
import pytest
import torch
from helpers import IMAGENET_MEAN, IMAGENET_STD, tiny_vit
from PIL import Image
from transformers import ViTImageProcessorPil

from hf_lcrypt import BlockCipher, LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.keys import KEY_ENV_VAR


def mixed_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)),  # greyscale
        Image.fromarray(rng.integers(0, 256, (40, 44, 3), dtype=np.uint8)).convert("RGBA"),  # opaque: no warning
    ]


def processor(key=None, **kwargs) -> LCryptImageProcessor:
    return LCryptImageProcessor(
        image_size=32, block_size=8, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, key=key, **kwargs
    )


def test_pipeline_is_resize_rescale_encrypt_normalise():
    key = LCryptKey.generate()
    images = mixed_images()
    got = processor(key)(images, return_tensors="pt")["pixel_values"]
    plain = ViTImageProcessorPil(size={"height": 32, "width": 32}, do_normalize=False, do_convert_rgb=True)
    rescaled = plain(images, return_tensors="pt")["pixel_values"].clamp(0, 1)
    encrypted = BlockCipher(key, 32, 8).encrypt(rescaled)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert got.shape == (3, 3, 32, 32) and got.dtype == torch.float32
    assert torch.allclose(got, (encrypted - mean) / std, atol=1e-5)


def test_keyed_model_through_processor_matches_plain_model(seeded):
    plain = tiny_vit()
    key = LCryptKey.generate()
    keyed = LCryptViTForImageClassification.from_plain(plain, key, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    plain_processor = ViTImageProcessorPil(
        size={"height": 32, "width": 32}, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD, do_convert_rgb=True
    )
    images = mixed_images()
    with torch.no_grad():
        expected = plain(**plain_processor(images, return_tensors="pt")).logits
        got = keyed.eval()(**LCryptImageProcessor.for_model(keyed, key=key)(images, return_tensors="pt")).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "images",
    [
        np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8),
        np.random.default_rng(2).random((32, 32, 3), dtype=np.float32),
        [np.random.default_rng(3).integers(0, 256, (40, 36, 3), dtype=np.uint8)] * 2,
        torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8),
        torch.rand(3, 32, 32),
    ],
    ids=["numpy-uint8", "numpy-float", "numpy-list", "torch-batch", "torch-float"],
)
def test_accepts_numpy_torch_single_and_batches(images):
    floats = not isinstance(images, list) and images.dtype in (np.float32, torch.float32)
    out = processor(LCryptKey.generate())(images, do_rescale=not floats, return_tensors="np")["pixel_values"]
    expected_batch = len(images) if isinstance(images, list) else (images.shape[0] if images.ndim == 4 else 1)
    assert out.shape == (expected_batch, 3, 32, 32)
    assert np.isfinite(out).all()


def test_uint8_and_float_inputs_agree():
    key = LCryptKey.generate()
    array = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    from_uint8 = processor(key)(array, return_tensors="pt")["pixel_values"]
    from_float = processor(key)(array.astype(np.float32) / 255, do_rescale=False, return_tensors="pt")["pixel_values"]
    assert torch.allclose(from_uint8, from_float, atol=1e-5)


def test_key_is_never_serialised_and_wrong_keys_are_refused(tmp_path):
    key = LCryptKey.generate()
    proc = processor(key)
    proc.save_pretrained(tmp_path)
    text = (tmp_path / "preprocessor_config.json").read_text()
    assert key.to_hex() not in text and key.to_hex() not in repr(proc) and key.key_id in text
    reloaded = LCryptImageProcessor.from_pretrained(tmp_path, key=key)
    image = mixed_images()[0]
    assert torch.equal(
        reloaded(image, return_tensors="pt")["pixel_values"], proc(image, return_tensors="pt")["pixel_values"]
    )
    with pytest.raises(ValueError, match="not the one the model was made for"):
        LCryptImageProcessor.from_pretrained(tmp_path, key=LCryptKey.generate())
    keyless = LCryptImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="No key"):
        keyless(image)


def test_key_from_environment_variable(tmp_path, monkeypatch):
    key = LCryptKey.generate()
    key_file = key.save(tmp_path / "secret.key")
    monkeypatch.setenv(KEY_ENV_VAR, str(key_file))
    image = mixed_images()[0]
    from_env = processor()(image, return_tensors="pt")["pixel_values"]
    assert torch.equal(from_env, processor(key)(image, return_tensors="pt")["pixel_values"])
    assert torch.equal(processor()(image, key=key.to_hex(), return_tensors="pt")["pixel_values"], from_env)


def test_encrypt_and_decrypt_viewable_images():
    key = LCryptKey.generate()
    proc = processor(key)
    images = mixed_images()
    encrypted = proc.encrypt_images(images)
    assert all(image.size == (32, 32) and image.mode == "RGB" for image in encrypted)
    decrypted = proc.decrypt_images(encrypted)
    resized = proc(images, do_encrypt=False, do_rescale=False, do_normalize=False, return_tensors="np")
    for expected, restored in zip(resized["pixel_values"], decrypted, strict=True):
        assert np.array_equal(np.asarray(restored), expected.transpose(1, 2, 0).astype(np.uint8))
    with pytest.raises(ValueError, match="exactly"):
        proc.decrypt_images([images[0]])
