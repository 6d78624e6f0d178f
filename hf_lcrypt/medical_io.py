"""Hospital images in: DICOM files and NIfTI volumes as the 8- or 16-bit pixels the cipher encrypts.

Data owner's side only (`hf-lcrypt encrypt`, `load_image_dataset`, `classify`); needs the `[medical]` extra
(pydicom 3 with the pylibjpeg decoders, nibabel). Intensities follow the DICOM standard's order: stored values, the
modality LUT (rescale slope/intercept, e.g. CT to Hounsfield units), then a VOI window (the file's own, one given,
a named preset or the full range) to 8 bits; MONOCHROME1 is inverted; colour is converted as pydicom does.
`keep_bits` keeps the stored values exactly instead, as 16-bit greyscale with the offset a signed image needs.

No header value leaves this module: outputs are named after files, and every message is written here from the
file's name and pixel-module facts (transfer syntax, photometric interpretation), never from patient or study tags.
pydicom's own warnings are silenced while reading, since they may quote any element's value, and its value
validation is off for hf-lcrypt's reads only (`dicom_reading`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".ima"})
NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Common CT windows (centre, width) in Hounsfield units.
PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40, 80),
    "subdural": (75, 215),
    "stroke": (32, 8),
    "soft-tissue": (40, 400),
    "mediastinum": (50, 350),
    "liver": (30, 150),
    "lung": (-600, 1500),
    "bone": (400, 1800),
}
AXES = ("axial", "coronal", "sagittal")
INSTALL = "pip install 'hf-lcrypt[medical]'"
# What decodes each family of compressed transfer syntaxes (pydicom's table of pixel data handlers).
DECODER_PACKAGES = {
    "JPEG-LS": "pylibjpeg pylibjpeg-libjpeg (or pyjpegls)",
    "JPEG 2000": "pylibjpeg pylibjpeg-openjpeg",
    "JPEG": "pylibjpeg pylibjpeg-libjpeg",
    "RLE": "pylibjpeg pylibjpeg-rle",
}
_DICOM_GROUPS = (b"\x02\x00", b"\x08\x00")  # a preamble-less file starts with its meta or identifying group


class MedicalReadError(ValueError):
    """A DICOM or NIfTI file hf-lcrypt cannot read; the message is one line and holds no header value."""


@dataclass(frozen=True)
class MedicalOptions:
    """How stored values become pixels. `window`: "file" (the file's first VOI window, or its `index`-th as
    "file:N", 1-based; the full range when it has none), "full", a preset name from PRESETS, or (centre, width).
    `keep_bits`: the exact stored values as 16-bit greyscale instead. `axis`: the NIfTI slicing axis."""

    window: str | tuple[float, float] = "file"
    keep_bits: bool = False
    axis: str = "axial"


@dataclass(frozen=True)
class MedicalInfo:
    """One file: how many images it gives (frames, or slices of each of `volumes` volumes), their size, and their
    bits per sample."""

    count: int
    height: int
    width: int
    bits: int
    volumes: int = 1


def parse_window(text: str) -> str | tuple[float, float]:
    """`--window`: file, file:N, full, a preset name, or CENTRE,WIDTH."""
    name = text.strip().lower().replace("_", "-").replace(" ", "-")
    if name in ("file", "full") or name in PRESETS:
        return name
    if name.startswith("file:") and name[5:].isdigit() and int(name[5:]) >= 1:
        return name
    try:
        centre, width = (float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(
            f"--window {text!r}: give file, file:N, full, CENTRE,WIDTH (e.g. 40,80) or a preset: {', '.join(PRESETS)}"
        ) from None
    if width <= 0:
        raise ValueError(f"--window {text!r}: the width must be positive.")
    return centre, width


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def is_dicom(path: Path) -> bool:
    """By content: the `DICM` marker after the 128-byte preamble; or a `.dcm` name, or a file that starts with a
    DICOM group 0002/0008 element (exports without a preamble)."""
    try:
        with open(path, "rb") as file:
            head = file.read(132)
    except OSError:
        return False
    if head[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES:
        return True
    return len(head) >= 132 and head[:2] in _DICOM_GROUPS and int.from_bytes(head[2:4], "little") < 0x200


def is_medical(path: Path) -> bool:
    return is_nifti(path) or is_dicom(path)


def stem(path: Path) -> str:
    """The file's name without .dcm/.nii/.nii.gz (output names come from file names, never from tags)."""
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *DICOM_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def image_names(path: Path, info: MedicalInfo, options: MedicalOptions) -> list[str]:
    """Output stems: the file's stem, plus `_frame007` (DICOM multi-frame) or `_axial042` (NIfTI slices;
    `_t002_axial042` in 4-D volumes)."""
    if info.count == 1 and not is_nifti(path):
        return [stem(path)]
    label = options.axis if is_nifti(path) else "frame"
    per_volume = info.count // info.volumes
    digits, volume_digits = max(3, len(str(per_volume - 1))), max(3, len(str(info.volumes - 1)))
    names = [f"{stem(path)}_{label}{i:0{digits}d}" for i in range(per_volume)]
    if info.volumes == 1:
        return names
    return [
        f"{stem(path)}_t{t:0{volume_digits}d}_{name[len(stem(path)) + 1 :]}"
        for t in range(info.volumes)
        for name in names
    ]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """pydicom's and nibabel's warnings and log lines off: they may quote any header element's value."""
    loggers = [logging.getLogger(name) for name in ("pydicom", "nibabel")]
    disabled = [logger.disabled for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.disabled = True
        try:
            yield
        finally:
            for logger, was in zip(loggers, disabled, strict=True):
                logger.disabled = was


# -- DICOM -----------------------------------------------------------------------------------------------------------
def _pydicom():
    try:
        import pydicom
    except ImportError:
        raise MedicalReadError(f"reading DICOM files needs pydicom: {INSTALL}") from None
    return pydicom


@contextlib.contextmanager
def dicom_reading() -> Iterator[None]:
    """Lenient and quiet while hf-lcrypt reads: values that break the standard (common in exports) read as they are,
    as viewers do, instead of warning with the value or raising. pydicom's setting is global, so it is restored after:
    a caller's own pydicom use keeps its validation. Elements are parsed at first access, so every access is inside."""
    _pydicom()
    from pydicom.config import disable_value_validation

    with disable_value_validation(), quiet():
        yield


@functools.lru_cache(maxsize=4)
def _dataset(path: Path, mtime: float):
    pydicom = _pydicom()
    try:  # inside `dicom_reading`, as everything that touches a dataset
        ds = pydicom.dcmread(path, force=True)
        ds.get("Rows"), ds.get("PhotometricInterpretation")  # parse the pixel module now, not at first use
    except Exception:
        raise MedicalReadError("is not a readable DICOM file (damaged, truncated or not DICOM)") from None
    if not any(name in ds for name in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise MedicalReadError("is a DICOM file without pixel data (e.g. a report or a truncated image)")
    if "TransferSyntaxUID" not in ds.file_meta:  # preamble-less files: pydicom guessed the encoding
        ds.file_meta.TransferSyntaxUID = (
            pydicom.uid.ImplicitVRLittleEndian if ds.is_implicit_VR else pydicom.uid.ExplicitVRLittleEndian
        )
    return ds


def _check_decoder(ds) -> None:
    from pydicom.pixels import get_decoder

    uid = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        name = uid if uid.name == uid else f"{uid.name} ({uid})"
        raise MedicalReadError(f"uses the transfer syntax {name}, which pydicom cannot decode") from None
    if not decoder.is_available:
        family = next((name for name in DECODER_PACKAGES if name in uid.name), "JPEG")
        raise MedicalReadError(
            f"uses the transfer syntax {uid.name}, and no installed package decodes it: {INSTALL} "
            f"(or pip install {DECODER_PACKAGES[family]})"
        )


def _photometric(ds) -> str:
    value = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    supported = ("MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT")
    if value not in supported:
        raise MedicalReadError(f"has the photometric interpretation {value[:16]!r}, which hf-lcrypt does not read")
    return value


@dicom_reading()
def dicom_info(path: Path, options: MedicalOptions) -> MedicalInfo:
    ds = _dataset(path, os.stat(path).st_mtime)
    _check_decoder(ds)
    colour = _photometric(ds) not in ("MONOCHROME1", "MONOCHROME2")
    if options.keep_bits:
        _check_keep_bits(ds, colour)
    return MedicalInfo(
        int(ds.get("NumberOfFrames") or 1), int(ds.Rows), int(ds.Columns), 16 if options.keep_bits else 8
    )


def _check_keep_bits(ds, colour: bool) -> None:
    if colour:
        raise MedicalReadError("is a colour image; --keep-bits keeps greyscale stored values only (leave it out)")
    if "PixelData" not in ds or int(ds.BitsStored) > 16:
        raise MedicalReadError("has more than 16 bits or float values per pixel, which --keep-bits cannot keep")


@functools.lru_cache(maxsize=1)
def _dicom_pixels(path: Path, mtime: float) -> np.ndarray:
    ds = _dataset(path, mtime)
    _check_decoder(ds)
    try:
        array = ds.pixel_array
    except Exception as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        raise MedicalReadError(f"has pixel data that cannot be decoded: {' '.join(lines)[:240]}") from None
    frames = int(ds.get("NumberOfFrames") or 1)
    return array if frames > 1 else array[None]  # (frames, H, W[, 3])


@dicom_reading()
def dicom_frame(path: Path, index: int, options: MedicalOptions) -> tuple[np.ndarray, int]:
    """Frame `index` as (H, W, 3) uint8, or with `options.keep_bits` (H, W, 1) uint16 stored values plus the offset
    added to make them unsigned (returned with them)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    mtime = os.stat(path).st_mtime
    ds = _dataset(path, mtime)
    photometric = _photometric(ds)
    stored = _dicom_pixels(path, mtime)[index]
    if options.keep_bits:
        _check_keep_bits(ds, photometric not in ("MONOCHROME1", "MONOCHROME2"))
        offset = 2 ** (int(ds.BitsStored) - 1) if int(ds.PixelRepresentation) == 1 else 0
        return (stored.astype(np.int32) + offset).astype(np.uint16)[:, :, None], offset
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds)  # some writers declare 16-bit LUTs whose entries fit in 8 bits
        return _scale(rgb, 0, 65535 if rgb.max(initial=0) > 255 else 255), 0
    if stored.ndim == 3:  # RGB; YBR already converted to RGB by pydicom
        return _scale(stored, 0, 2 ** int(ds.BitsStored) - 1), 0
    grey = _window(apply_modality_lut(stored, ds), ds, options.window)
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return np.repeat(grey[:, :, None], 3, axis=2), 0


def _window(values: np.ndarray, ds, window: str | tuple[float, float]) -> np.ndarray:
    """Modality values to uint8 through a VOI window, the standard's linear function unless the file says
    otherwise."""
    from pydicom.multival import MultiValue
    from pydicom.pixels import apply_voi_lut

    if isinstance(window, str) and window.startswith("file"):
        index = int(window[5:]) - 1 if ":" in window else 0
        has_lut = "VOILUTSequence" in ds and len(ds.VOILUTSequence) > index
        centres = ds.get("WindowCenter")
        count = 0 if centres is None else len(centres) if isinstance(centres, MultiValue) else 1
        if has_lut or count > index:
            out = apply_voi_lut(values, ds, index=index, prefer_lut=True)
            lo, hi = voi_output_range(ds, has_lut, index)
            return _scale(out, lo, hi)
        if index:
            raise MedicalReadError(f"has {count} VOI window(s), so --window {window} does not exist")
        window = "full"
    if window == "full":
        return _window_full(values)
    centre, width = PRESETS[window] if isinstance(window, str) else window
    return linear_window(values, centre, width)


def linear_window(values: np.ndarray, centre: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 (LINEAR) to 0..255."""
    values = np.asarray(values, dtype=np.float64)
    if width <= 1:
        return np.where(values > centre - 0.5, 255, 0).astype(np.uint8)
    scaled = ((values - (centre - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def voi_output_range(ds, has_lut: bool, index: int) -> tuple[float, float]:
    """The range pydicom's `apply_voi_lut` maps into (a LUT's output bits, else the modality output's range)."""
    if has_lut:
        return 0.0, float(2 ** int(ds.VOILUTSequence[index].LUTDescriptor[2]) - 1)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2 ** int(ds.BitsStored) - 1)
    else:
        lo, hi = float(-(2 ** (int(ds.BitsStored) - 1))), float(2 ** (int(ds.BitsStored) - 1) - 1)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * slope + intercept, hi * slope + intercept
    return lo, hi


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.asarray(values, dtype=np.float64) - lo) * (255.0 / (hi - lo))
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


# -- NIfTI -----------------------------------------------------------------------------------------------------------
def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise MedicalReadError(f"reading NIfTI files needs nibabel: {INSTALL}") from None
    return nibabel


@functools.lru_cache(maxsize=4)
def _volume(path: Path, mtime: float):
    nibabel = _nibabel()
    try:
        with quiet():
            image = nibabel.load(path)
        shape = image.shape
    except Exception:
        raise MedicalReadError("is not a readable NIfTI file (damaged, truncated or not NIfTI)") from None
    if len(shape) not in (3, 4):
        raise MedicalReadError(f"is a {len(shape)}-D image; hf-lcrypt slices 3-D and 4-D volumes")
    return image


@functools.lru_cache(maxsize=1)
def _voxels(path: Path, mtime: float, scaled: bool) -> np.ndarray:
    """The whole volume, read once for all its slices: scaled by scl_slope/scl_inter, or the stored integers."""
    proxy = _volume(path, mtime).dataobj
    try:
        with quiet():
            return np.asarray(proxy) if scaled else np.asarray(proxy.get_unscaled())
    except Exception:
        raise MedicalReadError("has voxel data that cannot be read (damaged or truncated)") from None


def _slice_axis(image, axis: str) -> int:
    """The voxel axis that runs along `axis` (axial: S-I, coronal: A-P, sagittal: L-R), from the affine."""
    codes = _nibabel().aff2axcodes(image.affine)
    wanted = {"axial": "SI", "coronal": "AP", "sagittal": "LR"}[axis]
    return next(i for i, code in enumerate(codes) if code in wanted)


def nifti_info(path: Path, options: MedicalOptions) -> MedicalInfo:
    image = _volume(path, os.stat(path).st_mtime)
    axis = _slice_axis(image, options.axis)
    rows, cols = (n for i, n in enumerate(image.shape[:3]) if i != axis)
    if options.keep_bits:
        _check_nifti_keep_bits(image)
    volumes = image.shape[3] if len(image.shape) == 4 else 1
    bits = 16 if options.keep_bits else 8
    return MedicalInfo(image.shape[axis] * volumes, cols, rows, bits, volumes)  # slices are shown rotated


def _check_nifti_keep_bits(image) -> None:
    dtype = image.get_data_dtype()
    if dtype.kind not in "iu" or dtype.itemsize > 2:
        raise MedicalReadError(f"stores {dtype.name} voxels; --keep-bits keeps integers of up to 16 bits only")


def nifti_slice(path: Path, index: int, options: MedicalOptions) -> tuple[np.ndarray, int]:
    """Slice `index` along `options.axis` (of the volumes one after the other in a 4-D file), rotated for display,
    as `dicom_frame` returns it."""
    image = _volume(path, os.stat(path).st_mtime)
    axis = _slice_axis(image, options.axis)
    volume, index = divmod(index, image.shape[axis])
    where = tuple(index if i == axis else slice(None) for i in range(3)) + (volume,) * (len(image.shape) - 3)
    if options.keep_bits:
        _check_nifti_keep_bits(image)
        dtype = image.get_data_dtype()
        stored = np.rot90(_voxels(path, os.stat(path).st_mtime, scaled=False)[where])
        offset = 2 ** (8 * dtype.itemsize - 1) if dtype.kind == "i" else 0
        return (stored.astype(np.int32) + offset).astype(np.uint16)[:, :, None], offset
    values = np.rot90(_voxels(path, os.stat(path).st_mtime, scaled=True)[where]).astype(np.float64)
    window = options.window
    if isinstance(window, str) and window.startswith("file"):
        low, high = float(image.header["cal_min"]), float(image.header["cal_max"])
        grey = linear_window(values, (low + high) / 2 + 0.5, high - low + 1) if high > low else _window_full(values)
    elif window == "full":
        grey = _window_full(values)
    else:
        centre, width = PRESETS[window] if isinstance(window, str) else window
        grey = linear_window(values, centre, width)
    return np.repeat(grey[:, :, None], 3, axis=2), 0


def _window_full(values: np.ndarray) -> np.ndarray:
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    return _scale(values, lo, hi) if hi > lo else np.zeros(values.shape, np.uint8)


# -- one entry point -------------------------------------------------------------------------------------------------
def medical_info(path: Path, options: MedicalOptions) -> MedicalInfo:
    """How many images `path` gives and their size; raises MedicalReadError (one line, no header value)."""
    return nifti_info(path, options) if is_nifti(path) else dicom_info(path, options)


def read_medical(path: Path, index: int, options: MedicalOptions) -> tuple[np.ndarray, int]:
    """Image `index` of `path`: (H, W, 3) uint8, or (H, W, 1) uint16 with `keep_bits`, and the offset added."""
    return nifti_slice(path, index, options) if is_nifti(path) else dicom_frame(path, index, options)


OFFSET_CHUNK = "hf-lcrypt-offset"


def stored_values(png: str | os.PathLike) -> np.ndarray:
    """The exact stored values of a `--keep-bits` image, from its decrypted 16-bit PNG: the pixels less the offset
    that made a signed image unsigned (recorded in the PNG's `hf-lcrypt-offset` chunk), as int32."""
    from PIL import Image

    with Image.open(png) as image:
        offset = int(image.info.get(OFFSET_CHUNK, 0))
        return np.asarray(image, dtype=np.int32) - offset


# -- images for datasets and classify --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MedicalImage:
    """One frame or slice of a DICOM or NIfTI file, named after the file (`scan.dcm`, `cine.dcm#frame007`)."""

    path: Path
    index: int
    name: str
    options: MedicalOptions = MedicalOptions()

    def to_pil(self):
        """As a PIL image: 8-bit RGB, or 16-bit greyscale with `keep_bits`."""
        from PIL import Image

        pixels, _ = read_medical(self.path, self.index, self.options)
        return Image.fromarray(pixels[:, :, 0] if pixels.dtype == np.uint16 else pixels)


def medical_images(path: str | os.PathLike, options: MedicalOptions | None = None) -> list[MedicalImage]:
    """The images of one file, one per frame or slice."""
    path, options = Path(path), options or MedicalOptions()
    info = medical_info(path, options)
    if info.count == 1 and not is_nifti(path):
        return [MedicalImage(path, 0, str(path), options)]
    names = image_names(path, info, options)
    return [MedicalImage(path, i, f"{path}#{name[len(stem(path)) + 1 :]}", options) for i, name in enumerate(names)]


def image_folder(root: Path, options: MedicalOptions | None = None):
    """An image folder holding DICOM or NIfTI files as a DatasetDict, laid out as `datasets`' imagefolder reads
    one (`CLASS/...` or `SPLIT/CLASS/...`, split folders train/validation/test): `image` (8-bit RGB, one row per
    frame or slice, with its PNG and JPEG neighbours) and a `label` ClassLabel. Unreadable files stop it with
    their name and one line."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as ImageFeature
    from PIL import Image

    splits = {"train", "validation", "valid", "val", "test"}
    tops = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    by_split = {p.name: p for p in tops if p.name in splits} or {"train": root}
    rename = {"valid": "validation", "val": "validation"}
    classes = sorted({c.name for folder in by_split.values() for c in folder.iterdir() if c.is_dir()})
    if not classes:
        raise ValueError(f"{root} has no class sub-folders: put each class's images in a folder named after it.")
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=classes)})
    result = {}
    for split, folder in by_split.items():
        images, labels = [], []
        for label, name in enumerate(classes):
            for path in sorted(p for p in (folder / name).rglob("*") if p.is_file()):
                try:
                    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
                        with Image.open(path) as opened:
                            images.append(opened.convert("RGB"))
                        labels.append(label)
                    elif is_medical(path):
                        for image in medical_images(path, options):
                            images.append(image.to_pil())
                            labels.append(label)
                except MedicalReadError as err:
                    raise MedicalReadError(f"{path}: {err}") from None
        result[rename.get(split, split)] = Dataset.from_dict({"image": images, "label": labels}, features=features)
    return DatasetDict(result)


def holds_medical(root: Path) -> bool:
    """Whether a folder tree holds any DICOM or NIfTI file (PNG and JPEG files are not opened)."""
    return any(
        p.is_file() and p.suffix.lower() not in (".png", ".jpg", ".jpeg") and is_medical(p) for p in root.rglob("*")
    )
