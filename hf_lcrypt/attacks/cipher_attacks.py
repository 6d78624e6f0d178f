"""Attacks on the cipher alone: classical cipher metrics and key-less privacy attacks (jigsaw, known plaintext).

The block-wise cipher is a keyed permutation with sign flips, not a diffusion cipher; these functions measure
what that does and does not hide. Images are numpy arrays (H,W,C) or (H,W) uint8, the layout `BlockCipher`
encrypts numpy arrays in. The attacks on models are in `model_attacks`, and `report` runs both for
`hf-lcrypt attack` (docs/security.md).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..cipher import ALL_STEPS, BLOCK_SCRAMBLE, NEGATIVE_POSITIVE, PIXEL_SHUFFLE, BlockCipher, size_pair
from ..keys import KEY_BYTES, LCryptKey


def progress(iterable: Iterable, desc: str) -> Iterable:
    """A progress bar on terminals only (tqdm's disable=None), cleared when done."""
    return tqdm(iterable, desc=desc, leave=False, disable=None, file=sys.stderr)


# -- classical image-encryption metrics ---------------------------------------------------------------------------


def _hwc(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.dtype != np.uint8:
        raise ValueError(
            f"Expected a uint8 image of shape (H,W,C) or (H,W), got {a.dtype} {a.shape}; use numpy.asarray(pil_image)."
        )
    return a


def _entropy_bits(counts: np.ndarray) -> np.ndarray:
    p = counts / counts.sum(axis=-1, keepdims=True)
    return -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=-1)


def histogram_entropy(img: np.ndarray) -> dict[str, Any]:
    """Shannon entropy (bits, at most 8) of the 256-bin histogram, per channel and of all values together.

    Permutations leave the overall histogram unchanged (pixel shuffling mixes the channels' histograms); sign flips
    blend it with its mirror image, raising the entropy somewhat. Expect ciphertext entropy near the plain image's
    (brain MRI: about 6.8 -> 7.6 bits), not the 8 bits of a diffusion cipher.
    """
    a = _hwc(img)
    channels = a.shape[2]
    counts = np.bincount((a + (256 * np.arange(channels)).astype(np.int64)).ravel(), minlength=256 * channels)
    counts = counts.reshape(channels, 256)
    return {
        "overall": float(_entropy_bits(counts.sum(axis=0))),
        "per_channel": _entropy_bits(counts).tolist(),
    }


_SHIFTS = {"horizontal": (0, 1), "vertical": (1, 0), "diagonal": (1, 1)}


def adjacent_correlation(img: np.ndarray, direction: str = "horizontal") -> float:
    """Pearson correlation over all pairs of neighbouring values (same channel) in one direction."""
    if direction not in _SHIFTS:
        raise ValueError(f"direction must be one of {sorted(_SHIFTS)}, got {direction!r}.")
    a = _hwc(img).astype(np.float64)
    dy, dx = _SHIFTS[direction]
    h, w = a.shape[:2]
    first, second = a[: h - dy, : w - dx], a[dy:, dx:]
    return float(np.corrcoef(first.ravel(), second.ravel())[0, 1])


def npcr_uaci(c1: np.ndarray, c2: np.ndarray) -> tuple[float, float]:
    """NPCR (% of values that differ) and UACI (mean |c1-c2| / 255, in %) between two uint8 images."""
    a, b = np.asarray(c1), np.asarray(c2)
    if a.shape != b.shape:
        raise ValueError(f"The two images differ in shape: {a.shape} and {b.shape}.")
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return float((diff != 0).mean() * 100), float(diff.mean() / 255 * 100)


def differential_attack(
    cipher: BlockCipher, img: np.ndarray, position: tuple[int, int, int] | None = None
) -> dict[str, float]:
    """NPCR/UACI of the ciphertexts of two images differing in one value (row, col, channel; default the centre).

    The cipher moves values without mixing them, so a one-value change stays a one-value change: NPCR is
    100/(H*W*C) %, not the ~99.6 % of a diffusion cipher. That is by design (the ViT must see the same pixels).
    """
    a = _hwc(img)
    row, col, channel = position if position is not None else (a.shape[0] // 2, a.shape[1] // 2, 0)
    b = a.copy()
    b[row, col, channel] ^= 1
    npcr, uaci = npcr_uaci(cipher.encrypt(a), cipher.encrypt(b))
    return {"npcr": npcr, "uaci": uaci}


def key_sensitivity(key: LCryptKey, geometry: Mapping[str, Any], img: np.ndarray, bit: int = 0) -> dict[str, float]:
    """NPCR/UACI between the ciphertexts of one image under `key` and under `key` with one bit flipped.

    `geometry` holds `BlockCipher`'s other arguments (image_size, block_size, channels, steps); `cipher.describe()`
    works as is. The derived permutations and flip masks are independent, so the two ciphertexts agree only by
    chance: about 99.6 % of values differ for noise, and nearly as many for real images (brain MRI: 99.5 %).
    """
    if not 0 <= bit < 8 * KEY_BYTES:
        raise ValueError(f"bit must lie in [0, {8 * KEY_BYTES}), got {bit}.")
    kwargs = {k: geometry[k] for k in ("image_size", "block_size", "channels", "steps") if k in geometry}
    flipped = bytearray(key.to_bytes())
    flipped[bit // 8] ^= 1 << (bit % 8)
    a = _hwc(img)
    c1 = BlockCipher(key, **kwargs).encrypt(a)
    c2 = BlockCipher(LCryptKey(bytes(flipped)), **kwargs).encrypt(a)
    npcr, uaci = npcr_uaci(c1, c2)
    return {"npcr": npcr, "uaci": uaci}


def _log10_factorial(n: int) -> float:
    return math.lgamma(n + 1) / math.log(10)


def key_space_log10(
    image_size: int | tuple[int, int], block_size: int, channels: int = 3, steps: Iterable[str] = ALL_STEPS
) -> dict[str, float]:
    """log10 of the number of distinct image transforms, against the 256-bit key that selects one of them.

    transforms = (C*M*M)! [pixel shuffle] * 2^(C*M*M) [negative-positive] * N! [block scramble]. An attacker
    searches whichever space is smaller, so the effective key space is the minimum of the two.
    """
    height, width = size_pair(image_size)
    dim = channels * block_size**2
    blocks = (height // block_size) * (width // block_size)
    steps = set(steps)
    transforms = (
        (_log10_factorial(dim) if PIXEL_SHUFFLE in steps else 0.0)
        + (dim * math.log10(2) if NEGATIVE_POSITIVE in steps else 0.0)
        + (_log10_factorial(blocks) if BLOCK_SCRAMBLE in steps else 0.0)
    )
    key = 8 * KEY_BYTES * math.log10(2)
    return {"transforms_log10": transforms, "key_log10": key, "effective_log10": min(transforms, key)}


# -- image quality -----------------------------------------------------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1=0.01, K2=0.03, valid region, channel mean."""
    x, y = (torch.from_numpy(_hwc(v).astype(np.float64)).permute(2, 0, 1)[None] for v in (a, b))
    if x.shape != y.shape:
        raise ValueError(f"The two images differ in shape: {tuple(a.shape)} and {tuple(b.shape)}.")
    channels = x.shape[1]
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = (g / g.sum()).expand(channels, 1, 11)
    # The Gaussian window is separable: blur all five moment maps at once, columns then rows.
    moments = torch.cat([x, y, x * x, y * y, x * y])
    moments = F.conv2d(F.conv2d(moments, g[..., None], groups=channels), g[:, :, None], groups=channels)
    mu_x, mu_y, xx, yy, xy = moments
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float((num / den).mean())


# -- the ECB-like leak: one in-block transform for every block ---------------------------------------------------


def _block_rows(images: np.ndarray, block_size: int) -> np.ndarray:
    """(..., N, C*M*M): the blocks of uint8 images (..., H, W, C) as rows, values in the cipher's in-block order."""
    blocks = _to_blocks(images, block_size)
    return blocks.reshape(*blocks.shape[:-3], -1)


def repeated_blocks(encrypted: np.ndarray, block_size: int) -> float:
    """Share of an image's ciphertext blocks that equal another of its blocks.

    Every block goes through the same in-block transform, as in ECB mode, so equal plain blocks (the black
    background of an MRI slice) stay equal after encryption: their number tells the background's area, and with
    block scrambling off (or the jigsaw solved) their positions draw the outline of the body.
    """
    rows = _block_rows(_hwc(encrypted), block_size)
    _, inverse, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    return float((counts[inverse.ravel()] > 1).mean())


def flip_mask_from_ciphertext(encrypted: np.ndarray | Sequence[np.ndarray], block_size: int) -> np.ndarray:
    """Ciphertext-only guess of the negative-positive mask: a value is guessed flipped where its median over every
    block of the images is above 127.

    Every block shares the mask, so on images dominated by one dark level (the black background of brain MRI) the
    flipped in-block positions are mostly bright and the others mostly dark. On mostly bright images the guess is
    the mask's complement, which costs the attacker one more guess; on colourful images it is much weaker.
    """
    rows = _block_rows(np.stack([_hwc(v) for v in encrypted]), block_size)
    return np.median(rows.reshape(-1, rows.shape[-1]), axis=0) > 127


# -- jigsaw-puzzle solver (ciphertext only) against block scrambling ------------------------------------------------


def _to_blocks(x: np.ndarray, block_size: int) -> np.ndarray:
    """(..., H, W, C) -> (..., N, C, M, M): blocks in raster order, the cipher's in-block (c, row, col) order."""
    *lead, h, w, c = x.shape
    m = block_size
    if h % m or w % m:
        raise ValueError(f"Block size {m} does not divide the image size {h}x{w}.")
    b = x.reshape(*lead, h // m, m, w // m, m, c)
    n = len(lead)
    b = b.transpose(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    return b.reshape(*lead, (h // m) * (w // m), c, m, m)


def _from_blocks(blocks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Inverse of `_to_blocks` for one image: (N, C, M, M) -> (H, W, C)."""
    (gh, gw), (_, c, m, _) = grid, blocks.shape
    return blocks.reshape(gh, gw, c, m, m).transpose(0, 3, 1, 4, 2).reshape(gh * m, gw * m, c)


def _sq_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """All pairwise squared Euclidean distances between the rows of u and of v (flattened)."""
    u, v = u.reshape(len(u), -1), v.reshape(len(v), -1)
    d = (u * u).sum(1)[:, None] + (v * v).sum(1)[None, :] - 2 * u @ v.T
    return np.maximum(d, 0.0)


def _prediction_side(last: np.ndarray, prev: np.ndarray, facing: np.ndarray) -> np.ndarray:
    """[i, j]: squared error of block i's border extrapolated linearly one pixel on, against block j's facing line."""
    return _sq_distances(2 * last - prev, facing)


def _mgc_side(last: np.ndarray, prev: np.ndarray, facing: np.ndarray) -> np.ndarray:
    """[i, j]: Mahalanobis distance of the gradient across the edge from block i's gradients along it (Gallagher 2012).

    Lines are (N, C, M); the M positions along the edge are the samples of C-dimensional colour gradients. The sum
    over positions of (f_j - p_i)^T A_i (f_j - p_i) is expanded so that all pairs cost three matrix products.
    """
    n, c, m = last.shape
    grads = (last - prev).transpose(0, 2, 1)  # (N, M, C)
    mean = grads.mean(axis=1)
    centred = grads - mean[:, None]
    cov = centred.transpose(0, 2, 1) @ centred / max(m - 1, 1) + np.eye(c)  # the identity regularises flat edges
    inv = np.linalg.inv(cov)  # (N, C, C)
    pred = last.transpose(0, 2, 1) + mean[:, None]  # (N, M, C): where block i expects the facing line
    face = facing.transpose(0, 2, 1)
    inv_pred = np.einsum("icd,imd->imc", inv, pred)
    quadratic = inv.reshape(n, -1) @ np.einsum("jmc,jmd->jcd", face, face).reshape(n, -1).T
    cross = inv_pred.reshape(n, -1) @ face.reshape(n, -1).T
    return np.maximum(quadratic - 2 * cross + np.einsum("imc,imc->i", inv_pred, pred)[:, None], 0.0)


_EDGE_COSTS = {"mgc": _mgc_side, "prediction": _prediction_side}


def edge_dissimilarity(blocks: np.ndarray, method: str = "mgc") -> tuple[np.ndarray, np.ndarray]:
    """(right, below): right[i, j] is the cost of putting block j just right of block i, below[i, j] just below.

    Both methods check that the image continues smoothly across the edge, seen from each side: "mgc" (Mahalanobis
    gradient compatibility) is the stronger on texture such as histology, "prediction" (linear extrapolation) on
    images with large flat areas such as MRI. `blocks` is (N, C, M, M) float.
    """
    if method not in _EDGE_COSTS:
        raise ValueError(f"method must be one of {sorted(_EDGE_COSTS)}, got {method!r}.")
    if blocks.shape[-1] < 2:
        raise ValueError("Blocks need at least 2 pixels per side to measure gradients at their edges.")
    side = _EDGE_COSTS[method]

    def left_right(b: np.ndarray) -> np.ndarray:
        last, first = b[..., -1], b[..., 0]
        return side(last, b[..., -2], first) + side(first, b[..., 1], last).T

    return left_right(blocks), left_right(blocks.swapaxes(-1, -2))


def _confidence(cost: np.ndarray) -> np.ndarray:
    """Per row, how much the best candidate beats the runner-up: 1 - best/second (1 = unambiguous, 0 = a tie)."""
    two = np.partition(cost, 1, axis=1)[:, :2] if cost.shape[1] > 1 else np.c_[cost, np.full(len(cost), np.inf)]
    eps = 1e-6
    return 1 - (two[:, 0] + eps) / (two[:, 1] + eps)


def _mutual_ratio(cost: np.ndarray) -> np.ndarray:
    """cost[i, j] over the best alternative either side has; below 1 only when i and j prefer each other.

    Normalising by the alternatives (as Gallagher 2012 does) makes ambiguous pairs, like two flat black blocks,
    rank last however small their raw cost is.
    """
    n = len(cost)
    eps = 1e-6
    idx = np.arange(n)
    two = np.partition(cost, 1, axis=1)[:, :2]
    alt_row = np.where(idx[None, :] == cost.argmin(axis=1)[:, None], two[:, 1:], two[:, :1])
    two = np.partition(cost, 1, axis=0)[:2]
    alt_col = np.where(idx[:, None] == cost.argmin(axis=0)[None, :], two[1:], two[:1])
    return (cost + eps) / (np.minimum(alt_row, alt_col) + eps)


_STEP = np.array([[0, 1], [1, 0]])  # grid offset of block j from block i: j right of i, j below i


def _largest_cluster(
    right: np.ndarray, below: np.ndarray, grid: tuple[int, int], candidates: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Kruskal-style merging of block clusters along the most mutual edges, refusing overlaps or clusters larger
    than the grid; returns the largest cluster as (block ids, (row, col) offsets from its top-left).

    Only each block's few best candidates per side are considered, which keeps the loop over edges short.
    """
    n = len(right)
    ratio, rel, first, second = [], [], [], []
    for r, cost in enumerate((right, below)):
        mutual = _mutual_ratio(cost)
        k = min(candidates, n - 1)
        by_row = np.argpartition(mutual, k - 1, axis=1)[:, :k]
        by_col = np.argpartition(mutual, k - 1, axis=0)[:k].T
        i = np.concatenate([np.repeat(np.arange(n), k), by_col.ravel()])
        j = np.concatenate([by_row.ravel(), np.repeat(np.arange(n), k)])
        ratio.append(mutual[i, j])
        rel.append(np.full(i.size, r))
        first.append(i)
        second.append(j)
    ratio, rel, first, second = (np.concatenate(v) for v in (ratio, rel, first, second))
    _, keep = np.unique(rel * n * n + first * n + second, return_index=True)
    keep = keep[np.isfinite(ratio[keep])]
    keep = keep[np.argsort(ratio[keep], kind="stable")]

    label, pos = np.arange(n), np.zeros((n, 2), dtype=np.int64)
    for r, i, j in zip(rel[keep], first[keep], second[keep], strict=True):
        a, b = label[i], label[j]
        if a == b:
            continue
        in_b = label == b
        moved = pos[in_b] + (pos[i] + _STEP[r] - pos[j])
        merged = np.vstack([pos[label == a], moved])
        extent = merged.max(axis=0) - merged.min(axis=0) + 1
        codes = merged[:, 0] * (4 * n + 1) + merged[:, 1]
        if extent[0] > grid[0] or extent[1] > grid[1] or np.unique(codes).size < codes.size:
            continue
        pos[in_b] = moved
        label[in_b] = a
    members = np.flatnonzero(label == np.bincount(label).argmax())
    return members, pos[members] - pos[members].min(axis=0)


def _grow(
    right: np.ndarray, below: np.ndarray, grid: tuple[int, int], members: np.ndarray, offsets: np.ndarray
) -> np.ndarray:
    """Complete a placed cluster (block ids at (row, col) offsets) to the full grid, one most-confident block at a
    time; returns the (gh, gw) placement."""
    gh, gw = grid
    n = len(right)
    # Rows indexed by the neighbour's block id, giving the cost of every candidate; row -1 (no neighbour) costs 0.
    zero = np.zeros((1, n))
    given_left, given_right = np.vstack([right, zero]), np.vstack([right.T, zero])
    given_above, given_below = np.vstack([below, zero]), np.vstack([below.T, zero])
    canvas = np.full((2 * gh + 1, 2 * gw + 1), -1)  # a border of -1 keeps neighbour look-ups inside the array
    canvas[gh + offsets[:, 0], gw + offsets[:, 1]] = members
    used = np.zeros(n, dtype=bool)
    used[members] = True
    rows, cols = np.indices((2 * gh - 1, 2 * gw - 1))
    for _ in range(n - len(members)):
        inner = canvas[1:-1, 1:-1]
        left, right_nb, up, down = canvas[1:-1, :-2], canvas[1:-1, 2:], canvas[:-2, 1:-1], canvas[2:, 1:-1]
        placed_r, placed_c = np.nonzero(inner >= 0)
        fits = (
            (rows > placed_r.max() - gh)
            & (rows < placed_r.min() + gh)
            & (cols > placed_c.max() - gw)
            & (cols < placed_c.min() + gw)
        )
        cells = np.nonzero((inner < 0) & fits & ((left >= 0) | (right_nb >= 0) | (up >= 0) | (down >= 0)))
        cost = (
            given_left[left[cells]] + given_right[right_nb[cells]] + given_above[up[cells]] + given_below[down[cells]]
        )
        cost[:, used] = np.inf
        best_cell = int(_confidence(cost).argmax())
        block = int(cost[best_cell].argmin())
        canvas[cells[0][best_cell] + 1, cells[1][best_cell] + 1] = block
        used[block] = True
    placed_r, placed_c = np.nonzero(canvas >= 0)
    top, lft = placed_r.min(), placed_c.min()
    return canvas[top : top + gh, lft : lft + gw].copy()


def solve_jigsaw(encrypted: np.ndarray, block_size: int, method: str = "mgc") -> np.ndarray:
    """Reassemble scrambled blocks without the key; returns the (gh, gw) grid of ciphertext block indices.

    Two stages, grid size known: merge blocks into clusters along mutually preferred edges (`_largest_cluster`),
    then, from the largest cluster, greedily place the (free cell, unused block) whose fit to its placed neighbours
    beats the runner-up by the widest margin, on a canvas large enough for the grid to end up anywhere around it.
    """
    x = _hwc(encrypted).astype(np.float64)
    gh, gw = x.shape[0] // block_size, x.shape[1] // block_size
    blocks = _to_blocks(x, block_size)
    right, below = edge_dissimilarity(blocks, method)
    np.fill_diagonal(right, np.inf)
    np.fill_diagonal(below, np.inf)
    members, offsets = _largest_cluster(right, below, (gh, gw))
    return _grow(right, below, (gh, gw), members, offsets)


def assemble(encrypted: np.ndarray, placement: np.ndarray, block_size: int) -> np.ndarray:
    """The image whose block at grid cell (r, c) is ciphertext block placement[r, c]."""
    blocks = _to_blocks(_hwc(encrypted), block_size)
    return _from_blocks(blocks[placement.ravel()], placement.shape)


@dataclass(frozen=True, eq=False)
class JigsawReport:
    """A jigsaw attack's reconstruction and its scores against the true block positions and the plain image."""

    placement: np.ndarray  # (gh, gw) ciphertext block indices
    reconstruction: np.ndarray  # (H, W, C) uint8
    direct_comparison: float  # share of blocks at their true position
    neighbour_comparison: float  # share of adjacent pairs that are true neighbours
    ssim: float
    psnr: float

    def scores(self) -> dict[str, float]:
        return {
            "direct_comparison": self.direct_comparison,
            "neighbour_comparison": self.neighbour_comparison,
            "ssim": self.ssim,
            "psnr": self.psnr,
        }


def jigsaw_attack(cipher: BlockCipher, img: np.ndarray, method: str = "mgc") -> JigsawReport:
    """Encrypt `img`, solve the jigsaw from the ciphertext alone, and score the result with the key's ground truth.

    Works when blocks keep their inner structure (block scrambling only); with pixel shuffling the edges are
    meaningless and the placement is near chance, and the reconstruction stays scrambled inside each block anyway.
    """
    plain = _hwc(img)
    encrypted = cipher.encrypt(plain)
    placement = solve_jigsaw(encrypted, cipher.block_size, method)
    gh, gw = cipher.grid
    origin = cipher.block_perm[placement]  # plain grid position each placed block came from
    truth = np.arange(cipher.num_blocks).reshape(gh, gw)
    horizontal = (origin[:, 1:] == origin[:, :-1] + 1) & (origin[:, :-1] % gw != gw - 1)
    vertical = origin[1:, :] == origin[:-1, :] + gw
    reconstruction = assemble(encrypted, placement, cipher.block_size)
    return JigsawReport(
        placement=placement,
        reconstruction=reconstruction,
        direct_comparison=float((origin == truth).mean()),
        neighbour_comparison=float((horizontal.sum() + vertical.sum()) / (horizontal.size + vertical.size)),
        ssim=ssim(reconstruction, plain),
        psnr=psnr(reconstruction, plain),
    )


# -- known-plaintext attack ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class RecoveredTransform:
    """A cipher transform recovered without the key: encrypted[j] = flip[j] ? 255 - plain[index[j]] : plain[index[j]].

    Flat positions are over one (H, W, C) uint8 image. `ambiguous` counts ciphertext positions whose source the
    pairs could not single out (a tie broken arbitrarily); with 0 the transform is the cipher's exact transform.
    """

    index: np.ndarray  # int64 (H*W*C,)
    flip: np.ndarray  # bool (H*W*C,)
    shape: tuple[int, int, int]
    ambiguous: int

    @property
    def unique(self) -> bool:
        return self.ambiguous == 0

    @classmethod
    def from_block_parts(
        cls,
        shape: tuple[int, int, int],
        block_size: int,
        pixel_perm: np.ndarray,
        flip: np.ndarray,
        block_perm: np.ndarray,
        ambiguous: int = 0,
    ) -> RecoveredTransform:
        """The flat transform of a cipher given as its parts (as `BlockCipher` holds them): encrypted block n,
        value k = plain block block_perm[n], value pixel_perm[k], flipped where flip[k]."""
        positions = _to_blocks(np.arange(math.prod(shape)).reshape(shape), block_size).reshape(len(block_perm), -1)
        index = np.empty(positions.size, dtype=np.int64)
        index[positions.ravel()] = positions[block_perm][:, pixel_perm].ravel()
        flat_flip = np.empty(positions.size, dtype=bool)
        flat_flip[positions.ravel()] = np.broadcast_to(flip, positions.shape).ravel()
        return cls(index, flat_flip, tuple(shape), ambiguous)

    def _flat(self, x: np.ndarray) -> np.ndarray:
        a = np.asarray(x)
        if a.dtype != np.uint8 or a.shape[-3:] != self.shape:
            raise ValueError(f"Expected uint8 images of shape (..., {self.shape}), got {a.dtype} {a.shape}.")
        return a.reshape(-1, self.index.size)

    def encrypt(self, x: np.ndarray) -> np.ndarray:
        flat = self._flat(x)
        return (flat[:, self.index] ^ (self.flip * np.uint8(255))).reshape(np.shape(x))

    def decrypt(self, y: np.ndarray) -> np.ndarray:
        flat = self._flat(y)
        plain = np.zeros_like(flat)
        plain[:, self.index] = flat ^ (self.flip * np.uint8(255))
        return plain.reshape(np.shape(y))


def _match(
    plain_sig: np.ndarray, cipher_sig: np.ndarray, flipped_sig: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match each cipher row to a plain row with the same signature, or with its flipped signature.

    Returns (index, flip, candidates). Ties are broken as a bijection within each group of equal signatures, so
    the recovered map stays a permutation and is exact on every image that shares the tie.
    """
    n = len(cipher_sig)
    sigs = [plain_sig, cipher_sig] + ([flipped_sig] if flipped_sig is not None else [])
    _, ids = np.unique(np.concatenate(sigs).reshape(len(sigs) * n, -1), axis=0, return_inverse=True)
    ids = ids.reshape(len(sigs), n)
    groups = int(ids.max()) + 1
    counts = np.bincount(ids[0], minlength=groups)
    direct = counts[ids[1]]
    mirrored = counts[ids[2]] if flipped_sig is not None else np.zeros(n, dtype=np.int64)
    if ((direct + mirrored) == 0).any():
        raise ValueError("The pairs are not related by one transform of this cipher (some value has no source).")
    flip = direct == 0
    chosen = np.where(flip, ids[-1], ids[1])
    plain_by_group = np.argsort(ids[0], kind="stable")  # plain rows grouped by signature, in position order
    group_start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    chosen_start = np.concatenate([[0], np.cumsum(np.bincount(chosen, minlength=groups))[:-1]])
    order = np.argsort(chosen, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - chosen_start[chosen[order]]
    index = plain_by_group[group_start[chosen] + rank % counts[chosen]]
    return index, flip, direct + mirrored


def known_plaintext_attack(
    plains: np.ndarray | Sequence[np.ndarray], ciphers: np.ndarray | Sequence[np.ndarray], block_size: int | None = None
) -> RecoveredTransform:
    """Recover the transform from k (plain, encrypted) uint8 pairs of one geometry, (k, H, W, C) each.

    Without `block_size`, each ciphertext position is matched to the plain position whose k values agree (equal or
    255-complement): generic, needs enough pairs to tell every position apart. With `block_size` (public, it is the
    ViT patch size) the attack also uses the cipher's structure, one signed in-block permutation shared by all
    blocks plus a block permutation: in-block offsets are matched by their sorted values over blocks, then whole
    blocks, which usually pins everything down from a single pair.

    Some ambiguity no number of pairs removes: in greyscale images stored as RGB the three channels of a pixel are
    interchangeable, so the result is never `unique`, yet it decrypts every such image exactly.
    """
    p, c = np.stack([_hwc(v) for v in plains]), np.stack([_hwc(v) for v in ciphers])
    if p.shape != c.shape:
        raise ValueError(f"Plain and encrypted images differ in shape: {p.shape} and {c.shape}.")
    shape = p.shape[1:]
    if block_size is None:
        cols_p, cols_c = p.reshape(len(p), -1).T, c.reshape(len(c), -1).T
        index, flip, candidates = _match(cols_p, cols_c, 255 - cols_c)
        return RecoveredTransform(index, flip, shape, int((candidates > 1).sum()))

    dim = shape[2] * block_size**2
    pb, cb = (_to_blocks(v, block_size).reshape(len(v), -1, dim) for v in (p, c))  # (k, N, d)

    def offset_signature(v: np.ndarray) -> np.ndarray:
        """Per in-block offset, its values sorted over blocks, image by image: invariant to the block permutation."""
        return np.sort(v, axis=1).transpose(2, 0, 1).reshape(dim, -1)

    # 1. the in-block signed permutation, from offset signatures (a flipped offset has the complement's signature).
    perm, flip, cand_offsets = _match(offset_signature(pb), offset_signature(cb), offset_signature(255 - cb))
    unsigned = np.empty_like(cb)
    unsigned[:, :, perm] = cb ^ (flip * np.uint8(255))
    # 2. the block permutation, matching whole blocks once the in-block transform is undone.
    block_perm, _, cand_blocks = _match(pb.transpose(1, 0, 2), unsigned.transpose(1, 0, 2), None)
    ambiguous = int(((cand_blocks[:, None] > 1) | (cand_offsets[None, :] > 1)).sum())
    return RecoveredTransform.from_block_parts(shape, block_size, perm, flip, block_perm, ambiguous)


def smallest_known_plaintext(
    plains: Sequence[np.ndarray], ciphers: Sequence[np.ndarray], block_size: int | None = None
) -> tuple[int | None, RecoveredTransform]:
    """The fewest leading pairs that make the recovered transform unique (None if all of them do not), and it."""
    for k in range(1, len(plains) + 1):
        recovered = known_plaintext_attack(plains[:k], ciphers[:k], block_size)
        if recovered.unique:
            return k, recovered
    return None, recovered


def known_plaintext_experiment(
    cipher: BlockCipher, known: Sequence[np.ndarray], unseen: Sequence[np.ndarray], structured: bool = True
) -> dict[str, Any]:
    """Run the known-plaintext attack on `known` images, then decrypt the ciphertexts of `unseen` ones with the
    recovered transform: the fewest pairs needed (`k`, None if not unique with all), leftover ambiguity, and the
    share of unseen images decrypted bit-exactly with their mean SSIM.
    """
    known, unseen = np.stack([_hwc(v) for v in known]), np.stack([_hwc(v) for v in unseen])
    k, recovered = smallest_known_plaintext(known, cipher.encrypt(known), cipher.block_size if structured else None)
    decrypted = recovered.decrypt(cipher.encrypt(unseen))
    return {
        "k": k,
        "ambiguous": recovered.ambiguous,
        "unseen_exact": float(np.mean([np.array_equal(d, u) for d, u in zip(decrypted, unseen, strict=True)])),
        "unseen_ssim": float(np.mean([ssim(d, u) for d, u in zip(decrypted, unseen, strict=True)])),
    }
