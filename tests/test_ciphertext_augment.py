"""Each ciphertext augmentation commutes with the cipher: augmenting a ciphertext gives exactly the ciphertext of the
plain image augmented the same way (the key's block map tells which plain blocks the ciphertext blocks are)."""

import pytest
import torch

from hf_lcrypt import BlockCipher, LCryptKey
from hf_lcrypt.ciphertext_augment import (
    CiphertextAugment,
    erase_blocks,
    mix_blocks,
    random_block_mask,
    scale_contrast,
)
from hf_lcrypt.training.transforms import Mixup

SIZE, BLOCK = 16, 4


@pytest.fixture(scope="module")
def cipher():
    return BlockCipher(LCryptKey.generate(), SIZE, BLOCK)


def plain_images(n=6, low=0.0, high=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, 3, SIZE, SIZE, generator=generator, dtype=torch.float64)


def to_plain_blocks(mask, cipher):
    """The plain-image block mask of a ciphertext block mask: ciphertext block k holds plain block block_perm[k]."""
    flat = mask.flatten(1)
    plain = torch.zeros_like(flat)
    plain[:, torch.as_tensor(cipher.block_perm)] = flat
    return plain.view_as(mask)


def test_block_erasing_commutes(cipher):
    x = plain_images()
    mask = random_block_mask(len(x), cipher.grid, torch.full((len(x),), 0.3))
    assert mask.any() and not mask.all()
    on_cipher = erase_blocks(cipher.encrypt(x), mask, BLOCK)
    on_plain = cipher.encrypt(erase_blocks(x, to_plain_blocks(mask, cipher), BLOCK))
    torch.testing.assert_close(on_cipher, on_plain, rtol=0, atol=1e-12)
    # and the block map matters: the same mask applied to the plain image gives another ciphertext
    assert not torch.allclose(on_cipher, cipher.encrypt(erase_blocks(x, mask, BLOCK)))


def test_block_cutmix_commutes(cipher):
    x, partner = plain_images(seed=1), plain_images(seed=2)
    mask = random_block_mask(len(x), cipher.grid, torch.full((len(x),), 0.5))
    on_cipher = mix_blocks(cipher.encrypt(x), cipher.encrypt(partner), mask, BLOCK)
    on_plain = cipher.encrypt(mix_blocks(x, partner, to_plain_blocks(mask, cipher), BLOCK))
    torch.testing.assert_close(on_cipher, on_plain, rtol=0, atol=1e-12)


def test_contrast_about_mid_grey_commutes(cipher):
    x = plain_images(low=0.1, high=0.9)  # stays in [0, 1] for factors up to 1.2
    factors = torch.tensor([0.8, 0.9, 1.0, 1.1, 1.2, 0.95], dtype=torch.float64)
    on_cipher = scale_contrast(cipher.encrypt(x), factors)
    on_plain = cipher.encrypt(scale_contrast(x, factors))
    torch.testing.assert_close(on_cipher, on_plain, rtol=0, atol=1e-12)


def test_gaussian_noise_commutes(cipher):
    x = plain_images(low=0.3, high=0.7)
    noise = (0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)).clamp(
        -0.29, 0.29
    )
    # the key's signed permutation of the plain noise: E(0.5 + n) - 0.5, since E is affine and keeps mid-grey
    cipher_noise = cipher.encrypt(0.5 + noise) - 0.5
    torch.testing.assert_close(cipher.encrypt(x) + cipher_noise, cipher.encrypt(x + noise), rtol=0, atol=1e-12)
    # a signed permutation of i.i.d. Gaussian values is i.i.d. Gaussian: the same multiset of absolute values
    torch.testing.assert_close(cipher_noise.abs().flatten().sort().values, noise.abs().flatten().sort().values)


def test_mixup_commutes(cipher):
    x, partner = plain_images(seed=4), plain_images(seed=5)
    w = torch.rand(len(x), 1, 1, 1, dtype=torch.float64)
    on_cipher = w * cipher.encrypt(x) + (1 - w) * cipher.encrypt(partner)
    torch.testing.assert_close(on_cipher, cipher.encrypt(w * x + (1 - w) * partner), rtol=0, atol=1e-12)


def test_batch_augment_keeps_shapes_and_mixes_labels():
    torch.manual_seed(0)
    augment = CiphertextAugment(BLOCK, [0.5] * 3, [0.5] * 3, 4, cutmix=1.0, erasing=1.0, contrast=0.2, noise=0.05)
    batch = {"pixel_values": torch.rand(8, 3, SIZE, SIZE) * 2 - 1, "labels": torch.arange(8) % 4}
    out = augment(batch)
    assert out["pixel_values"].shape == batch["pixel_values"].shape
    assert out["labels"].shape == (8, 4)
    torch.testing.assert_close(out["labels"].sum(1), torch.ones(8))
    # mixup after a block CutMix takes the soft labels as they are
    mixed = Mixup(0.2, 4)(out)
    torch.testing.assert_close(mixed["labels"].sum(1), torch.ones(8))


def test_batch_augment_in_the_normalised_domain_matches_the_pixel_functions():
    """With mean = std = 0.5 the batch transform is the [0, 1] functions conjugated by the normalisation."""
    augment = CiphertextAugment(BLOCK, [0.5] * 3, [0.5] * 3, 4, contrast=0.3)
    unit = torch.rand(4, 3, SIZE, SIZE)
    torch.manual_seed(7)
    out = augment({"pixel_values": (unit - 0.5) / 0.5, "labels": torch.zeros(4, dtype=torch.long)})
    torch.manual_seed(7)
    factors = torch.empty(4).uniform_(0.7, 1.3)
    torch.testing.assert_close(out["pixel_values"] * 0.5 + 0.5, scale_contrast(unit, factors))
