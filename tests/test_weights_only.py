"""Key recovery from the keyed weights alone (hf_lcrypt.weights_only): on synthetic models whose answer is known, a
smooth embedding gives the key away and a random one does not; and `hf-lcrypt attack --weights-only`."""

import json

import numpy as np
import pytest
import torch
from helpers import tiny_vit
from PIL import Image

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.attacks.model_attacks import Target
from hf_lcrypt.attacks.weights_only import (
    _single_flips,
    _strongest,
    align_to_key,
    chance_scores,
    column_correlations,
    grid_symmetries,
    place_on_grid,
    recover_flips,
    recover_key_from_weights_alone,
    reference_templates,
    weights_only_experiment,
)
from hf_lcrypt.cli import main
from hf_lcrypt.hub.cards import build_model_card

pytestmark = pytest.mark.usefixtures("one_thread")

KEY = LCryptKey(bytes(range(32)))
MEAN = STD = (0.5, 0.5, 0.5)


def smooth_field(rng: np.random.Generator, side: int, samples: int, length: float) -> np.ndarray:
    """`samples` draws of a Gaussian process on a side x side grid (squared-exponential kernel): (samples, side**2)."""
    r, c = np.indices((side, side)).reshape(2, -1)
    kernel = np.exp(-((r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2) / (2 * length**2))
    root = np.linalg.cholesky(kernel + 1e-6 * np.eye(side**2))
    return rng.standard_normal((samples, side**2)) @ root.T


def folded_model(smooth: bool, image_size: int = 32, block: int = 4, hidden: int = 96, seed: int = 0):
    """A plain ViT with smooth embeddings (as natural images train them) or its random initialisation, keyed."""
    torch.manual_seed(seed)
    plain = tiny_vit(image_size, block, hidden, layers=1, labels=2)
    if smooth:
        rng = np.random.default_rng(seed)
        grid = image_size // block
        pixels = smooth_field(rng, block, hidden, 1.2)  # one filter per hidden unit, shared by the channels
        columns = pixels[:, None, :] + 0.15 * rng.standard_normal((hidden, 3, block**2))
        positions = smooth_field(rng, grid, hidden, 1.2).T  # (blocks, hidden)
        with torch.no_grad():
            embeddings = plain.vit.embeddings
            embeddings.patch_embeddings.projection.weight.copy_(torch.from_numpy(columns).view(hidden, 3, block, block))
            embeddings.position_embeddings[0, 1:].copy_(torch.from_numpy(positions))
    return plain, LCryptViTForImageClassification.from_plain(plain, KEY, MEAN, STD).eval()


def smooth_images(count: int, size: int = 32) -> np.ndarray:
    """Smooth greyscale uint8 images stored as RGB (count, size, size, 3)."""
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (count, size // 8, size // 8), dtype=np.uint8)
    grey = np.stack([np.asarray(Image.fromarray(v).resize((size, size), Image.BICUBIC)) for v in small])
    return np.repeat(grey[..., None], 3, axis=-1)


def test_grid_symmetries_are_the_maps_that_keep_neighbours():
    for height, width, count in ((4, 4, 8), (3, 5, 4)):
        maps = grid_symmetries(height, width)
        assert len({m.tobytes() for m in maps}) == count
        r, c = np.indices((height, width)).reshape(2, -1)
        adjacent = np.abs(r[:, None] - r[None]) + np.abs(c[:, None] - c[None]) == 1
        for m in maps:
            assert sorted(m) == list(range(height * width))
            assert (adjacent[np.ix_(m, m)] == adjacent).all()


@pytest.mark.parametrize("grid, slots", [((5, 5), 1), ((3, 6), 1), ((4, 4), 3)])
def test_place_on_grid_solves_an_exact_grid_up_to_a_symmetry(grid, slots):
    """Items whose similarity falls with their distance on a shuffled grid are put back, modulo the grid's symmetry."""
    rng = np.random.default_rng(0)
    cells = rng.permutation(np.repeat(np.arange(grid[0] * grid[1]), slots))
    r, c = cells // grid[1], cells % grid[1]
    similarity = np.exp(-((r[:, None] - r[None]) ** 2 + (c[:, None] - c[None]) ** 2) / 2.0)
    placed = place_on_grid(similarity, grid, slots)
    assert np.bincount(placed, minlength=grid[0] * grid[1]).tolist() == [slots] * (grid[0] * grid[1])
    assert max(float((m[placed] == cells).mean()) for m in grid_symmetries(*grid)) == 1.0
    with pytest.raises(ValueError, match="fill a"):
        place_on_grid(similarity[1:, 1:], grid, slots)


def test_recover_flips_reads_relative_signs_of_correlated_columns():
    rng = np.random.default_rng(0)
    base = smooth_field(rng, 6, 64, 1.5)  # (64 features, 36 columns)
    mask = rng.random(36) < 0.5
    guess = recover_flips(base * np.where(mask, -1.0, 1.0))
    assert (guess == mask).all() or (guess == ~mask).all()
    assert guess.sum() <= 18  # the orientation with fewer flips


def test_a_smooth_keyed_model_gives_its_key_away():
    _, keyed = folded_model(smooth=True)
    cipher = keyed.cipher(KEY)
    guess = recover_key_from_weights_alone(keyed)
    assert guess.grid == cipher.grid and guess.block_size == cipher.block_size
    assert sorted(guess.pixel_perm) == list(range(cipher.block_dim)) and sorted(guess.block_perm) == list(range(64))
    _, scores = align_to_key(guess, cipher)
    assert scores["flips_right"] == 1.0
    assert scores["pixels_in_place"] >= 0.9
    assert scores["blocks_in_place"] >= 0.9


def test_a_reference_model_guides_the_jigsaws():
    """A plain model trained apart (another draw of the same smoothness) gives templates that solve the jigsaws; one
    of another geometry is refused."""
    reference, _ = folded_model(smooth=True, seed=1)
    pixel, blocks = reference_templates(reference)
    assert pixel.shape == (16, 16) and blocks.shape == (64, 64)
    assert np.allclose(pixel, pixel.T) and pixel[0, 1] > pixel[0, 15]  # neighbours above far pixels
    _, keyed = folded_model(smooth=True)
    _, scores = align_to_key(recover_key_from_weights_alone(keyed, reference), keyed.cipher(KEY))
    assert scores["pixels_in_place"] >= 0.9 and scores["blocks_in_place"] >= 0.9
    with pytest.raises(ValueError, match="same image and patch size"):
        recover_key_from_weights_alone(keyed, tiny_vit(32, 8, 48, layers=1))


def test_a_random_keyed_model_keeps_its_key():
    """Untrained (random) embeddings: the guess scores what random guesses score."""
    _, keyed = folded_model(smooth=False)
    cipher = keyed.cipher(KEY)
    _, scores = align_to_key(recover_key_from_weights_alone(keyed), cipher)
    chance = chance_scores(cipher)
    assert 0.5 < chance["flips_right"] < 0.6 and chance["pixels_in_place"] < 0.25 and chance["blocks_in_place"] < 0.1
    for name in ("flips_right", "pixels_in_place", "blocks_in_place", "pixel_neighbours_kept"):
        assert scores[name] < chance[name] + 0.15, name


def test_the_guess_decrypts_held_back_images_only_from_a_smooth_model():
    images = smooth_images(6)
    labels = torch.zeros(6, dtype=torch.long)
    results = {}
    for smooth in (True, False):
        plain, keyed = folded_model(smooth)
        twin = Target(keyed.to_plain(KEY).eval(), MEAN, STD)
        results[smooth], decrypted = weights_only_experiment(keyed, keyed.cipher(KEY), images, labels, twin)
        assert decrypted.shape == images.shape and decrypted.dtype == np.uint8
        assert 0 <= results[smooth]["recognised_decrypted"] <= 1 and results[smooth]["majority_class"] == 1.0
        assert results[smooth]["chance_blocks_in_place"] < 0.1
    assert results[True]["decrypted_ssim"] > 0.8 > results[True]["encrypted_ssim"]
    assert results[False]["decrypted_ssim"] < 0.3
    # Smooth: the search finds the true layouts, whose objective is the highest. Random: it finds layouts that
    # score higher than the truth, which the correlations do not single out.
    for part in ("pixel", "block"):
        smooth_true, smooth_guess = (results[True][f"{part}_objective_{which}"] for which in ("true", "guess"))
        assert smooth_guess == pytest.approx(smooth_true, rel=0.05)
        assert results[False][f"{part}_objective_guess"] > results[False][f"{part}_objective_true"] + 1.0


def test_attack_command_weights_only(tmp_path, capsys):
    _, keyed = folded_model(smooth=True)
    model_dir, data = tmp_path / "model", tmp_path / "data"
    keyed.save_pretrained(model_dir)
    LCryptImageProcessor.for_model(keyed).save_pretrained(model_dir)
    key_file = KEY.save(tmp_path / "k.key")
    for i, image in enumerate(smooth_images(8)):
        folder = data / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i}.png")
    out = tmp_path / "report"
    argv = ["attack", "--model", model_dir, "--data", data, "--key-file", key_file, "--out", out, "--split", "train"]
    assert main([str(a) for a in [*argv, "--weights-only"]]) == 0
    report = json.loads((out / "attack_report.json").read_text())
    assert list(report["attacks"]) == ["weights-only"] and "--attacks weights-only" in report["sources"]["command"]
    scores = json.loads((out / "weights_only_attack.json").read_text())
    assert scores["pixels_in_place"] >= 0.9 and scores["decrypted_ssim"] > 0.8
    assert {"recognised_decrypted", "recognised_plain", "recognised_encrypted"} <= set(scores)
    assert (out / "weights-only.png").read_bytes()[:4] == b"\x89PNG"
    assert KEY.to_hex() not in (out / "attack_report.json").read_text() + (out / "attack_report.md").read_text()
    assert scores["reference_model"] is False
    reference, _ = folded_model(smooth=True, seed=1)
    reference.save_pretrained(tmp_path / "reference")
    assert main([str(a) for a in [*argv, "--weights-only", "--plain-model", tmp_path / "reference"]]) == 0
    scores = json.loads((out / "weights_only_attack.json").read_text())
    assert scores["reference_model"] is True and scores["blocks_in_place"] >= 0.9
    assert main([str(a) for a in [*argv, "--weights-only", "--attacks", "fgsm"]]) == 1
    assert "--weights-only runs one attack" in capsys.readouterr().err
    assert main([str(a) for a in [*argv, "--weights-only", "--adaptive"]]) == 0
    report = json.loads((out / "attack_report.json").read_text())
    assert list(report["attacks"]) == ["weights-only-adaptive"]
    scores = json.loads((out / "weights_only_attack.json").read_text())
    assert scores["adaptive"] is True and scores["flips_right"] == 1.0 and scores["pixels_in_place"] >= 0.9
    assert (out / "weights-only-adaptive.png").read_bytes()[:4] == b"\x89PNG"
    assert main([str(a) for a in [*argv, "--adaptive"]]) == 1
    assert "--adaptive strengthens --weights-only" in capsys.readouterr().err


def test_the_model_card_quotes_the_measured_figure(tmp_path):
    _, keyed = folded_model(smooth=True)
    keyed.save_pretrained(tmp_path)
    assert "This model was not measured; `hf-lcrypt attack --weights-only` measures it." in (
        build_model_card(tmp_path, "someone/keyed").text
    )
    scores = {"flips_right": 1.0, "pixels_in_place": 0.875, "blocks_in_place": 0.5, "decrypted_ssim": 0.61}
    neighbours = {"pixel_neighbours_kept": 0.9, "block_neighbours_kept": 0.3}
    chance = {"chance_flips_right": 0.57, "chance_pixel_neighbours_kept": 0.2, "chance_block_neighbours_kept": 0.06}
    (tmp_path / "weights_only_attack.json").write_text(
        json.dumps({**scores, **neighbours, **chance, "encrypted_ssim": 0.02})
    )
    text = " ".join(build_model_card(tmp_path, "someone/keyed").text.split())
    assert (
        "100 % of the negative-positive flips (chance 57 %), 88 % of the in-block pixels and 50 % of the block" in text
    )
    assert (
        "90 % of neighbouring pixels and 30 % of neighbouring blocks placed as neighbours (chance 20 % and 6 %)" in text
    )
    assert "reach SSIM 0.61 (the ciphertexts: 0.02)" in text and "not measured" not in text


def smooth_chain(seed: int, n: int = 48, hidden: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Patch columns along a 1-D chain, each a noisy copy of the previous one, sign-flipped by a random mask."""
    rng = np.random.default_rng(seed)
    columns = np.zeros((hidden, n))
    columns[:, 0] = rng.normal(size=hidden)
    for j in range(1, n):
        columns[:, j] = 0.8 * columns[:, j - 1] + 0.6 * rng.normal(size=hidden)
    flips = rng.random(n) < 0.5
    return columns * np.where(flips, -1.0, 1.0), flips


def test_flips_follow_the_strongest_chain_where_the_spectral_start_gets_stuck():
    """A weakly connected chain (as some trained embeddings are) traps single flips from the spectral start with
    whole stretches flipped; the start along the maximum spanning tree of |corr| finds the mask."""

    def right(guess, flips):
        return max((guess == flips).mean(), (guess != flips).mean())

    spectral_only, both = [], []
    for seed in range(20):
        keyed, flips = smooth_chain(seed)
        corr = column_correlations(keyed)
        graph = np.where(_strongest(np.abs(corr), 2), corr, 0.0)
        start = np.where(np.linalg.eigh(graph)[1][:, -1] < 0, -1.0, 1.0)
        spectral_only.append(right(_single_flips(graph, start) < 0, flips))
        both.append(right(recover_flips(keyed, 2), flips))
    exact = sum(share == 1.0 for share in both), sum(share == 1.0 for share in spectral_only)
    assert exact[0] >= 17 and exact[1] <= 13 and np.mean(both) > np.mean(spectral_only) + 0.03


def trained_from_default_init(extra_args: list[str], seed: int = 0) -> LCryptViTForImageClassification:
    """The micro preset as the training script initialises it (32/4), plus a smooth learnt part as large as the plain
    initialisation (std 0.02), keyed: what training on natural images adds to the key-bearing embeddings."""
    from hf_lcrypt.training import parse_args
    from hf_lcrypt.training.models import build_setup

    torch.manual_seed(seed)
    args = parse_args(["--image_size", "32", "--block_size", "4", *extra_args])
    plain = build_setup(args, {0: "a", 1: "b"}, {"a": 0, "b": 1}).model
    embeddings = plain.vit.embeddings
    weight = embeddings.patch_embeddings.projection.weight
    hidden = weight.shape[0]
    rng = np.random.default_rng(seed)
    pixels = smooth_field(rng, 4, hidden, 1.2)[:, None, :] + 0.15 * rng.standard_normal((hidden, 3, 16))
    positions = smooth_field(rng, 8, hidden, 1.2).T
    learnt = 0.02 / pixels.std()
    with torch.no_grad():
        weight.add_(torch.from_numpy(learnt * pixels).view_as(weight).float())
        embeddings.position_embeddings[0, 1:].add_(torch.from_numpy(0.02 / positions.std() * positions).float())
    return LCryptViTForImageClassification.from_plain(plain, KEY, MEAN, STD).eval()


def test_the_default_initialisation_hides_the_flips_that_the_plain_one_gives_away():
    old = trained_from_default_init(["--embedding_init_scale", "1"])
    new = trained_from_default_init([])  # the training script's default
    cipher = new.cipher(KEY)
    chance = chance_scores(cipher)
    _, leaky = align_to_key(recover_key_from_weights_alone(old), cipher)
    _, safe = align_to_key(recover_key_from_weights_alone(new), cipher)
    assert leaky["flips_right"] >= 0.95 and leaky["pixel_neighbours_kept"] > 3 * chance["pixel_neighbours_kept"]
    assert safe["flips_right"] < chance["flips_right"] + 0.1
    assert safe["pixel_neighbours_kept"] < chance["pixel_neighbours_kept"] + 0.15
