"""Files per second of `hf-lcrypt encrypt` against plain transcoding, at 1 process and at all cores, on JPEG and on
DICOM, in one run.

Plain transcoding is the loop a user would write without hf-lcrypt: decode, resize to 224x224, encode as PNG (for
DICOM: read it with the same windowing hf-lcrypt applies). `hf-lcrypt encrypt` is timed as a command, start-up
included, which is also printed on its own. Targets: encrypt at least 0.8 of plain transcoding's rate per process,
and near-linear in processes.

Each rate is given in wall time and in CPU time (files per CPU-second, user + system, of every process that worked,
start-up included for encrypt): on a machine other work loads, wall time measures the other work too, while CPU time
still compares the two sides' own cost.

    python scripts/bench_folder.py [--images 200] [--processes N] [--jpegs DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
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


def clocks() -> tuple[float, float]:
    """Wall time, and the CPU time of this process and of its children that have ended."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter(), time.process_time() + children.ru_utime + children.ru_stime


def rates(files: int, start: tuple[float, float]) -> tuple[float, float]:
    """Files per second of wall time and per second of CPU time since `start`."""
    end = clocks()
    return files / (end[0] - start[0]), files / (end[1] - start[1])


def plain_rate(files: list[Path], processes: int, work: Path) -> tuple[float, float]:
    out = work / f"plain-{processes}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    jobs = [(path, out / f"{path.stem}.png") for path in files]
    start = clocks()
    if processes == 1:
        for job in jobs:
            plain_transcode(job)
    else:
        pool = multiprocessing.get_context("fork").Pool(processes)
        pool.map(plain_transcode, jobs, chunksize=max(1, len(jobs) // (4 * processes)))
        pool.close()
        pool.join()  # the workers' CPU time counts once they have ended
    return rates(len(files), start)


def encrypt_rate(folder: Path, key: Path, processes: int, work: Path) -> tuple[float, float]:
    out = work / f"enc-{processes}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "hf_lcrypt.cli", "encrypt", "--key-file", str(key), "--block-size", "16"]
    command += ["--image-size", str(SIZE), "--num-proc", str(processes), str(folder), str(out)]
    start = clocks()
    subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    return rates(sum(1 for _ in out.rglob("*.png")), start)


def startup_seconds(key: Path, work: Path) -> tuple[float, float]:
    """A one-image run at 1 process, in wall and CPU seconds: the command's fixed cost (imports, key) more than the
    image's."""
    one = work / "one"
    one.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(one / "a.png")
    wall, cpu = encrypt_rate(one, key, 1, work)
    return 1 / wall, 1 / cpu


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
        wall, cpu = startup_seconds(key, work)
        print(f"start-up of `hf-lcrypt encrypt` on one image: {wall:.2f} s wall, {cpu:.2f} s CPU")
        print(f"{args.images} files of each kind to {SIZE}x{SIZE} PNG, in files per second of wall time and per")
        print("CPU-second (start-up included for encrypt, not for the plain loop, which runs in this process)\n")
        print("| input | processes | plain files/s | encrypt files/s | encrypt / plain, wall | encrypt / plain, CPU |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name, folder in sets.items():
            files = sorted(folder.iterdir())
            plain_transcode((files[0], work / "warm-up.png"))  # the plain loop's imports (pydicom) are not timed
            walls = {}
            for processes in sorted({1, args.processes}):
                plain, encrypt = plain_rate(files, processes, work), encrypt_rate(folder, key, processes, work)
                walls[processes] = encrypt[0]
                print(
                    f"| {name} | {processes} | {plain[0]:.1f} | {encrypt[0]:.1f} | {encrypt[0] / plain[0]:.2f} | "
                    f"{encrypt[1] / plain[1]:.2f} |"
                )
            if args.processes > 1:
                print(f"| {name} | scaling {args.processes}/1, wall | | {walls[args.processes] / walls[1]:.2f}x | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
