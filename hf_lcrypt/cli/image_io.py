"""Folder-to-folder image I/O for the command line: find images, plan outputs, read pixels, write PNGs atomically.

Ciphertexts must be stored losslessly (docs/lossless.md), so every output is a PNG, and an output file either is
complete or does not exist: it is written under a temporary name and renamed into place. 8-bit images are read as
RGB; 16-bit greyscale PNGs (medical scans) keep their 16 bits as one channel, never saturated to 8. Nothing is
altered without a word: EXIF orientation is applied, and animated or transparent images are refused by name.
"""

from __future__ import annotations

import os
import re
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, PngImagePlugin

from .. import png_metadata
from ..medical_io import MedicalOptions, MedicalReadError, image_names, is_medical, medical_info, read_medical

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
LOSSY_SUFFIXES = frozenset({".jpg", ".jpeg"})
# What reading a damaged or unsupported image raises (Pillow uses all of these).
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
# The library's image processor and dataset encryption resize bilinearly; the CLI does the same.
RESAMPLE = Image.Resampling.BILINEAR
# The temporary name `write_png` writes under; a run killed mid-write (SIGKILL, power loss) leaves one behind.
_DEBRIS = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}\.tmp")
# zlib finds little to compress in a ciphertext (values shuffled within blocks, blocks scrambled): on 224x224 brain
# MRI, level 1 makes files about 6% larger than Pillow's default level 6, in 2/3 of its time (scripts/bench_folder.py).
CIPHERTEXT_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class Job:
    """One output image: `index` is the frame (DICOM) or slice (NIfTI) of a medical file, None for PNG/JPEG."""

    source: Path
    target: Path
    index: int | None = None


def is_image_file(path: Path) -> bool:
    """PNG/JPEG by suffix; DICOM by content (with or without .dcm) and NIfTI (.nii, .nii.gz)."""
    return path.suffix.lower() in IMAGE_SUFFIXES or is_medical(path)


def medical_jobs(source: Path, folder: Path, medical: MedicalOptions) -> list[Job]:
    """One job per frame or slice, named after the file; an unreadable file gets one job whose check reports it."""
    try:
        names = image_names(source, medical_info(source, medical), medical)
    except MedicalReadError:
        return [Job(source, folder / f"{source.name}.png", 0)]
    return [Job(source, folder / f"{name}.png", index) for index, name in enumerate(names)]


def plan_jobs(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    overwrite: bool = False,
    resume: bool = False,
    medical: MedicalOptions | None = None,
) -> list[Job]:
    """Pair every image under `src` (a file, or a folder searched recursively) with a PNG path under `dst`.

    Everything that could make a run stop half-way is checked here, before any output is written: no images,
    `dst` inside `src`, two inputs with the same output name, outputs that exist (unless `overwrite`, or `resume`,
    which leaves it to the caller to verify and skip them).
    """
    src, dst = Path(src), Path(dst)
    medical = medical or MedicalOptions()
    if src.is_file() and src.suffix.lower() not in IMAGE_SUFFIXES and is_medical(src):
        jobs = medical_jobs(src, dst if dst.is_dir() or dst.suffix.lower() != ".png" else dst.parent, medical)
        if dst.suffix.lower() == ".png" and not dst.is_dir():
            if len(jobs) > 1:
                raise ValueError(f"{src} holds {len(jobs)} images (frames or slices): give an output folder.")
            jobs = [Job(src, dst, 0)]
    elif src.is_file():
        if src.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{src} is not a PNG, JPEG, DICOM or NIfTI file.")
        target = dst / f"{src.stem}.png" if dst.is_dir() else dst
        if target.suffix.lower() != ".png":
            raise ValueError(f"The output {target} must be a .png file: ciphertexts must be stored losslessly.")
        jobs = [Job(src, target)]
    elif src.is_dir():
        if dst.resolve().is_relative_to(src.resolve()):
            raise ValueError(f"The output folder {dst} must not be inside the input folder {src}.")
        if dst.is_file():
            raise ValueError(f"The input {src} is a folder, so the output {dst} must be a folder too, not a file.")
        found = sorted(p for p in src.rglob("*") if p.is_file())
        sources = [p for p in found if is_image_file(p)]
        chosen = set(sources)
        rest = [p for p in found if p not in chosen]
        # Only then: listing Pillow's formats imports every plugin it has (0.1 s of a run's start-up).
        other_images = set(Image.registered_extensions()) - IMAGE_SUFFIXES if rest else set()
        skipped = [p for p in rest if p.suffix.lower() in other_images]
        if not sources:
            also = f" ({len(skipped)} other image file(s), e.g. {skipped[0]}: convert them to PNG)" if skipped else ""
            raise ValueError(f"No PNG, JPEG, DICOM or NIfTI images under {src}{also}.")
        if skipped:
            warnings.warn(
                f"skipping {len(skipped)} image file(s) that are neither PNG, JPEG, DICOM nor NIfTI (convert them to "
                f"PNG to include them): {', '.join(map(str, skipped))}",
                stacklevel=2,
            )
        jobs = []
        for p in sources:
            if p.suffix.lower() in IMAGE_SUFFIXES:
                jobs.append(Job(p, dst / p.relative_to(src).with_suffix(".png")))
            else:
                jobs.extend(medical_jobs(p, dst / p.parent.relative_to(src), medical))
    else:
        raise FileNotFoundError(f"{src} does not exist.")

    seen: dict[Path, Path] = {}
    for job in jobs:
        if job.target.resolve() == job.source.resolve():
            raise ValueError(f"The output {job.target} would replace its own input.")
        if job.target in seen:
            raise ValueError(f"{seen[job.target]} and {job.source} would both be written to {job.target}.")
        seen[job.target] = job.source
    remove_debris(jobs)
    if not (overwrite or resume):
        existing = [job.target for job in jobs if job.target.exists()]
        if existing:
            more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
            raise FileExistsError(
                f"{existing[0]}{more} already exist(s); pass --resume to keep the complete ones and do the rest, or "
                "--force to overwrite."
            )
    return jobs


