"""Key recovery from a keyed model's weights alone: no key, no image, not the checkpoint it came from.

A ViT trained on natural images has smooth embeddings: the patch-embedding columns of neighbouring pixels (and of
the channels of one pixel) point the same way across the hidden units, and the position embeddings of neighbouring
blocks are alike. Folding a key, or training on encrypted images, only permutes and sign-flips those columns and
permutes the position rows (`folding.py`), so their correlations survive: the sign of a strong correlation gives the
relative flip of two columns, and placing columns and rows on their grids so that correlated ones are neighbours
attacks the in-block and block jigsaws (docs/security.md measures how far each part gets on trained models).
Correlations cannot tell one global flip, the symmetries of a grid (a mirrored or rotated layout is as smooth), nor
which channel of a pixel is which; scores are taken modulo those.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment, quadratic_assignment
from transformers import ViTForImageClassification

from ..cipher import BlockCipher
from .cipher_attacks import RecoveredTransform, ssim
from .model_attacks import Target, _embeddings

SIGN_NEIGHBOURS = 4  # strongest correlations per column and channel trusted for the relative flips (a pixel's 4)
ROTATIONS = 12  # spectral starts of the grid placement: the embedding turned by 180 / ROTATIONS degrees each
RANDOM_STARTS = 4
ADAPTIVE_RESTARTS = 64  # random starts of the adaptive attack's flip and placement searches


@dataclass(frozen=True)
class WeightsOnlyGuess:
    """The key's transform as guessed from the weights, in `BlockCipher`'s conventions, plus the grids it lives on.

    `pixel_cell[k]` is the in-block pixel (raster index on the M x M grid) guessed for keyed value k and
    `pixel_perm[k] = channel * M * M + pixel_cell[k]` with an arbitrary channel; `block_perm[n]` is the plain block
    guessed for keyed block n. The flips are relative: the complement of `flip_mask` is as likely.
    """

    pixel_perm: np.ndarray
    flip_mask: np.ndarray
    block_perm: np.ndarray
    block_size: int
    grid: tuple[int, int]

    @property
    def pixel_cell(self) -> np.ndarray:
        return self.pixel_perm % self.block_size**2

    def transform(self, cipher_like: BlockCipher) -> RecoveredTransform:
        """The guessed transform for images of `cipher_like`'s (public) geometry."""
        shape = (cipher_like.height, cipher_like.width, cipher_like.channels)
        return RecoveredTransform.from_block_parts(
            shape, cipher_like.block_size, self.pixel_perm, self.flip_mask, self.block_perm
        )


# -- the parts ----------------------------------------------------------------------------------------------------
def column_correlations(columns: np.ndarray) -> np.ndarray:
    """Pearson correlation between the columns of a (features, items) array, with a zero diagonal."""
    centred = columns - columns.mean(axis=0)
    unit = centred / np.linalg.norm(centred, axis=0).clip(1e-12)
    corr = unit.T @ unit
    np.fill_diagonal(corr, 0.0)
    return corr


def _strongest(weights: np.ndarray, k: int) -> np.ndarray:
    """Symmetric mask of each item's k largest entries of `weights` (an item and its k nearest, either way)."""
    k = min(k, len(weights) - 1)
    top = np.argpartition(-weights, k - 1, axis=1)[:, :k]
    mask = np.zeros(weights.shape, dtype=bool)
    mask[np.arange(len(weights))[:, None], top] = True
    return mask | mask.T


