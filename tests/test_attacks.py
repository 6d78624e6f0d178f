"""Attack suite (model-free half): corruptions, cipher metrics, jigsaw and known-plaintext attacks, plots."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hf_lcrypt import ALL_STEPS, BlockCipher, LCryptKey
from hf_lcrypt.attacks.cipher_attacks import (  # private helpers tested directly: the jigsaw solver's second stage
    _grow,
    _to_blocks,
    adjacent_correlation,
    differential_attack,
    edge_dissimilarity,
    flip_mask_from_ciphertext,
    histogram_entropy,
    jigsaw_attack,
    key_sensitivity,
    key_space_log10,
    known_plaintext_attack,
    known_plaintext_experiment,
    npcr_uaci,
    psnr,
    repeated_blocks,
    smallest_known_plaintext,
    ssim,
)
from hf_lcrypt.attacks.corruptions import bit_flips, gaussian_noise, msb_flips
from hf_lcrypt.attacks.plots import plot_curves, plot_image_grid

KEY = LCryptKey(bytes(range(32)))
DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
LC25000 = DATA / "lc25000"
CORRUPTIONS = [gaussian_noise, bit_flips, msb_flips]


def smooth_image(size: int = 64) -> np.ndarray:
    """A smooth synthetic RGB image with no two blocks alike: two ramps and a sinusoid."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    channels = [xx * 200 + 20, yy * 180 + 30, 127 + 100 * np.sin(3 * xx + 2 * yy)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def random_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def real_images(n: int) -> np.ndarray:
    if not LC25000.is_dir():
        pytest.skip("the shared data folder is absent")
    from PIL import Image

    files = sorted(LC25000.glob("*/*.jpeg"))[::600][:n]
    return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])


