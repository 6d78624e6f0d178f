"""Files per second of `hf-lcrypt encrypt` against plain transcoding, at 1 process and at all cores, on JPEG and on
DICOM, in one run.

Plain transcoding is the loop a user would write without hf-lcrypt: decode, resize to 224x224, encode as PNG (for
DICOM: read it with the same windowing hf-lcrypt applies). `hf-lcrypt encrypt` is timed as a command, start-up
included, which is also printed on its own. Targets: encrypt at least 0.8 of plain transcoding's rate per process,
and near-linear in processes.

    python scripts/bench_folder.py [--images 200] [--processes N] [--jpegs DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JPEGS = REPO_ROOT.parent / "shared" / "data" / "brain-tumor-mri"
SIZE = 224


def plain_transcode(job: tuple[Path, Path]) -> None:
    """The loop without hf-lcrypt: decode (DICOM through the same reader), resize, write a PNG."""
    path, target = job
    from hf_lcrypt.medical_io import MedicalOptions, is_medical, read_medical

    if path.suffix.lower() in (".jpg", ".jpeg", ".png") or not is_medical(path):
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    else:
        pixels, _ = read_medical(path, 0, MedicalOptions())
        rgb = Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    rgb.save(target, format="PNG")


def plain_rate(files: list[Path], processes: int, work: Path) -> float:
    out = work / f"plain-{processes}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    jobs = [(path, out / f"{path.stem}.png") for path in files]
    start = time.perf_counter()
    if processes == 1:
        for job in jobs:
            plain_transcode(job)
    else:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            pool.map(plain_transcode, jobs, chunksize=max(1, len(jobs) // (4 * processes)))
    return len(files) / (time.perf_counter() - start)


def encrypt_rate(folder: Path, key: Path, processes: int, work: Path) -> float:
    out = work / f"enc-{processes}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "hf_lcrypt.cli", "encrypt", "--key-file", str(key), "--block-size", "16"]
    command += ["--image-size", str(SIZE), "--num-proc", str(processes), str(folder), str(out)]
    start = time.perf_counter()
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    return sum(1 for _ in out.rglob("*.png")) / (time.perf_counter() - start)


def startup_seconds(key: Path, work: Path) -> float:
    """A one-image run at 1 process: the command's fixed cost (imports, key) more than the image's."""
    one = work / "one"
    one.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(one / "a.png")
    start = time.perf_counter()
    encrypt_rate(one, key, 1, work)
    return time.perf_counter() - start


def write_dicoms(folder: Path, count: int) -> None:
    """Signed 16-bit 512x512 CT slices with rescale and a window, as a PACS exports them (uncompressed)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = (np.hypot(*np.mgrid[-256:256, -256:256]) < 200) * 1000 + 24
    for i in range(count):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta, ds.SOPClassUID, ds.SOPInstanceUID = meta, CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
        ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, -1024, 40, 400
        ds.PixelData = (base + rng.integers(-50, 50, base.shape)).astype("<i2").tobytes()
        ds.save_as(folder / f"IM{i:05d}", enforce_file_format=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="files of each kind (default 200)")
    parser.add_argument("--processes", type=int, default=len(os.sched_getaffinity(0)), help="default: all cores")
    parser.add_argument("--jpegs", type=Path, default=DEFAULT_JPEGS, help="folder of JPEGs (default: brain MRI)")
    args = parser.parse_args()
    from hf_lcrypt.keys import LCryptKey

    with tempfile.TemporaryDirectory(prefix="bench-folder-") as tmp:
        work = Path(tmp)
        key = work / "k.key"
        LCryptKey.generate().save(key)
        jpegs = sorted(args.jpegs.rglob("*.jpg"))[: args.images]
        if not jpegs:
            print(f"no JPEGs under {args.jpegs}", file=sys.stderr)
            return 1
        sets = {"JPEG": work / "jpeg", "DICOM": work / "dicom"}
        sets["JPEG"].mkdir()
        for i, path in enumerate(jpegs):
            shutil.copy(path, sets["JPEG"] / f"{i:05d}.jpg")
        write_dicoms(sets["DICOM"], args.images)
        print(f"start-up of `hf-lcrypt encrypt` on one image: {startup_seconds(key, work):.2f} s")
        print(f"{args.images} files of each kind to {SIZE}x{SIZE} PNG; files/s (start-up included for encrypt)\n")
        print("| input | processes | plain transcoding | hf-lcrypt encrypt | encrypt / plain |")
        print("| --- | --- | --- | --- | --- |")
        for name, folder in sets.items():
            files = sorted(folder.iterdir())
            rates = {}
            for processes in sorted({1, args.processes}):
                plain, encrypt = plain_rate(files, processes, work), encrypt_rate(folder, key, processes, work)
                rates[processes] = encrypt
                print(f"| {name} | {processes} | {plain:.1f} | {encrypt:.1f} | {encrypt / plain:.2f} |")
            if args.processes > 1:
                print(f"| {name} | scaling {args.processes}/1 | | {rates[args.processes] / rates[1]:.2f}x | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
