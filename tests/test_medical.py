"""DICOM and NIfTI in: real sample files against pydicom's own pipeline, exact --keep-bits round trips, bad files,
and no patient data in anything written or printed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT, SHARED_DATA
from helpers import run_cli as run
from PIL import Image

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402

from hf_lcrypt.medical_io import (  # noqa: E402
    MedicalOptions,
    MedicalReadError,
    linear_window,
    medical_info,
    read_medical,
    stored_values,
    voi_output_range,
)

SAMPLES = Path(os.environ.get("HF_LCRYPT_DICOM_SAMPLES", SHARED_DATA / "dicom-samples"))
SAMPLE_FILES = sorted(SAMPLES.glob("*.dcm")) if SAMPLES.is_dir() else []
# What the installed decoders cannot read, and why (the table in docs/reliability.md says the same).
REFUSED = {
    "emri_small_jpeg_2k_lossless_too_short.dcm": "without pixel data",
    "liver_deflate.dcm": "transfer syntax 1.2.840.10008.1.2.8.1",
    "liver_nonbyte_aligned_deflate.dcm": "transfer syntax 1.2.840.10008.1.2.8.1",
    "liver_rle.dcm": "cannot be decoded",
    "liver_nonbyte_aligned_rle.dcm": "cannot be decoded",
}
SENTINELS = ("ZZNAME", "ZZPID4711", "19010203", "19020304", "ZZHOSPITAL", "ZZACC99", "ZZPRIVATE", "ZZCREATOR")

needs_samples = pytest.mark.skipif(not SAMPLE_FILES, reason="../shared/data/dicom-samples is not present")


def reference(path: Path, index: int) -> np.ndarray:
    """The 8-bit image by pydicom's own functions: pixel_array (colour converted), the colour LUT, or the modality
    LUT then the VOI LUT or window (to its output range), else the full range; MONOCHROME1 inverted."""
    ds = pydicom.dcmread(path, force=True)
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if not ds.is_implicit_VR else "1.2.840.10008.1.2"
    frames = ds.pixel_array if int(ds.get("NumberOfFrames") or 1) > 1 else ds.pixel_array[None]
    stored, photometric = frames[index], ds.PhotometricInterpretation
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(stored, ds).astype(np.float64)
        return np.rint(rgb * 255 / (65535 if rgb.max() > 255 else 255)).astype(np.uint8)
    if stored.ndim == 3:
        return np.rint(stored.astype(np.float64) * 255 / (2**ds.BitsStored - 1)).astype(np.uint8)
    values = apply_modality_lut(stored, ds)
    has_lut = "VOILUTSequence" in ds
    if has_lut or "WindowCenter" in ds:
        lo, hi = voi_output_range(ds, has_lut, 0)
        values = apply_voi_lut(values, ds, prefer_lut=True)
    else:
        lo, hi = values.min(), values.max()
    values = values.astype(np.float64)
    grey = np.rint(np.clip((values - lo) * 255 / (hi - lo), 0, 255)).astype(np.uint8)
    return 255 - grey if photometric == "MONOCHROME1" else grey


@needs_samples
@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_every_sample_is_read_as_pydicom_reads_it_or_refused_in_one_line(path):
    options = MedicalOptions()
    if path.name in REFUSED:
        with pytest.raises(MedicalReadError) as err:
            info = medical_info(path, options)
            for index in range(info.count):
                read_medical(path, index, options)
        message = str(err.value)
        assert REFUSED[path.name] in message and "\n" not in message
        return
    info = medical_info(path, options)
    for index in sorted({0, info.count - 1}):
        pixels, offset = read_medical(path, index, options)
        assert pixels.dtype == np.uint8 and pixels.shape == (info.height, info.width, 3) and offset == 0
        expected = reference(path, index)
        expected = expected if expected.ndim == 3 else np.repeat(expected[:, :, None], 3, axis=2)
        assert np.abs(pixels.astype(int) - expected).max() <= 1, path.name


@needs_samples
@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: p.name)
def test_keep_bits_gives_pydicoms_stored_values_exactly(path):
    if path.name in REFUSED:
        pytest.skip("refused (see the other test)")
    ds = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    greyscale = ds.get("PhotometricInterpretation", "").startswith("MONOCHROME") and "BitsStored" in ds
    options = MedicalOptions(keep_bits=True)
    if not greyscale or int(ds.BitsStored) > 16:
        with pytest.raises(MedicalReadError, match="--keep-bits"):
            medical_info(path, options)
        return
    info = medical_info(path, options)
    pixels, offset = read_medical(path, info.count - 1, options)
    full = pydicom.dcmread(path, force=True).pixel_array
    stored = full[info.count - 1] if info.count > 1 else full
    assert pixels.dtype == np.uint16 and np.array_equal(pixels[:, :, 0].astype(np.int64) - offset, stored)


@needs_samples
def test_reliability_table_is_what_the_script_prints():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import dicom_reliability
    finally:
        sys.path.pop(0)
    doc = (REPO_ROOT / "docs" / "reliability.md").read_text()
    start = doc.index(dicom_reliability.BEGIN) + len(dicom_reliability.BEGIN)
    assert doc[start : doc.index(dicom_reliability.END)].strip() == dicom_reliability.table(SAMPLES)


# -- files written with pydicom -------------------------------------------------------------------------------------
def write_ct(path: Path, pixels: np.ndarray, with_phi: bool = True, preamble: bool = True) -> None:
    """A signed 12-bit CT with rescale to Hounsfield units, two windows and (with_phi) sentinel patient data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    if with_phi:
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "ZZNAME^Jane", "ZZPID4711", "19010203"
        ds.StudyDate, ds.InstitutionName, ds.AccessionNumber = "19020304", "ZZHOSPITAL", "ZZACC99"
        ds.private_block(0x0011, "ZZCREATOR", create=True).add_new(0x01, "LO", "ZZPRIVATE")
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.WindowCenter, ds.WindowWidth = [40, -600], [80, 1500]
    if pixels.ndim == 3:
        ds.NumberOfFrames = len(pixels)
    ds.PixelData = pixels.astype("<i2").tobytes()
    ds.save_as(path, enforce_file_format=preamble, implicit_vr=False, little_endian=True)