def remove_debris(jobs: list[Job]) -> int:
    """Remove the temporary files a killed run left next to these jobs' outputs (only names `write_png` makes for
    them); returns how many, after saying so."""
    wanted: dict[Path, set[str]] = {}
    for job in jobs:
        wanted.setdefault(job.target.parent, set()).add(job.target.name)
    removed = []
    for folder, names in wanted.items():
        if folder.is_dir():
            for entry in folder.iterdir():
                match = _DEBRIS.fullmatch(entry.name)
                if match and match["name"] in names and entry.is_file():
                    entry.unlink(missing_ok=True)
                    removed.append(entry)
    if removed:
        warnings.warn(
            f"removed {len(removed)} partial file(s) an interrupted run left behind, e.g. {removed[0]}", stacklevel=3
        )
    return len(removed)


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says: size (upright, as EXIF orientation turns it), bits per sample (8 or 16), the
    hf-lcrypt parameters if it has them, and the keyed tag of the file it was made from if it has one."""

    height: int
    width: int
    bits: int
    params: dict | None
    source: str | None = None


def _is_16_bit(image: Image.Image) -> bool:
    return image.mode.startswith("I;16") or any(";16" in str(tile.args) for tile in image.tile)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1: upright), read from the header: a PNG's eXIf chunk after its pixels (rare) would
    need the whole image decoded, which is left to `read_pixels`."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def _upright(image: Image.Image) -> Image.Image:
    """The image as it is meant to be seen: rotated or mirrored as its EXIF orientation says (a copy only then)."""
    return ImageOps.exif_transpose(image) if _orientation(image) not in (0, 1) else image


def _may_be_transparent(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def _refuse_altering(image: Image.Image, path: object, pixels: bool) -> None:
    """Refuse what reading as one RGB (or grey) image would drop without a word: frames after the first, and (with
    `pixels`, which decodes the image) transparent pixels, from an alpha channel or palette transparency."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise ValueError(
            f"{path} is animated ({frames} frames) and hf-lcrypt encrypts single images; extract the frames first "
            "(e.g. ffmpeg -i IN.png frame_%03d.png) or keep the one you need."
        )
    if pixels and _may_be_transparent(image) and image.convert("RGBA").getchannel("A").getextrema()[0] < 255:
        raise ValueError(
            f"{path} has transparent pixels (an alpha channel or palette transparency), which the RGB ciphertext "
            "cannot keep; flatten it onto the background you want first (e.g. magick IN.png -background black "
            "-flatten OUT.png)."
        )


def inspect_image(path: Path, check_data: bool = True) -> ImageInfo:
    """Read the header (and, for PNGs with `check_data`, check every chunk's CRC to the end of the file, which finds
    truncated and corrupt files before anything is written). 16-bit colour PNGs, animated and transparent images are
    refused: Pillow would read only their top 8 bits, first frame, or colours."""
    with Image.open(path) as image:
        bits = 16 if _is_16_bit(image) else 8
        if bits == 16 and not image.mode.startswith("I;16"):
            raise ValueError(
                f"{path} is a 16-bit colour PNG ({image.tile[0].args}), which hf-lcrypt cannot read at full depth. "
                "Convert it to 16-bit greyscale or to 8 bits first (e.g. ImageMagick: magick IN -depth 8 OUT.png)."
            )
        _refuse_altering(image, path, pixels=False)
        height, width = (image.width, image.height) if _orientation(image) in (5, 6, 7, 8) else image.size[::-1]
        params = png_metadata.decode(image.info, path)
        info = ImageInfo(height, width, bits, params, image.info.get(png_metadata.SOURCE_KEY))
        transparent = _may_be_transparent(image)
        if check_data and image.format == "PNG":
            image.verify()  # before decoding, which closes the file
    if transparent:
        with Image.open(path) as image:
            _refuse_altering(image, path, pixels=True)
    return info