# -- corruptions ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float16])
def test_corruptions_are_identity_at_strength_zero(corrupt, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)  # floats that are not multiples of 1/255
    x = (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)
    y = corrupt(x, 0.0, generator=g)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert torch.equal(y, x)


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_corruptions_are_reproducible_and_keep_range(corrupt):
    x = torch.rand(2, 3, 16, 16)
    a = corrupt(x, 0.3, generator=torch.Generator().manual_seed(1))
    b = corrupt(x, 0.3, generator=torch.Generator().manual_seed(1))
    c = corrupt(x, 0.3, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_gaussian_noise_has_the_requested_spread():
    g = torch.Generator().manual_seed(0)
    x = torch.full((4, 3, 64, 64), 0.5)
    assert (gaussian_noise(x, 0.05, g) - x).std().item() == pytest.approx(0.05, rel=0.05)
    x8 = torch.full((4, 3, 64, 64), 128, dtype=torch.uint8)
    y8 = gaussian_noise(x8, 0.05, g)
    assert y8.dtype == torch.uint8
    assert (y8.float() - 128).std().item() == pytest.approx(0.05 * 255, rel=0.05)
    assert gaussian_noise(torch.ones(1, 1, 8, 8), 5.0, g).max() == 1  # clamped


def test_bit_flips_flip_each_bit_with_the_given_rate():
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for rate in (0.01, 0.2):
        y = bit_flips(x, rate, torch.Generator().manual_seed(1))
        bits = torch.from_numpy(np.unpackbits((x ^ y).numpy()))
        assert bits.float().mean().item() == pytest.approx(rate, rel=0.1)
        # the 8 bits flip independently: P(value changed) = 1 - (1 - rate)^8
        assert (y != x).float().mean().item() == pytest.approx(1 - (1 - rate) ** 8, rel=0.1)
    assert torch.equal(bit_flips(x, 1.0), 255 - x)


def test_bit_flips_on_floats_only_quantise_touched_pixels():
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = bit_flips(x, 0.05, torch.Generator().manual_seed(1))
    changed = y != x
    assert 0 < changed.float().mean() < 0.6
    assert torch.allclose(y[changed] * 255, (y[changed] * 255).round(), atol=1e-4)


def test_msb_flips_flip_the_top_bit_of_the_given_share():
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = msb_flips(x, 0.3, torch.Generator().manual_seed(1))
    changed = y != x
    assert changed.float().mean().item() == pytest.approx(0.3, rel=0.05)
    assert torch.equal((x ^ y)[changed], torch.full_like(x[changed], 128))
    assert torch.equal(msb_flips(x, 1.0), x ^ 128)


@pytest.mark.parametrize("corrupt", [bit_flips, msb_flips])
def test_rates_outside_unit_interval_are_refused(corrupt):
    with pytest.raises(ValueError, match="probability"):
        corrupt(torch.zeros(1, 1, 2, 2), 1.5)


# -- classical metrics ------------------------------------------------------------------------------------------


def test_npcr_uaci_match_hand_computed_values():
    c1 = np.array([[0, 10], [20, 255]], dtype=np.uint8)
    c2 = np.array([[0, 20], [20, 0]], dtype=np.uint8)
    npcr, uaci = npcr_uaci(c1, c2)
    assert npcr == pytest.approx(50.0)
    assert uaci == pytest.approx((10 + 255) / 4 / 255 * 100)
    assert npcr_uaci(c1, c1) == (0.0, 0.0)


def test_entropy_of_uniform_histogram_is_eight_bits():
    uniform = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert histogram_entropy(uniform)["overall"] == pytest.approx(8.0)
    two_levels = np.stack([np.zeros((4, 4)), np.tile([0, 255], (4, 2)), np.full((4, 4), 7)], -1).astype(np.uint8)
    result = histogram_entropy(two_levels)
    assert result["per_channel"] == pytest.approx([0.0, 1.0, 0.0])
    assert result["overall"] == pytest.approx(-sum(p * math.log2(p) for p in (1 / 2, 1 / 6, 1 / 3)))


@pytest.mark.parametrize("direction", ["horizontal", "vertical", "diagonal"])
def test_encryption_with_pixel_shuffling_removes_neighbour_correlation(direction):
    img = smooth_image()
    encrypted = BlockCipher(KEY, 64, 8).encrypt(img)
    assert adjacent_correlation(img, direction) > 0.95
    assert abs(adjacent_correlation(encrypted, direction)) < 0.1


def test_adjacent_correlation_pairs_the_right_neighbours():
    rows, cols = np.indices((8, 8))
    img = (100 * (rows % 2) + cols).astype(np.uint8)  # a ramp along rows, alternating between rows
    assert adjacent_correlation(img, "horizontal") == pytest.approx(1.0)
    assert adjacent_correlation(img, "vertical") < -0.99
    assert adjacent_correlation(img, "diagonal") < -0.99
    with pytest.raises(ValueError, match="direction"):
        adjacent_correlation(img, "sideways")


def test_one_value_change_moves_exactly_one_ciphertext_value():
    cipher = BlockCipher(KEY, 32, 8)
    result = differential_attack(cipher, random_images(1)[0])
    assert result["npcr"] == pytest.approx(100 / (32 * 32 * 3))
    assert result["uaci"] == pytest.approx(100 / (255 * 32 * 32 * 3))


def test_one_key_bit_changes_almost_every_value_of_a_noisy_image():
    cipher = BlockCipher(KEY, 32, 8)
    assert key_sensitivity(KEY, cipher.describe(), random_images(1)[0], bit=255)["npcr"] > 98.5


def test_key_space_for_224_16_rgb_matches_the_hand_formula():
    d, n = 3 * 16 * 16, (224 // 16) ** 2
    expected = math.log10(math.factorial(d)) + d * math.log10(2) + math.log10(math.factorial(n))
    result = key_space_log10(224, 16, 3)
    assert result["transforms_log10"] == pytest.approx(expected, abs=1e-6)
    assert result["key_log10"] == pytest.approx(256 * math.log10(2))
    assert result["effective_log10"] == result["key_log10"]
    blocks_only = key_space_log10(224, 16, 3, steps=["block_scramble"])["transforms_log10"]
    assert blocks_only == pytest.approx(math.log10(math.factorial(n)), abs=1e-6)
    assert key_space_log10(32, 16, 1, steps=["block_scramble"])["effective_log10"] == pytest.approx(math.log10(24))


# -- image quality ----------------------------------------------------------------------------------------------


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as Wang et al. 2004 define it, window by window: an 11x11 Gaussian window (sigma 1.5) at every position
    where it fits, local weighted means, variances and covariance, K1 = 0.01, K2 = 0.03, the map's mean, then the
    mean over channels."""
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    a, b = (np.atleast_3d(v).astype(np.float64) for v in (a, b))
    scores = []
    for ch in range(a.shape[2]):
        x, y = (np.lib.stride_tricks.sliding_window_view(v[:, :, ch], (11, 11)) for v in (a, b))
        mu_x, mu_y = (np.einsum("ijkl,kl->ij", v, window) for v in (x, y))
        var_x = np.einsum("ijkl,kl->ij", (x - mu_x[..., None, None]) ** 2, window)
        var_y = np.einsum("ijkl,kl->ij", (y - mu_y[..., None, None]) ** 2, window)
        cov = np.einsum("ijkl,kl->ij", (x - mu_x[..., None, None]) * (y - mu_y[..., None, None]), window)
        ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        scores.append(ssim_map.mean())
    return float(np.mean(scores))


def test_ssim_and_psnr_match_closed_forms():
    a, b = np.full((16, 16), 100, dtype=np.uint8), np.full((16, 16), 120, dtype=np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1))
    img = smooth_image(32)
    assert ssim(img, img) == pytest.approx(1.0)
    assert psnr(img, img) == math.inf
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 400))


def test_ssim_matches_the_window_by_window_definition_on_textured_images():
    rng = np.random.default_rng(0)
    img = smooth_image(32)
    noisy = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
    encrypted = BlockCipher(KEY, 32, 8).encrypt(img)
    darker = (img * 0.6).astype(np.uint8)  # a contrast and luminance change, no noise
    for other in (noisy, encrypted, darker, 255 - img):
        expected = reference_ssim(img, other)
        assert ssim(img, other) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert ssim(img[:, :, 1], other[:, :, 1]) == pytest.approx(reference_ssim(img[:, :, 1], other[:, :, 1]))
    assert ssim(img, encrypted) < 0.2 < ssim(img, noisy) < ssim(img, darker)  # scrambled < noisy < dimmed


# -- the ECB-like leak -------------------------------------------------------------------------------------------


def dark_scan(seed: int, size: int = 32) -> np.ndarray:
    """A black image with a noisy bright disc in the middle, like a brain MRI slice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    disc = (yy**2 + xx**2 < (size / 3) ** 2)[..., None]
    return np.where(disc, rng.integers(60, 256, (size, size, 3)), 0).astype(np.uint8)


def test_equal_plain_blocks_stay_equal_after_encryption():
    img = dark_scan(0)
    cipher = BlockCipher(KEY, 32, 4)
    blocks = _to_blocks(img, 4).reshape(64, -1)
    black = float((blocks == 0).all(axis=1).mean())
    assert 0 < black < 1
    assert repeated_blocks(cipher.encrypt(img), 4) == pytest.approx(black)
    assert repeated_blocks(cipher.encrypt(random_images(1)[0]), 8) == 0.0


def test_the_flip_mask_shows_through_a_dark_background():
    cipher = BlockCipher(KEY, 32, 4)
    scans = np.stack([dark_scan(seed) for seed in range(4)])
    assert np.array_equal(flip_mask_from_ciphertext(cipher.encrypt(scans), 4), cipher.flip_mask)
    # Mostly bright images give the complement: one more guess for the attacker.
    assert np.array_equal(flip_mask_from_ciphertext(cipher.encrypt(255 - scans), 4), ~cipher.flip_mask)


# -- jigsaw -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["mgc", "prediction"])
@pytest.mark.parametrize("block_size", [8, 16])
def test_jigsaw_fully_restores_a_smooth_image_scrambled_by_blocks(block_size, method):
    img = smooth_image()
    cipher = BlockCipher(KEY, 64, block_size, steps=["block_scramble"])
    assert not np.array_equal(cipher.encrypt(img), img)
    report = jigsaw_attack(cipher, img, method)
    assert report.direct_comparison == 1.0
    assert report.neighbour_comparison == 1.0
    assert np.array_equal(report.reconstruction, img)
    assert report.ssim == pytest.approx(1.0)


def test_jigsaw_fails_once_pixels_are_shuffled():
    img = smooth_image()
    report = jigsaw_attack(BlockCipher(KEY, 64, 8, steps=ALL_STEPS), img)
    assert report.direct_comparison < 0.2
    assert report.ssim < 0.2
    assert sorted(report.placement.ravel().tolist()) == list(range(64))  # still a full arrangement


def test_greedy_growth_alone_restores_a_smooth_image_from_one_block():
    img = smooth_image()
    cipher = BlockCipher(KEY, 64, 8, steps=["block_scramble"])
    blocks = _to_blocks(cipher.encrypt(img).astype(np.float64), 8)
    right, below = edge_dissimilarity(blocks)
    np.fill_diagonal(right, np.inf)
    np.fill_diagonal(below, np.inf)
    placement = _grow(right, below, cipher.grid, np.array([5]), np.zeros((1, 2), dtype=np.int64))
    assert np.array_equal(cipher.block_perm[placement], np.arange(64).reshape(8, 8))


def test_jigsaw_reassembles_real_histology_without_pixel_shuffling():
    images = real_images(4)[1:]
    blocks_only = BlockCipher(KEY, 224, 16, steps=["block_scramble"])
    assert np.mean([jigsaw_attack(blocks_only, img).direct_comparison for img in images]) > 0.7
    assert jigsaw_attack(BlockCipher(KEY, 224, 16), images[0]).direct_comparison < 0.05


# -- known plaintext --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("structured", [False, True])
def test_known_plaintext_recovers_the_exact_transform_from_random_images(structured):
    cipher = BlockCipher(KEY, 32, 8)
    images = random_images(8)
    plains, unseen = images[:6], images[6:]
    encrypted = cipher.encrypt(plains)
    block_size = 8 if structured else None
    k, recovered = smallest_known_plaintext(plains, encrypted, block_size)
    assert k is not None and recovered.unique
    if k > 1:  # k is the smallest: one pair fewer leaves some position undetermined
        assert not known_plaintext_attack(plains[: k - 1], encrypted[: k - 1], block_size).unique
    assert np.array_equal(recovered.decrypt(cipher.encrypt(unseen)), unseen)
    assert np.array_equal(recovered.encrypt(unseen), cipher.encrypt(unseen))
    assert k == 1 if structured else k >= 2


def test_known_plaintext_recovers_the_exact_transform_from_real_images():
    images = real_images(8)
    cipher = BlockCipher(KEY, 224, 16)
    result = known_plaintext_experiment(cipher, images[:3], images[3:])
    assert result["k"] == 1 and result["ambiguous"] == 0
    assert result["unseen_exact"] == 1.0 and result["unseen_ssim"] == pytest.approx(1.0)
    crops = images[:, :64, :64]  # the generic attack on a crop keeps the test fast
    generic = known_plaintext_experiment(BlockCipher(KEY, 64, 16), crops[:6], crops[6:], structured=False)
    assert generic["k"] is not None and generic["k"] > 1
    assert generic["unseen_exact"] == 1.0


def test_known_plaintext_rejects_unrelated_pairs():
    plains = random_images(2)
    with pytest.raises(ValueError, match="not related"):
        known_plaintext_attack(plains, random_images(2, seed=1))


# -- plots ------------------------------------------------------------------------------------------------------


def test_plots_write_png_files(tmp_path):
    img = smooth_image(32)
    grid = plot_image_grid(
        {"plain": [img, img[:, :, 0]], "encrypted": [BlockCipher(KEY, 32, 8).encrypt(img)]},
        tmp_path / "grid.png",
        title="demo",
    )
    curves = plot_curves(
        {"plain": ([0, 0.1], [0.9, 0.5]), "encrypted": ([0, 0.1], [0.88, 0.49])},
        "sigma",
        "accuracy",
        "robustness",
        tmp_path / "curves.png",
    )
    with Image.open(grid) as image:  # 2.2 inches a cell at 100 dpi, plus the title's 0.4: two rows of two columns
        assert image.size == (440, 480)
        cells = np.asarray(image.convert("RGB"))
    with Image.open(curves) as image:
        assert image.size == (600, 400)
        drawn = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)
    # Each series in its own colour (matplotlib's first two: C0 blue, C1 orange), each covering some pixels.
    for colour in ((0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)):
        assert (np.abs(drawn - colour).max(axis=1) <= 8).sum() > 50, colour
    # The three images fill their cells: the same grid of black images differs from it over most of three cells.
    black = np.zeros_like(img)
    blank = plot_image_grid({"plain": [black, black[:, :, 0]], "encrypted": [black]}, tmp_path / "b.png", title="demo")
    with Image.open(blank) as image:
        changed = (np.asarray(image.convert("RGB")) != cells).any(axis=2).sum()
    assert changed > 100_000  # about 200 x 200 pixels a cell: two cells alone would not reach it