def ct_pixels(frames: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-2048, 2048, (frames, 32, 32)).squeeze(0 if frames == 1 else None)


def test_windows_presets_and_the_files_second_window(tmp_path):
    write_ct(tmp_path / "ct.dcm", stored := ct_pixels())
    hu = stored.astype(np.float64) - 1024
    for window, (centre, width) in {"file": (40, 80), "file:2": (-600, 1500), "bone": (400, 1800)}.items():
        pixels, _ = read_medical(tmp_path / "ct.dcm", 0, MedicalOptions(window=window))
        assert np.abs(pixels[:, :, 0].astype(int) - linear_window(hu, centre, width)).max() <= 1, window
    full, _ = read_medical(tmp_path / "ct.dcm", 0, MedicalOptions(window="full"))
    assert full.min() == 0 and full.max() == 255 and full[hu == hu.max()].min() == 255
    with pytest.raises(MedicalReadError, match="2 VOI window"):
        read_medical(tmp_path / "ct.dcm", 0, MedicalOptions(window="file:3"))


def test_lenient_reading_leaves_pydicoms_global_setting_as_it_was(tmp_path, monkeypatch):
    """Exports often break the standard (here a 20-character DS window centre): hf-lcrypt reads them leniently, but
    only in its own reads, also when one fails: the caller's strict setting is the same after, and still raises."""
    from pydicom import config

    write_ct(tmp_path / "ct.dcm", stored := ct_pixels())
    ds = pydicom.dcmread(tmp_path / "ct.dcm")
    with config.disable_value_validation():
        ds.WindowCenter = "40.00000000000000001"
        ds.save_as(tmp_path / "ct.dcm")
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    monkeypatch.setattr(config.settings, "_reading_validation_mode", config.RAISE)
    with pytest.raises(OverflowError, match="<= 16 characters"):
        pydicom.dcmread(tmp_path / "ct.dcm").WindowCenter  # noqa: B018 (parsed at first access)
    assert medical_info(tmp_path / "ct.dcm", MedicalOptions()).count == 1
    pixels, _ = read_medical(tmp_path / "ct.dcm", 0, MedicalOptions())
    expected = linear_window(stored.astype(np.float64) - 1024, 40, 80)
    assert np.abs(pixels[:, :, 0].astype(int) - expected).max() <= 1
    with pytest.raises(MedicalReadError, match="without pixel data"):
        medical_info(tmp_path / "nopixels.dcm", MedicalOptions())
    assert config.settings._reading_validation_mode == config.RAISE
    with pytest.raises(OverflowError, match="<= 16 characters"):
        pydicom.dcmread(tmp_path / "ct.dcm").WindowCenter  # noqa: B018
    monkeypatch.setattr(config.settings, "_reading_validation_mode", None)  # pydicom's default: not set
    read_medical(tmp_path / "ct.dcm", 0, MedicalOptions(window="bone"))
    assert config.settings._reading_validation_mode is None