def recover_flips(columns: np.ndarray, neighbours: int = SIGN_NEIGHBOURS) -> np.ndarray:
    """Guess the negative-positive mask, up to one global flip, from (hidden, C*M*M) patch-embedding columns.

    Maximises the agreement s_i s_j corr_ij over each column's `neighbours` strongest correlations (where the sign is
    trustworthy; with C channels, about 5 C - 1 reach past the pixel's own channels to its 4 neighbours). Two starts,
    each refined by single flips while any helps; the better objective wins. The spectral start (the leading
    eigenvector of that signed graph) can settle with whole groups of columns flipped; the tree start follows the
    signs along the maximum spanning tree of |corr|, the most trustworthy chain to every column.
    """
    corr = column_correlations(columns)
    graph = np.where(_strongest(np.abs(corr), neighbours), corr, 0.0)
    spectral = np.where(np.linalg.eigh(graph)[1][:, -1] < 0, -1.0, 1.0)
    starts = (spectral, _signs_along_the_strongest_tree(corr))
    sign = max((_single_flips(graph, start) for start in starts), key=lambda s: s @ graph @ s)
    if (sign < 0).sum() > len(sign) / 2:  # report the orientation with fewer flips (either is as likely)
        sign = -sign
    return sign < 0


def _signs_along_the_strongest_tree(corr: np.ndarray) -> np.ndarray:
    """Relative signs read along the maximum spanning tree of |corr| (Prim's algorithm, grown from column 0)."""
    weight = np.abs(corr)
    sign, inside = np.ones(len(corr)), np.zeros(len(corr), dtype=bool)
    inside[0] = True
    best, parent = weight[0].copy(), np.zeros(len(corr), dtype=int)
    for _ in range(len(corr) - 1):
        node = int(np.where(inside, -np.inf, best).argmax())
        inside[node] = True
        sign[node] = sign[parent[node]] * (1.0 if corr[parent[node], node] >= 0 else -1.0)
        closer = ~inside & (weight[node] > best)
        best[closer], parent[closer] = weight[node][closer], node
    return sign


def _single_flips(graph: np.ndarray, sign: np.ndarray) -> np.ndarray:
    """Flip the column that disagrees most with its neighbours while that raises s' graph s."""
    sign = sign.copy()
    while True:
        support = sign * (graph @ sign)  # flipping i changes the objective by -4 support[i]
        worst = int(support.argmin())
        if support[worst] >= 0:
            return sign
        sign[worst] = -sign[worst]


def recover_flips_adaptive(
    columns: np.ndarray, neighbours: int = SIGN_NEIGHBOURS, restarts: int = ADAPTIVE_RESTARTS, seed: int = 0
) -> np.ndarray:
    """`recover_flips` for an attacker who knows that a large secret initialisation hides the key (docs/security.md).
    That random part adds noise to every correlation, enough to drown each column's few strongest ones, while the
    trained part still pulls all pairs of related columns the same way; so this maximises the agreement over every
    correlation (s' corr s): from the leading eigenvector of the whole correlation matrix, `recover_flips`' answer
    and `restarts` random signs, each refined by single flips; the best objective wins."""
    corr = column_correlations(columns)
    rng = np.random.default_rng(seed)
    dense = np.where(np.linalg.eigh(corr)[1][:, -1] < 0, -1.0, 1.0)
    sparse = np.where(recover_flips(columns, neighbours), -1.0, 1.0)
    starts = [dense, sparse, *(rng.choice([-1.0, 1.0], len(corr)) for _ in range(restarts))]
    sign = max((_single_flips(corr, start) for start in starts), key=lambda s: s @ corr @ s)
    if (sign < 0).sum() > len(sign) / 2:
        sign = -sign
    return sign < 0


def grid_symmetries(height: int, width: int) -> list[np.ndarray]:
    """The maps of raster cells of a height x width grid onto itself that keep neighbours neighbours: the 4 flips and
    rotations by 180 degrees of a rectangle, all 8 symmetries of a square. Entry [cell] is the image of `cell`."""
    r, c = np.indices((height, width))
    h, w = height - 1, width - 1
    maps = [(r, c), (r, w - c), (h - r, c), (h - r, w - c)]
    if height == width:
        maps += [(c, r), (c, h - r), (w - c, r), (w - c, h - r)]
    return [(rows * width + cols).ravel() for rows, cols in maps]


def _assign_min(cost: np.ndarray) -> np.ndarray:
    """For each row, its column in the cheapest one-to-one assignment."""
    rows, cols = linear_sum_assignment(cost)
    return cols[np.argsort(rows)]


