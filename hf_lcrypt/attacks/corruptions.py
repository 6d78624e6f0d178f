"""Corruptions of ciphertexts for robustness checks (batched tensors (B,C,H,W), uint8 or float in [0,1]), and the
one table of corruption families and default strengths that the training callback and `hf-lcrypt attack` share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


def _draw(sampler: Callable[..., torch.Tensor], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Samples shaped like x, drawn on the generator's device so one CPU generator serves GPU batches too."""
    device = generator.device if generator is not None else x.device
    return sampler(x.shape, generator=generator, device=device).to(x.device)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} is a probability and must lie in [0, 1], got {value}.")


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add N(0, sigma^2) noise, sigma in [0,1] pixel units (uint8: sigma*255 levels, rounded), clamped to range."""
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma}.")
    noise = _draw(torch.randn, x, generator) * sigma
    if x.dtype == torch.uint8:
        return (x.float() + noise * 255).round_().clamp_(0, 255).to(torch.uint8)
    return (x + noise.to(x.dtype)).clamp(0, 1)


def _xor(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """XOR a uint8 mask into x; float pixels are quantised to 8 bits only where the mask touches them."""
    if x.dtype == torch.uint8:
        return x ^ mask
    if not x.is_floating_point():
        raise ValueError(f"Unsupported dtype {x.dtype}: use uint8 (0..255) or a float dtype with values in [0,1].")
    quantised = (x * 255).round().clamp(0, 255).to(torch.uint8)
    return torch.where(mask != 0, (quantised ^ mask).to(x.dtype) / 255, x)


def bit_flips(x: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each of the 8 bits of every pixel value independently with probability `rate` (a noisy channel)."""
    _check_fraction("rate", rate)
    mask = torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    for bit in range(8):
        mask |= (_draw(torch.rand, x, generator) < rate).to(torch.uint8) << bit
    return _xor(x, mask)


def msb_flips(x: torch.Tensor, rate: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip the most significant bit of a `rate` fraction of pixel values: the worst single-bit error per value."""
    _check_fraction("rate", rate)
    return _xor(x, (_draw(torch.rand, x, generator) < rate).to(torch.uint8) << 7)


Corruption = Callable[[torch.Tensor, float, torch.Generator | None], torch.Tensor]


@dataclass(frozen=True)
class Family:
    """A corruption family: how to apply it, the strengths checked by default, and its plot labels."""

    corrupt: Corruption
    strengths: tuple[float, ...]
    title: str
    xlabel: str


FAMILIES: dict[str, Family] = {
    "noise": Family(
        gaussian_noise, (0.02, 0.05, 0.1, 0.2), "Gaussian noise on the ciphertext", "noise sigma (pixel range 0..1)"
    ),
    "bitflip": Family(
        bit_flips, (0.001, 0.01, 0.05), "Random bit flips in the uint8 ciphertext", "bit-flip probability per bit"
    ),
    "msb": Family(
        msb_flips,
        (0.01, 0.05, 0.1),
        "Most significant bit flips in the uint8 ciphertext",
        "fraction of values with the MSB flipped",
    ),
}
DEFAULT_STRENGTHS: dict[str, tuple[float, ...]] = {name: family.strengths for name, family in FAMILIES.items()}