def files_under(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob("*") if p.is_file()]


def assert_no_phi(texts: list[str], files: list[Path]) -> None:
    for sentinel in SENTINELS:
        for text in texts:
            assert sentinel not in text, f"{sentinel} printed"
        for path in files:
            assert sentinel.encode() not in path.read_bytes(), f"{sentinel} in {path}"


def test_encrypt_decrypt_keep_bits_round_trip_without_patient_data(cli_workdir, key_file, capsys, caplog):
    scans = cli_workdir / "scans"
    scans.mkdir()
    write_ct(scans / "ct.dcm", multi := ct_pixels(frames=3))
    write_ct(scans / "IM0001", single := ct_pixels(seed=1))  # no suffix: found by its DICM marker
    write_ct(scans / "nopreamble.dcm", ct_pixels(seed=2), preamble=False)
    write_ct(scans / "IM0002", ct_pixels(seed=4), preamble=False)  # neither: found by its first element's tag
    (scans / "broken.dcm").write_bytes((scans / "IM0001").read_bytes()[:900])  # header cut short
    (scans / "notes.txt").write_text("not an image")
    texts = []
    for keep in (False, True):
        out, plain = cli_workdir / f"enc{keep}", cli_workdir / f"dec{keep}"
        flags = ["--keep-bits"] if keep else []
        cipher = ["--key-file", key_file, "--block-size", "8"]
        rc, o, e = run(capsys, "encrypt", *cipher, *flags, "--skip-errors", scans, out)
        texts += [o, e]
        assert rc == 1 and "broken.dcm" in e and e.count("broken.dcm") == 1
        names = sorted(p.name for p in out.iterdir())
        expected = ["IM0001.png", "IM0002.png", "ct_frame000.png", "ct_frame001.png", "ct_frame002.png"]
        assert names == [*expected, "nopreamble.png"]
        rc, o, e = run(capsys, "decrypt", *cipher, out, plain)
        texts += [o, e]
        assert rc == 0
        if keep:
            with Image.open(out / "IM0001.png") as image:
                assert '"offset":2048' in image.info["hf-lcrypt"]
            assert np.array_equal(stored_values(plain / "IM0001.png"), single)
            for i in range(3):
                assert np.array_equal(stored_values(plain / f"ct_frame{i:03d}.png"), multi[i])
        else:
            expected, _ = read_medical(scans / "IM0001", 0, MedicalOptions())
            with Image.open(plain / "IM0001.png") as image:
                assert np.array_equal(np.asarray(image.convert("RGB")), expected)
    texts += [record.getMessage() for record in caplog.records]
    assert_no_phi(texts, [p for p in files_under(cli_workdir) if scans not in p.parents])