def _spectral_starts(similarity: np.ndarray, coords: np.ndarray, slots: int) -> list[np.ndarray]:
    """Placements from a 2-D spectral embedding (Laplacian eigenmaps) of the graph of each item's strongest positive
    similarities (about its grid neighbours'; weak ones are mostly noise), turned by ROTATIONS angles (a square
    grid's two lowest modes are degenerate, so their mix is arbitrary), each matched to the grid by rank along its
    two axes."""
    affinity = np.where(_strongest(similarity, 5 * slots), similarity.clip(min=0), 0.0)
    degree = affinity.sum(axis=1).clip(1e-12)
    normalised = affinity / np.sqrt(degree[:, None] * degree[None, :])
    embedding = np.linalg.eigh(normalised)[1][:, -3:-1]  # the two modes after the constant one
    target = np.repeat(coords, slots, axis=0)
    spans = coords.max(axis=0).clip(min=1)
    starts = []
    for angle in np.arange(ROTATIONS) * np.pi / ROTATIONS:
        turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        turned = embedding @ turn
        ranks = turned.argsort(axis=0).argsort(axis=0) / max(len(turned) - 1, 1) * spans
        cost = ((ranks[:, None, :] - target[None, :, :]) ** 2).sum(axis=-1)
        starts.append(_assign_min(cost) // slots)
    return starts


def _objective(similarity: np.ndarray, kernel: np.ndarray, cell: np.ndarray) -> float:
    return float((similarity * kernel[cell][:, cell]).sum())


def _refine(similarity: np.ndarray, kernel: np.ndarray, cell: np.ndarray, slots: int) -> np.ndarray:
    """Climb the quadratic objective sum_ij S_ij K(cell_i, cell_j) from a placement: first move every item at once to
    the best slot given the others' cells (a linear assignment) while that helps, then swap the pair of items that
    helps most until no swap does."""
    best = _objective(similarity, kernel, cell)
    for _ in range(100):
        gain = np.repeat(similarity @ kernel[cell], slots, axis=1)  # [item, slot]: pull of its cell
        moved = _assign_min(-gain) // slots
        value = _objective(similarity, kernel, moved)
        if value <= best + 1e-12:
            break
        cell, best = moved, value
    cell = cell.copy()
    pull = similarity @ kernel[cell]  # [i, c] = sum_j S_ij K(c, cell_j)
    for _ in range(10 * len(cell)):
        # Half the change of the objective when items a and b swap cells.
        towards = pull[:, cell] - pull[np.arange(len(cell)), cell][:, None]
        own = np.diag(kernel)[cell]
        change = towards + towards.T - similarity * (own[:, None] + own[None, :] - 2 * kernel[cell][:, cell])
        a, b = np.unravel_index(int(change.argmax()), change.shape)
        if change[a, b] <= 1e-12:
            break
        pull += np.outer(similarity[:, a], kernel[cell[b]] - kernel[cell[a]])
        pull += np.outer(similarity[:, b], kernel[cell[a]] - kernel[cell[b]])
        cell[a], cell[b] = cell[b], cell[a]
    return cell


def distance_kernel(grid: tuple[int, int], width: float = 1.0) -> np.ndarray:
    """Gaussian of the distance between the cells of `grid` (cells x cells): how near two cells are."""
    coords = np.stack(np.indices(grid), axis=-1).reshape(-1, 2).astype(np.float64)
    return np.exp(-((coords[:, None] - coords[None]) ** 2).sum(axis=-1) / (2 * width**2))


def place_on_grid(
    similarity: np.ndarray,
    grid: tuple[int, int],
    slots: int = 1,
    template: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Place items on a grid of cells holding `slots` items each so that similar items are near: returns each item's
    raster cell. The layout is found up to the grid's symmetries (`grid_symmetries`).

    A quadratic assignment (maximise sum_ij S_ij K(cell_i, cell_j)), solved heuristically: spectral and random
    starts, each refined under a Gaussian kernel K of distance whose width shrinks from half the grid to one cell
    (coarse layout first, then neighbours), or under `template` (cells x cells) if given; the start that ends with
    the highest objective wins.
    """
    height, width = grid
    n = height * width * slots
    if similarity.shape != (n, n):
        raise ValueError(
            f"{n} items fill a {height}x{width} grid of {slots} slot(s); got similarities of shape {similarity.shape}."
        )
    similarity = similarity.copy()
    np.fill_diagonal(similarity, 0.0)
    coords = np.stack(np.indices(grid), axis=-1).reshape(-1, 2).astype(np.float64)
    widths = np.geomspace(max(max(grid) / 2, 1.0), 1.0, 4)
    kernels = [distance_kernel(grid, w) for w in widths] if template is None else [template]
    rng = np.random.default_rng(seed)
    starts = _spectral_starts(similarity, coords, slots) + [rng.permutation(n) // slots for _ in range(RANDOM_STARTS)]
    best, best_value = None, -np.inf
    for cell in starts:
        for kernel in kernels:
            cell = _refine(similarity, kernel, cell, slots)
        value = _objective(similarity, kernels[-1], cell)
        if value > best_value:
            best, best_value = cell, value
    return best


def place_on_grid_adaptive(
    similarity: np.ndarray,
    grid: tuple[int, int],
    slots: int = 1,
    template: np.ndarray | None = None,
    restarts: int = ADAPTIVE_RESTARTS,
    seed: int = 0,
) -> np.ndarray:
    """`place_on_grid` with a stronger search of the same objective (under the one-cell kernel, or `template`):
    its answer and `restarts` solutions of scipy's FAQ quadratic-assignment solver from random doubly stochastic
    starts, each refined by `_refine`'s moves and swaps; the highest objective wins."""
    kernel = distance_kernel(grid) if template is None else template
    similarity = similarity.copy()
    np.fill_diagonal(similarity, 0.0)
    slot_cells = np.repeat(np.arange(grid[0] * grid[1]), slots)
    slot_kernel = kernel[np.ix_(slot_cells, slot_cells)]  # between the slots the items are assigned to
    rng = np.random.default_rng(seed)
    candidates = [place_on_grid(similarity, grid, slots, template, seed)]
    for _ in range(restarts):
        solved = quadratic_assignment(
            similarity, slot_kernel, options={"maximize": True, "P0": "randomized", "rng": rng}
        )
        candidates.append(_refine(similarity, kernel, slot_cells[solved.col_ind], slots))
    return max(candidates, key=lambda cell: _objective(similarity, kernel, cell))


def _position_similarity(positions: np.ndarray) -> np.ndarray:
    """Cosine between (N, hidden) position rows after removing their mean, the part every position shares."""
    return column_correlations((positions - positions.mean(axis=0)).T)


def recover_in_block_layout(
    columns: np.ndarray,
    flip_mask: np.ndarray,
    block_size: int,
    template: np.ndarray | None = None,
    adaptive: bool = False,
) -> np.ndarray:
    """Guess each keyed value's in-block pixel from (hidden, C*M*M) columns and the guessed flips; returns
    `pixel_perm` in `BlockCipher`'s convention, the C values of one guessed pixel in arbitrary channel order.
    `template` (M*M, M*M): the similarity expected between pixels (`reference_templates`); default: falling with
    distance. `adaptive`: `place_on_grid_adaptive`'s search."""
    channels = columns.shape[1] // block_size**2
    signed = columns * np.where(flip_mask, -1.0, 1.0)
    place = place_on_grid_adaptive if adaptive else place_on_grid
    cell = place(column_correlations(signed), (block_size, block_size), channels, template)
    channel = np.empty_like(cell)
    for c in range(block_size**2):
        mine = np.flatnonzero(cell == c)
        channel[mine] = np.arange(len(mine))
    return channel * block_size**2 + cell


def recover_block_layout(
    positions: np.ndarray, grid: tuple[int, int], template: np.ndarray | None = None, adaptive: bool = False
) -> np.ndarray:
    """Guess each keyed block's plain block from the (N, hidden) position embeddings (without the CLS row).
    `template` (N, N): the similarity expected between blocks (`reference_templates`); default: falling with
    distance. `adaptive`: `place_on_grid_adaptive`'s search."""
    place = place_on_grid_adaptive if adaptive else place_on_grid
    return place(_position_similarity(positions), grid, template=template)


def _geometry(model: ViTForImageClassification) -> tuple[int, tuple[int, int], int]:
    """(block size, block grid, channels) from a ViT's public config."""
    config = model.config
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    block = config.patch_size
    return block, (height // block, width // block), config.num_channels


def reference_templates(reference: ViTForImageClassification) -> tuple[np.ndarray, np.ndarray]:
    """What a plain model of the same geometry, trained on similar images, expects: (pixel template (M*M, M*M), the
    mean correlation of its patch-embedding columns over channels, the same pixel's other channels on the diagonal;
    block template (N, N), the similarity of its position rows).

    An attacker can train such a model on public images of the same kind with the public recipe; the layout of
    these correlations (rings, rows, the wrap-around between a block's opposite edges) is what the keyed model's
    correlations are then matched to, instead of a bare "near is similar".
    """
    block, _, channels = _geometry(reference)
    columns, positions = _embeddings(reference)
    cells = block**2
    corr = column_correlations(columns).reshape(channels, cells, channels, cells)
    pixel = corr.sum(axis=(0, 2)) / channels**2
    same = np.einsum("aibi->i", corr) / max(channels * (channels - 1), 1)  # distinct channel pairs, zero diagonal
    np.fill_diagonal(pixel, same if channels > 1 else 1.0)
    blocks = _position_similarity(positions)
    np.fill_diagonal(blocks, 1.0)
    return pixel, blocks


def recover_key_from_weights_alone(
    model: ViTForImageClassification, reference: ViTForImageClassification | None = None, adaptive: bool = False
) -> WeightsOnlyGuess:
    """Guess the key's transform from a keyed ViT's patch and position embeddings alone (no key, no image, not the
    checkpoint it came from). Only the public config is read besides the two embeddings.

    `reference`: optionally, a plain ViT of the same geometry that the attacker trained on similar images; its
    correlations become the templates of the two jigsaws (`reference_templates`). `adaptive`: the attacker who knows
    the key-hiding initialisation (`recover_flips_adaptive`, `place_on_grid_adaptive`; seconds to minutes more).
    """
    columns, positions = _embeddings(model)
    block, grid, channels = _geometry(model)
    pixel_template = block_template = None
    if reference is not None:
        if _geometry(reference) != (block, grid, channels):
            raise ValueError(
                f"The reference model's geometry {_geometry(reference)} (block size, grid, channels) differs from the "
                f"keyed model's {(block, grid, channels)}; train the reference at the same image and patch size."
            )
        pixel_template, block_template = reference_templates(reference)
    neighbours = SIGN_NEIGHBOURS * channels + channels - 1
    flips = recover_flips_adaptive(columns, neighbours) if adaptive else recover_flips(columns, neighbours)
    return WeightsOnlyGuess(
        pixel_perm=recover_in_block_layout(columns, flips, block, pixel_template, adaptive),
        flip_mask=flips,
        block_perm=recover_block_layout(positions, grid, block_template, adaptive),
        block_size=block,
        grid=grid,
    )


# -- scoring against the true key ---------------------------------------------------------------------------------
def _best_symmetry(guess: np.ndarray, truth: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, float]:
    """The grid symmetry that puts most guessed cells on the true ones, and that share."""
    shares = [(float((g[guess] == truth).mean()), g) for g in grid_symmetries(*grid)]
    share, best = max(shares, key=lambda item: item[0])
    return best, share


def _neighbours_kept(guess: np.ndarray, truth: np.ndarray, grid: tuple[int, int]) -> float:
    """Share of pairs of items in 4-adjacent true cells that are 4-adjacent in the guess (any symmetry agrees)."""
    width = grid[1]
    row, col = truth // width, truth % width
    adjacent = np.abs(row[:, None] - row[None]) + np.abs(col[:, None] - col[None]) == 1
    g_row, g_col = guess // width, guess % width
    kept = np.abs(g_row[:, None] - g_row[None]) + np.abs(g_col[:, None] - g_col[None]) == 1
    return float((kept & adjacent).sum() / adjacent.sum()) if adjacent.any() else 1.0


def layout_objectives(
    model: ViTForImageClassification, guess: WeightsOnlyGuess, cipher: BlockCipher
) -> dict[str, float]:
    """The placement objective (under the one-cell distance kernel) of the true layouts and of the guessed ones, the
    pixels' with the guessed flips. Where the truth scores lower than the guess, no better search of this objective
    would find it: the correlations themselves do not single the true layout out."""
    columns, positions = _embeddings(model)
    block = cipher.block_size
    pixels = column_correlations(columns * np.where(guess.flip_mask, -1.0, 1.0))
    blocks = _position_similarity(positions)
    for similarity in (pixels, blocks):
        np.fill_diagonal(similarity, 0.0)
    pixel_kernel, block_kernel = distance_kernel((block, block)), distance_kernel(cipher.grid)
    return {
        "pixel_objective_true": _objective(pixels, pixel_kernel, cipher.pixel_perm % block**2),
        "pixel_objective_guess": _objective(pixels, pixel_kernel, guess.pixel_cell),
        "block_objective_true": _objective(blocks, block_kernel, cipher.block_perm),
        "block_objective_guess": _objective(blocks, block_kernel, guess.block_perm),
    }


def align_to_key(guess: WeightsOnlyGuess, cipher: BlockCipher) -> tuple[WeightsOnlyGuess, dict[str, float]]:
    """Score a guess against the true key, modulo what weights cannot tell, and return it so aligned.

    Scores: `flips_right` (share of the mask, taking the better global orientation), `pixels_in_place` (values whose
    guessed in-block pixel is the true one, under the best of the block's 8 symmetries), `blocks_in_place` (same for
    blocks, under the grid's symmetries), and the symmetry-free shares of true neighbours kept neighbours.
    """
    m2 = cipher.block_size**2
    match = float((guess.flip_mask == cipher.flip_mask).mean())
    flips = guess.flip_mask if match >= 0.5 else ~guess.flip_mask
    true_cell = cipher.pixel_perm % m2
    in_block = (cipher.block_size, cipher.block_size)
    pixel_map, pixels = _best_symmetry(guess.pixel_cell, true_cell, in_block)
    block_map, blocks = _best_symmetry(guess.block_perm, cipher.block_perm, cipher.grid)
    aligned = replace(
        guess,
        pixel_perm=guess.pixel_perm - guess.pixel_cell + pixel_map[guess.pixel_cell],
        flip_mask=flips,
        block_perm=block_map[guess.block_perm],
    )
    scores = {
        "flips_right": max(match, 1 - match),
        "pixels_in_place": pixels,
        "values_in_place": float((aligned.pixel_perm == cipher.pixel_perm).mean()),
        "blocks_in_place": blocks,
        "pixel_neighbours_kept": _neighbours_kept(guess.pixel_cell, true_cell, in_block),
        "block_neighbours_kept": _neighbours_kept(guess.block_perm, cipher.block_perm, cipher.grid),
    }
    return aligned, scores


def _random_guess_scores(cipher: BlockCipher, draws: int, seed: int) -> list[dict[str, float]]:
    """The scores of `align_to_key` for `draws` uniformly random guesses."""
    rng = np.random.default_rng(seed)
    return [
        align_to_key(
            WeightsOnlyGuess(
                pixel_perm=rng.permutation(cipher.block_dim),
                flip_mask=rng.random(cipher.block_dim) < 0.5,
                block_perm=rng.permutation(cipher.num_blocks),
                block_size=cipher.block_size,
                grid=cipher.grid,
            ),
            cipher,
        )[1]
        for _ in range(draws)
    ]


def chance_scores(cipher: BlockCipher, draws: int = 20, seed: int = 0) -> dict[str, float]:
    """The scores of `align_to_key` for uniformly random guesses (mean of `draws`): what a guess that learnt nothing
    gets, taking the best orientation and symmetries as the real guess does."""
    runs = _random_guess_scores(cipher, draws, seed)
    return {name: float(np.mean([run[name] for run in runs])) for name in runs[0]}


# -- the verdict: do the weights give the key away? ---------------------------------------------------------------
# The parts a guess must not recover above chance for the weights to be published: the flips (undoing them alone
# let a plain model read brain MRI decryptions) and the pixel layout. The block layout is reported, not judged: the
# position embeddings of every trained model measured keep some block adjacency (docs/security.md), and block
# scrambling is the step the cipher's own jigsaw attack already weakens.
JUDGED_SCORES = ("flips_right", "pixel_neighbours_kept")
LEAK_SIGMAS = 4.0  # a score counts as a leak this many standard deviations of random guesses above their mean


def leak_thresholds(cipher: BlockCipher, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """For each judged score, the mean of random guesses plus LEAK_SIGMAS of their standard deviations: above it, a
    guess learnt something (about 3 in 100,000 random guesses would, were their spread normal). Depends on the
    public geometry only, not on the key."""
    runs = _random_guess_scores(cipher, draws, seed)
    values = {name: np.array([run[name] for run in runs]) for name in JUDGED_SCORES}
    return {name: float(v.mean() + LEAK_SIGMAS * v.std()) for name, v in values.items()}


def weights_only_scores(model: ViTForImageClassification, cipher: BlockCipher) -> dict[str, Any]:
    """The guess from `model`'s weights alone scored against `cipher` (the model's key), with the chance scores, and
    no images: what a publisher with the key but without data can measure."""
    guess = recover_key_from_weights_alone(model)
    _, scores = align_to_key(guess, cipher)
    return {**scores, **{f"chance_{name}": value for name, value in chance_scores(cipher).items()}}


def weights_leak(scores: dict[str, Any], thresholds: dict[str, float]) -> list[str]:
    """The judged scores of a weights-only attack result that are above their `leak_thresholds`."""
    return [name for name in JUDGED_SCORES if scores[name] > thresholds[name]]


def weights_only_experiment(
    keyed: ViTForImageClassification,
    cipher: BlockCipher,
    unseen: np.ndarray,
    labels: torch.Tensor | None = None,
    plain: Target | None = None,
    batch_size: int = 64,
    reference: ViTForImageClassification | None = None,
    adaptive: bool = False,
) -> tuple[dict[str, Any], np.ndarray]:
    """Guess the key from `keyed`'s weights alone, score it against `cipher`, and decrypt the ciphertexts of the
    held-back uint8 images `unseen` (k, H, W, C) with the guess aligned to the key (`align_to_key`); `reference` and
    `adaptive` as for `recover_key_from_weights_alone`.

    Returns the scores (with `chance_scores` as `chance_<score>`), `layout_objectives`, the decryptions' mean SSIM (next
    to the ciphertexts' own, the level of no attack) and, with `plain` and `labels`, how recognisable they are: a plain
    model's accuracy on them, on the true images and on the ciphertexts (next to the majority class's share); and the
    decryptions themselves.
    """
    guess = recover_key_from_weights_alone(keyed, reference, adaptive)
    aligned, scores = align_to_key(guess, cipher)
    encrypted = cipher.encrypt(unseen)
    decrypted = aligned.transform(cipher).decrypt(encrypted)
    results: dict[str, Any] = {
        **scores,
        **layout_objectives(keyed, guess, cipher),
        **{f"chance_{name}": value for name, value in chance_scores(cipher).items()},
        "decrypted_ssim": float(np.mean([ssim(d, u) for d, u in zip(decrypted, unseen, strict=True)])),
        "encrypted_ssim": float(np.mean([ssim(e, u) for e, u in zip(encrypted, unseen, strict=True)])),
        "num_images": len(unseen),
        "adaptive": adaptive,
    }
    if plain is not None and labels is not None:
        for name, images in (("decrypted", decrypted), ("plain", unseen), ("encrypted", encrypted)):
            nchw = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
            results[f"recognised_{name}"] = plain.score(nchw, labels, batch_size)
        results["majority_class"] = float(torch.bincount(labels).max() / len(labels))
    return results, decrypted
