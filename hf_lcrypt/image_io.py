"""Folder-to-folder image I/O for the command line: find images, plan outputs, read RGB, write PNGs atomically.

Ciphertexts must be stored losslessly (docs/lossless.md), so every output is a PNG, and an output file either is
complete or does not exist: it is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
LOSSY_SUFFIXES = frozenset({".jpg", ".jpeg"})
# The library's image processor and dataset encryption resize bilinearly; the CLI does the same.
RESAMPLE = Image.Resampling.BILINEAR


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def plan_jobs(src: str | os.PathLike, dst: str | os.PathLike, overwrite: bool = False) -> list[Job]:
    """Pair every image under `src` (a file, or a folder searched recursively) with a PNG path under `dst`.

    Everything that could make a run stop half-way is checked here, before any output is written: no images,
    `dst` inside `src`, two inputs with the same output name, outputs that exist (unless `overwrite`).
    """
    src, dst = Path(src), Path(dst)
    if src.is_file():
        if src.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{src} is not a PNG or JPEG file.")
        target = dst / f"{src.stem}.png" if dst.is_dir() else dst
        if target.suffix.lower() != ".png":
            raise ValueError(f"The output {target} must be a .png file: ciphertexts must be stored losslessly.")
        jobs = [Job(src, target)]
    elif src.is_dir():
        if dst.resolve().is_relative_to(src.resolve()):
            raise ValueError(f"The output folder {dst} must not be inside the input folder {src}.")
        if dst.is_file():
            raise ValueError(f"The input {src} is a folder, so the output {dst} must be a folder too, not a file.")
        sources = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not sources:
            raise ValueError(f"No PNG or JPEG images under {src}.")
        jobs = [Job(p, dst / p.relative_to(src).with_suffix(".png")) for p in sources]
    else:
        raise FileNotFoundError(f"{src} does not exist.")

    seen: dict[Path, Path] = {}
    for job in jobs:
        if job.target.resolve() == job.source.resolve():
            raise ValueError(f"The output {job.target} would replace its own input.")
        if job.target in seen:
            raise ValueError(f"{seen[job.target]} and {job.source} would both be written to {job.target}.")
        seen[job.target] = job.source
    if not overwrite:
        existing = [job.target for job in jobs if job.target.exists()]
        if existing:
            more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
            raise FileExistsError(f"{existing[0]}{more} already exist(s); pass --force to overwrite.")
    return jobs


def image_shape(path: Path) -> tuple[int, int]:
    """(H, W) from the file header, without decoding the pixels."""
    with Image.open(path) as image:
        return image.height, image.width


def read_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 pixels; resized to `size` = (H, W) when given. Palette, grey and RGBA all become RGB."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), RESAMPLE)
    return np.asarray(rgb)


def write_png(pixels: np.ndarray, path: Path, overwrite: bool = False) -> None:
    """Write an (H, W, 3) uint8 image as PNG: complete under its final name, or not there at all."""
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; pass --force to overwrite.")
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling (same file system, so the rename is atomic), created with the usual umask-based mode.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            Image.fromarray(pixels).save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