def test_bad_dicoms_each_get_one_line_and_skip_errors_completes_the_rest(cli_workdir, key_file, capsys, monkeypatch):
    scans = cli_workdir / "scans"
    scans.mkdir()
    write_ct(scans / "good.dcm", ct_pixels())
    write_ct(scans / "nopixels.dcm", ct_pixels(seed=3))
    ds = pydicom.dcmread(scans / "nopixels.dcm")
    del ds.PixelData
    ds.save_as(scans / "nopixels.dcm")
    ds = pydicom.dcmread(scans / "good.dcm")
    ds.PhotometricInterpretation = "HSV"
    ds.save_as(scans / "hsv.dcm")
    (scans / "truncated.dcm").write_bytes((scans / "good.dcm").read_bytes()[:1000])
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", "8", "--skip-errors", scans, "out")
    assert rc == 1 and sorted(p.name for p in Path("out").iterdir()) == ["good.png"]
    lines = [line for line in err.splitlines() if line.startswith("  ")]
    assert len(lines) == 3
    assert any("hsv.dcm" in line and "photometric interpretation 'HSV'" in line for line in lines)
    assert any("nopixels.dcm" in line and "without pixel data" in line for line in lines)
    assert any("truncated.dcm" in line for line in lines)
    # Without --skip-errors the first bad file stops the run with its one line, before anything is written.
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", "8", scans, "out2")
    assert rc == 1 and len(err.strip().splitlines()) == 1 and not Path("out2").exists()


