"""Folding a cipher key into ViT weights (Kiya et al., arXiv 2207.05366), with the normalisation folded exactly.

The processor encrypts pixels in [0,1] and then normalises with (mean_k, std_k). For block value k the plain model
expected the normalised value of plain position p = perm[k]:

    x_norm[p] = (flip[k] + sign[k] * (mean_k[ch(k)] + std_k[ch(k)] * y_norm[k]) - mean_p[ch(p)]) / std_p[ch(p)]

with sign = -1 where flipped. That is x_norm = A y_norm + c with A a scaled signed permutation, so a patch
embedding (W, b) becomes (W A, b + W c) and gives identical tokens; scrambled blocks only reorder the tokens, so
the non-CLS position embeddings are gathered by the block permutation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .cipher import BlockCipher


@dataclass(frozen=True)
class FoldMap:
    """x_norm[perm[k]] = scale[k] * y_norm[k] + offset[perm[k]] inside a block; tokens gather by block_perm."""

    perm: np.ndarray
    scale: np.ndarray
    offset: np.ndarray
    block_perm: np.ndarray


def fold_map(
    cipher: BlockCipher,
    plain_mean: Sequence[float],
    plain_std: Sequence[float],
    keyed_mean: Sequence[float] | None = None,
    keyed_std: Sequence[float] | None = None,
) -> FoldMap:
    """The affine map from the keyed model's inputs to the plain model's inputs, block by block."""
    keyed_mean = plain_mean if keyed_mean is None else keyed_mean
    keyed_std = plain_std if keyed_std is None else keyed_std
    channels = cipher.channels
    named = {"image_mean": plain_mean, "image_std": plain_std, "keyed_mean": keyed_mean, "keyed_std": keyed_std}
    for name, values in named.items():
        if len(values) != channels:
            raise ValueError(f"{name} needs {channels} values (one per channel), got {list(values)}.")
    perm, flip = cipher.signed_permutation()
    channel = np.arange(cipher.block_dim) // cipher.block_size**2
    mean_p, std_p = np.asarray(plain_mean, dtype=np.float64), np.asarray(plain_std, dtype=np.float64)
    mean_k, std_k = np.asarray(keyed_mean, dtype=np.float64), np.asarray(keyed_std, dtype=np.float64)
    sign = np.where(flip, -1.0, 1.0)
    ch_k, ch_p = channel, channel[perm]
    scale = sign * std_k[ch_k] / std_p[ch_p]
    offset = np.empty(cipher.block_dim)
    offset[perm] = (flip + sign * mean_k[ch_k] - mean_p[ch_p]) / std_p[ch_p]
    return FoldMap(perm=perm, scale=scale, offset=offset, block_perm=cipher.block_perm.copy())


@torch.no_grad()
def apply_fold(projection: nn.Conv2d, position_embeddings: nn.Parameter, fmap: FoldMap, inverse: bool = False) -> None:
    """Fold (or, with `inverse`, unfold) a key into a patch projection and position embeddings, in place."""
    weight = projection.weight
    flat = weight.detach().to(torch.float64).reshape(weight.shape[0], -1)
    bias = (
        projection.bias.detach().to(torch.float64)
        if projection.bias is not None
        else torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    )
    perm = torch.from_numpy(fmap.perm).to(weight.device)
    scale = torch.from_numpy(fmap.scale).to(weight.device)
    offset = torch.from_numpy(fmap.offset).to(weight.device)
    block_perm = torch.from_numpy(fmap.block_perm).to(weight.device)
    pos = position_embeddings.detach()
    if not inverse:
        new_flat = flat[:, perm] * scale
        new_bias = bias + flat @ offset
        new_pos = torch.cat([pos[:, :1], pos[:, 1:][:, block_perm]], dim=1)
    else:
        new_flat = torch.empty_like(flat)
        new_flat[:, perm] = flat / scale
        new_bias = bias - new_flat @ offset
        new_pos = pos.clone()
        new_pos[:, 1 + block_perm] = pos[:, 1:]
    weight.copy_(new_flat.reshape(weight.shape).to(weight.dtype))
    if projection.bias is None:
        projection.bias = nn.Parameter(new_bias.to(weight.dtype))
    else:
        projection.bias.copy_(new_bias.to(projection.bias.dtype))
    position_embeddings.copy_(new_pos)