def inspect_source(job: Job, medical: MedicalOptions) -> ImageInfo:
    """`inspect_image` for PNG/JPEG; for a DICOM frame or NIfTI slice, its size and bits (never its header)."""
    if job.index is None:
        return inspect_image(job.source)
    info = medical_info(job.source, medical)
    return ImageInfo(info.height, info.width, info.bits, None)


def read_source(
    job: Job, medical: MedicalOptions, size: tuple[int, int] | None = None, keep_16_bit: bool = True
) -> tuple[np.ndarray, int]:
    """`read_pixels` for PNG/JPEG; a DICOM frame or NIfTI slice through `medical`. Also returns the offset added
    to signed stored values (`--keep-bits`), 0 otherwise."""
    if job.index is None:
        return read_pixels(job.source, size, keep_16_bit), 0
    pixels, offset = read_medical(job.source, job.index, medical)
    return resize_pixels(pixels, size), offset


def resize_pixels(pixels: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """An (H, W, 3) uint8 or (H, W, 1) uint16 array resized bilinearly to `size` = (H, W), as `read_pixels` does."""
    if size is None or pixels.shape[:2] == size:
        return pixels
    if pixels.dtype == np.uint16:
        resized = Image.fromarray(pixels[:, :, 0].astype(np.float32), "F").resize((size[1], size[0]), RESAMPLE)
        return np.clip(np.rint(np.asarray(resized)), 0, 65535).astype(np.uint16)[:, :, None]
    return np.asarray(Image.fromarray(pixels).resize((size[1], size[0]), RESAMPLE))


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """16-bit samples to uint8 by linear min-max windowing over the image: its darkest value becomes 0, its brightest
    255 (a constant image becomes 0). The windowing `hf-lcrypt encrypt --to-8bit` applies."""
    values = pixels.astype(np.float64)
    lo, hi = float(values.min(initial=0)), float(values.max(initial=0))
    scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.rint(scaled).astype(np.uint8)


def read_pixels(path: Path, size: tuple[int, int] | None = None, keep_16_bit: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 for 8-bit images (palette, grey and RGBA all become RGB); (H, W, 1) uint16 for 16-bit greyscale
    PNGs, or their `to_8bit` windowing as RGB unless `keep_16_bit`. Resized bilinearly to `size` = (H, W) if given."""
    with Image.open(path) as image:
        deep = _is_16_bit(image)
        image = _upright(image)
        if deep:
            grey = resize_pixels(np.asarray(image, dtype=np.uint16)[:, :, None], size)[:, :, 0]
            if keep_16_bit:
                return grey[:, :, None]
            return np.repeat(to_8bit(grey)[:, :, None], 3, axis=2)
        rgb = image.convert("RGB")
    if size is not None and rgb.size != (size[1], size[0]):
        rgb = rgb.resize((size[1], size[0]), RESAMPLE)
    return np.asarray(rgb)


def write_png(
    pixels: np.ndarray,
    path: Path,
    overwrite: bool = False,
    params: dict | None = None,
    text: dict[str, str] | None = None,
    compress_level: int = 6,
) -> None:
    """Write an (H, W, 3) uint8 or (H, W, 1) uint16 image as PNG, with the hf-lcrypt parameters chunk if `params`
    (and the text chunks `text`): complete under its final name, or not there at all. `compress_level` is zlib's
    (lossless at every level; 6 is Pillow's default)."""
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists; pass --force to overwrite.")
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels[:, :, 0] if pixels.dtype == np.uint16 else pixels)
    pnginfo = None
    if params is not None or text:
        pnginfo = PngImagePlugin.PngInfo()
    if params is not None:
        pnginfo.add_text(png_metadata.CHUNK_KEY, png_metadata.encode(params))
    for name, value in (text or {}).items():
        pnginfo.add_text(name, value)
    # A hidden sibling (same file system, so the rename is atomic), created with the usual umask-based mode.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            image.save(f, format="PNG", pnginfo=pnginfo, compress_level=compress_level)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
