"""Augmentations that work on ciphertext, for a trainer who holds no key (docs/private-training.md).

The cipher maps each block of the plain image to a block of the ciphertext (`block_scramble`), permutes the values
inside it (`pixel_shuffle`) and turns some values x into 1 - x (`negative_positive`). Each operation here commutes with
that map, so applying it to a ciphertext gives exactly the ciphertext of the plain image augmented the same way (the
block map the key gives telling which plain blocks are meant); tests/test_ciphertext_augment.py checks each one:

- whole-block CutMix and erasing: a block is moved as a whole, so a set of ciphertext blocks is a set of plain blocks;
  erased blocks become mid-grey 0.5, which 1 - x keeps;
- contrast about mid-grey, 0.5 + a (x - 0.5): commutes with 1 - x and with every permutation;
- Gaussian noise: the cipher's signed permutation of i.i.d. Gaussian noise is i.i.d. Gaussian noise.

Shifts, flips and rotations move values across blocks and do not commute: the data owner makes those before
encryption (`plain_augment`, `hf-lcrypt encrypt-dataset --augment-copies`). Mixup
(`hf_lcrypt.training.transforms.Mixup`) also works on ciphertext.
The functions take pixel values in [0, 1] (`unit`); `CiphertextAugment` works on a processed batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

MID_GREY = 0.5


def expand_blocks(mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B, gh, gw) block mask -> (B, 1, H, W) pixel mask."""
    return mask.repeat_interleave(block_size, 1).repeat_interleave(block_size, 2).unsqueeze(1)


def erase_blocks(unit: torch.Tensor, mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """The blocks where `mask` (B, gh, gw) holds set to mid-grey."""
    return torch.where(expand_blocks(mask, block_size), torch.full_like(unit, MID_GREY), unit)


def mix_blocks(unit: torch.Tensor, partner: torch.Tensor, mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """The blocks where `mask` holds taken from `partner` (CutMix at block granularity)."""
    return torch.where(expand_blocks(mask, block_size), partner, unit)


def scale_contrast(unit: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Contrast about mid-grey by one factor per image: 0.5 + a (x - 0.5)."""
    return MID_GREY + factors.view(-1, 1, 1, 1).to(unit.dtype) * (unit - MID_GREY)


def random_block_mask(batch: int, grid: tuple[int, int], shares: torch.Tensor) -> torch.Tensor:
    """(B, gh, gw) masks holding round(share * blocks) randomly chosen blocks of each image."""
    n = grid[0] * grid[1]
    counts = (shares.clamp(0, 1) * n).round().long()
    ranks = torch.rand(batch, n).argsort(1).argsort(1)  # a random rank for every block
    return (ranks < counts.view(-1, 1)).view(batch, *grid)


@dataclass(frozen=True)
class CiphertextAugment:
    """The ciphertext augmentations of a training batch, after the processor (normalised pixel values) and before
    mixup: block CutMix (labels mixed by the share of blocks each image keeps), block erasing, contrast and noise.
    Draws from torch's RNG, which the Trainer seeds."""

    block_size: int
    image_mean: Sequence[float]
    image_std: Sequence[float]
    num_classes: int
    cutmix: float = 0.0  # Beta(alpha, alpha) of the kept share of blocks; 0: off
    erasing: float = 0.0  # probability that an image gets 2-25 % of its blocks erased
    contrast: float = 0.0  # factor drawn from [1 - contrast, 1 + contrast]
    noise: float = 0.0  # standard deviation, in [0, 1] pixel units

    @property
    def active(self) -> bool:
        return any((self.cutmix, self.erasing, self.contrast, self.noise))

    @property
    def mixes_labels(self) -> bool:
        return self.cutmix > 0

    def __call__(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pixels, labels = batch["pixel_values"], batch["labels"]
        shape = (1, -1, 1, 1)
        mean = torch.as_tensor(self.image_mean, dtype=pixels.dtype).view(shape)
        std = torch.as_tensor(self.image_std, dtype=pixels.dtype).view(shape)
        unit = pixels * std + mean
        n, grid = len(unit), (unit.shape[-2] // self.block_size, unit.shape[-1] // self.block_size)
        out = dict(batch)
        if self.cutmix > 0:
            keep = torch.distributions.Beta(self.cutmix, self.cutmix).sample((n,))
            mask = random_block_mask(n, grid, 1 - keep)
            partner = torch.randperm(n)
            unit = mix_blocks(unit, unit[partner], mask, self.block_size)
            kept = 1 - mask.flatten(1).float().mean(1, keepdim=True)
            targets = labels if labels.is_floating_point() else torch.nn.functional.one_hot(labels, self.num_classes)
            targets = targets.float()
            out["labels"] = kept * targets + (1 - kept) * targets[partner]
        if self.erasing > 0:
            chosen = torch.rand(n) < self.erasing
            shares = torch.empty(n).uniform_(0.02, 0.25) * chosen
            unit = erase_blocks(unit, random_block_mask(n, grid, shares), self.block_size)
        if self.contrast > 0:
            unit = scale_contrast(unit, torch.empty(n).uniform_(1 - self.contrast, 1 + self.contrast))
        if self.noise > 0:
            unit = unit + self.noise * torch.randn_like(unit)
        out["pixel_values"] = (unit - mean) / std
        return out