def test_missing_decoder_names_the_transfer_syntax_and_the_package(cli_workdir, monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    ds = pydicom.dcmread(pydicom.examples.get_path("ct"))
    ds.compress("1.2.840.10008.1.2.5")  # RLE Lossless
    ds.save_as(cli_workdir / "rle.dcm")
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(MedicalReadError) as err:
        medical_info(cli_workdir / "rle.dcm", MedicalOptions())
    assert "RLE Lossless" in str(err.value) and "hf-lcrypt[medical]" in str(err.value)


def test_nibabel_volumes_give_one_image_per_slice(cli_workdir, key_file, capsys):
    from nibabel.testing import data_path

    data = Path(data_path)
    volume = nibabel.load(data / "anatomical.nii")
    values = np.asarray(volume.dataobj, dtype=np.float64)
    info = medical_info(data / "anatomical.nii", MedicalOptions())
    assert info.count == values.shape[2]  # axial: the third voxel axis of this RAS volume
    pixels, _ = read_medical(data / "anatomical.nii", 7, MedicalOptions(window="full"))
    expected = np.rot90(values[:, :, 7])
    lo, hi = expected.min(), expected.max()
    assert np.abs(pixels[:, :, 0].astype(int) - np.rint((expected - lo) * 255 / (hi - lo))).max() <= 1
    kept, offset = read_medical(data / "anatomical.nii", 7, MedicalOptions(keep_bits=True))
    assert np.array_equal(kept[:, :, 0].astype(int) - offset, np.rot90(volume.dataobj.get_unscaled()[:, :, 7]))
    sagittal = medical_info(data / "anatomical.nii", MedicalOptions(axis="sagittal"))
    assert sagittal.count == values.shape[0]
    four = nibabel.load(data / "example4d.nii.gz")  # (128, 96, 24, 2): two volumes of 24 axial slices
    info4 = medical_info(data / "example4d.nii.gz", MedicalOptions())
    assert (info4.count, info4.volumes) == (48, 2)
    last, _ = read_medical(data / "example4d.nii.gz", 47, MedicalOptions(window="full"))
    expected = np.rot90(np.asarray(four.dataobj, dtype=np.float64)[:, :, 23, 1])
    lo, hi = expected.min(), expected.max()
    assert np.abs(last[:, :, 0].astype(int) - np.rint((expected - lo) * 255 / (hi - lo))).max() <= 1
    with pytest.raises(MedicalReadError, match="2-D image"):
        medical_info(data / "row_major.dconn.nii", MedicalOptions())
    (cli_workdir / "vols").mkdir()
    shutil.copy(data / "anatomical.nii", cli_workdir / "vols" / "anat.nii")
    shutil.copy(data / "example4d.nii.gz", cli_workdir / "vols" / "fmri.nii.gz")
    rc, _, _ = run(capsys, "encrypt", "--key-file", key_file, "--block-size", "1", "--window", "full", "vols", "out")
    assert rc == 0 and len(list(Path("out").glob("anat_axial0*.png"))) == info.count
    assert Path("out/fmri_t001_axial023.png").is_file() and len(list(Path("out").glob("fmri_t*.png"))) == 48


def test_encrypt_does_not_import_pydicom_for_png_folders(cli_workdir):
    code = "import sys; from hf_lcrypt.cli import image_io; print('pydicom' in sys.modules, 'nibabel' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.slow
def test_dataset_train_and_classify_on_dicom_folders_leak_no_patient_data(tmp_path, capsys, caplog, monkeypatch):
    """A DICOM image folder (two classes, one multi-frame file) through load_image_dataset, a saved encrypted
    dataset, a tiny training run and `hf-lcrypt classify`: no sentinel in any byte written or line printed."""
    import logging

    from hf_lcrypt import BlockCipher, LCryptKey
    from hf_lcrypt.encrypted_datasets import encrypt_dataset, save_encrypted
    from hf_lcrypt.image_datasets import load_image_dataset
    from hf_lcrypt.training import RunArguments, run
    from hf_lcrypt.training.presets import register_model_preset, vit_preset

    caplog.set_level(logging.DEBUG)
    monkeypatch.chdir(tmp_path)
    images = tmp_path / "scans"
    for label, shift in (("normal", 0), ("tumour", 600)):
        (images / label).mkdir(parents=True)
        for i in range(6):
            write_ct(images / label / f"IM{i:04d}", ct_pixels(seed=i) // 4 + shift)
        write_ct(images / label / "cine.dcm", ct_pixels(frames=2, seed=9) // 4 + shift)
    dataset = load_image_dataset(images, val_fraction=0.25, test_fraction=0.25)
    assert sum(len(split) for split in dataset.values()) == 16 and dataset["train"].features["label"].names == [
        "normal",
        "tumour",
    ]
    key = LCryptKey.generate()
    key.save(tmp_path / "k.key")
    cipher = BlockCipher(key, 32, 8)
    save_encrypted(encrypt_dataset(dataset, cipher), tmp_path / "dataset", cipher)

    register_model_preset("test-medical-nano", vit_preset(hidden_size=32, layers=1, heads=2))
    settings = {
        "data": str(images),
        "model": "test-medical-nano",
        "image_size": 32,
        "block_size": 8,
        "per_device_train_batch_size": 4,
        "max_steps": 2,
        "eval_strategy": "no",
        "save_strategy": "no",
        "augment": False,
        "attack_max_images": 4,
        "output_dir": str(tmp_path / "run"),
        "key_file": str(tmp_path / "k.key"),
        "report_to": "none",
    }
    run(RunArguments.from_dict(settings))
    rc, out, err = run_classify(capsys, tmp_path / "run" / "model", images / "tumour")
    assert rc == 0 and out.count('"image"') == 8 and "cine.dcm#frame001" in out
    texts = [out, err, *capsys.readouterr(), *(record.getMessage() for record in caplog.records)]
    assert_no_phi(texts, [p for p in files_under(tmp_path) if images not in p.parents])


def run_classify(capsys, model: Path, folder: Path) -> tuple[int, str, str]:
    return run(capsys, "classify", "--model", model, "--key-file", "k.key", folder, "--json")
