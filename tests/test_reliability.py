"""Bad input at every door gets a clear error naming the problem and the fix, and nothing is lost or half-written.

One test (or more) per row of docs/reliability.md: 16-bit images, wrong key/block size/steps on decryption, a
processor of another key, already-rescaled floats, damaged files in folder runs, Ctrl-C and --resume, key files and
passphrases, publishing dry runs, and the command line's own options.
"""

from __future__ import annotations

import io
import json
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import IMAGENET_MEAN, IMAGENET_STD, tiny_vit
from helpers import run_cli as run
from PIL import Image, PngImagePlugin

from hf_lcrypt import BlockCipher, LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.cli import build_parser, image_io, main
from hf_lcrypt.cli.image_io import to_8bit
from hf_lcrypt.keys import KEY_ENV_VAR, MIN_PASSPHRASE_CHARS
from hf_lcrypt.png_metadata import CHUNK_KEY

pytestmark = pytest.mark.usefixtures("cli_workdir")


def files(folder: Path) -> list[str]:
    """Every file under `folder`, hidden temporaries included."""
    return sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())


def mri_16bit(path: Path, shape: tuple[int, int] = (32, 48), seed: int = 0) -> np.ndarray:
    """A 12-bit scan stored as a 16-bit greyscale PNG (max 3904, as the issue's MRI)."""
    pixels = np.random.default_rng(seed).integers(0, 3905, shape, dtype=np.uint16)
    pixels[0, 0] = 3904
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def rgb_images(root: Path, count: int = 4, shape: tuple[int, int] = (32, 48)) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = root / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def load(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


# -- 16-bit images -----------------------------------------------------------------------------------------------------
def test_16_bit_greyscale_keeps_its_depth_bit_exactly(capsys, key_file):
    plain = mri_16bit(Path("scans/mri.png"))
    common = ["--key-file", key_file, "--block-size", 8]
    assert run(capsys, "encrypt", *common, "scans", "enc")[0] == 0
    with Image.open("enc/mri.png") as image:
        assert image.mode == "I;16"
        params = json.loads(image.info[CHUNK_KEY])
        encrypted = np.asarray(image)
    assert params["bits"] == 16 and params["channels"] == 1 and params["key_id"] == LCryptKey.load(key_file).key_id
    cipher = BlockCipher(LCryptKey.load(key_file), (32, 48), 8, channels=1)
    np.testing.assert_array_equal(encrypted, cipher.encrypt(plain[:, :, None])[:, :, 0])
    assert encrypted.max() > 255  # not saturated: flipped values are 65535 - x
    assert run(capsys, "decrypt", *common, "enc", "dec")[0] == 0
    decrypted = load(Path("dec/mri.png"))
    assert decrypted.dtype == np.uint16
    np.testing.assert_array_equal(decrypted, plain)


def test_16_bit_to_8bit_uses_the_stated_windowing(capsys, key_file):
    plain = mri_16bit(Path("mri.png"))
    common = ["--key-file", key_file, "--block-size", 8, "--to-8bit"]
    assert run(capsys, "encrypt", *common, "mri.png", "enc.png")[0] == 0
    assert run(capsys, "decrypt", *common, "enc.png", "dec.png")[0] == 0
    decrypted = load(Path("dec.png"))
    windowed = np.round((plain - plain.min()) * (255 / (plain.max() - plain.min())))
    assert decrypted.shape == (32, 48, 3) and decrypted.min() == 0 and decrypted.max() == 255
    np.testing.assert_array_equal(decrypted[:, :, 0], windowed.astype(np.uint8))
    np.testing.assert_array_equal(to_8bit(plain), windowed.astype(np.uint8))


def test_16_bit_colour_png_is_refused_by_name(capsys, key_file):
    # Pillow reads a 16-bit RGB PNG as 8-bit RGB; write one by hand to check it is refused, not truncated.
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = np.random.default_rng(0).integers(0, 65536, (16, 16, 3)).astype(">u2")
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    Path("in").mkdir()
    Path("in/colour16.png").write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 16, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    rgb_images(Path("in"), 1, (16, 16))
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "in", "out")
    assert rc == 1 and "in/colour16.png" in err and "16-bit colour" in err and "Traceback" not in err
    assert not Path("out").exists()  # checked before the first write


def test_processor_refuses_16_bit_images_instead_of_saturating():
    processor = LCryptImageProcessor(image_size=32, block_size=8, key=LCryptKey.generate())
    deep = np.random.default_rng(0).integers(0, 3905, (32, 32), dtype=np.uint16)
    deep[0, 0] = 3904
    for image in (Image.fromarray(deep), deep, torch.from_numpy(deep.astype(np.int32))):
        with pytest.raises(ValueError, match="more than 8 bits") as err:
            processor(image, return_tensors="pt")
        assert "to_8bit" in str(err.value) and "do_rescale=False" in str(err.value)
    small = deep.clip(0, 255).astype(np.int64)  # integers that fit 8 bits are fine
    assert processor(np.stack([small] * 3, -1), return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)


# -- wrong key, block size or steps on decryption ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("key", "key_id"),
        (["--block-size", 16], "block_size 8 (expected 16)"),
        (["--steps", "block_scramble"], "steps"),
    ],
)
def test_decrypting_with_other_options_is_refused(capsys, key_file, change, expected):
    plain = rgb_images(Path("plain"))
    assert run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "plain", "enc")[0] == 0
    argv = ["--key-file", key_file, "--block-size", 8]
    if change == "key":
        assert run(capsys, "keygen", "other.key")[0] == 0
        argv[1] = "other.key"
    else:
        argv = [*argv[:2], *change] if change[0] == "--block-size" else [*argv, *change]
    rc, _, err = run(capsys, "decrypt", *argv, "enc", "dec")
    key_id = LCryptKey.load(key_file).key_id
    assert rc == 1 and expected in err and f"key_id {key_id}" in err and "--block-size 8" in err
    assert "enc/00.png" in err and not Path("dec").exists()
    assert all(p.exists() for p in plain)


def test_ciphertexts_without_parameters_still_decrypt_with_a_warning(capsys, key_file):
    key = LCryptKey.load(key_file)
    plain = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(BlockCipher(key, 16, 8).encrypt(plain)).save("old.png")  # no chunk: an older version's output
    rc, _, err = run(capsys, "decrypt", "--key-file", key_file, "--block-size", 8, "old.png", "dec.png")
    assert rc == 0 and "warning" in err and "no hf-lcrypt parameters" in err
    np.testing.assert_array_equal(load(Path("dec.png")), plain)


# -- the processor and the model ---------------------------------------------------------------------------------------
@pytest.fixture
def keyed_folder(tmp_path, seeded):
    key = LCryptKey.generate()
    keyed = LCryptViTForImageClassification.from_plain(
        tiny_vit(), key, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD
    ).eval()
    folder = tmp_path / "keyed"
    keyed.save_pretrained(folder)
    LCryptImageProcessor.for_model(keyed).save_pretrained(folder)  # saved without the key, as published
    return folder, key, keyed


def some_images(count: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]


def test_processor_of_another_key_is_refused_by_the_model(keyed_folder):
    from transformers import pipeline

    folder, key, keyed = keyed_folder
    other = LCryptImageProcessor.for_model(keyed.config, key_id=None, key=LCryptKey.generate())
    with pytest.raises(ValueError, match="key_id") as err, torch.no_grad():
        keyed(**other(some_images(), return_tensors="pt"))
    assert other.key_id in str(err.value) and keyed.config.key_id in str(err.value) and "chance" in str(err.value)
    classifier = pipeline("image-classification", model=str(folder), trust_remote_code=True, image_processor=other)
    with pytest.raises(ValueError, match="chance"):
        classifier(some_images(1))
    right = LCryptImageProcessor.for_model(keyed, key=key)
    classifier = pipeline("image-classification", model=str(folder), trust_remote_code=True, image_processor=right)
    assert len(classifier(some_images(3), batch_size=2)) == 3  # batched: one key_id per image, all matching


def test_pipeline_without_a_key_says_how_to_supply_it(keyed_folder):
    from transformers import pipeline

    folder, _, keyed = keyed_folder
    classifier = pipeline("image-classification", model=str(folder), trust_remote_code=True)
    with pytest.raises(ValueError) as err:
        classifier(some_images(1))
    message = str(err.value)
    for needle in (KEY_ENV_VAR, "image_processor=processor", "key='/path/to/secret.key'", keyed.config.key_id):
        assert needle in message


def test_encrypted_pngs_of_another_key_or_geometry_are_refused(tmp_path, capsys, key_file):
    key = LCryptKey.load(key_file)
    rgb_images(Path("plain"), 1, (32, 32))
    assert run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "plain", "enc")[0] == 0
    with Image.open("enc/00.png") as image:
        image.load()
        ours = LCryptImageProcessor(image_size=32, block_size=8, key=key)
        assert ours(image, do_encrypt=False, return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)
        other_key = LCryptImageProcessor(image_size=32, block_size=8, key=LCryptKey.generate())
        with pytest.raises(ValueError, match="key_id") as err:
            other_key(image, do_encrypt=False)
        assert key.key_id in str(err.value)
        other_size = LCryptImageProcessor(image_size=64, block_size=8, key=key)
        with pytest.raises(ValueError, match=r"image_size \[32, 32\] \(expected \[64, 64\]\)"):
            other_size(image, do_encrypt=False)
    # Without parameters, nothing tells a plain PNG (resized with do_encrypt=False by the attack suite) from an
    # unmarked ciphertext: processed without a word.
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save("bare.png")
    with Image.open("bare.png") as image, warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ours(image, do_encrypt=False, return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_floats_already_in_0_1_warn_before_a_second_rescale(kind):
    processor = LCryptImageProcessor(image_size=32, block_size=8, key=LCryptKey.generate())
    image = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    image = torch.from_numpy(image).permute(2, 0, 1) if kind == "torch" else image
    with pytest.warns(UserWarning, match="do_rescale=False"):
        processor(image, return_tensors="pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor(image, do_rescale=False, return_tensors="pt")
        processor(np.round(np.asarray(image) * 255), return_tensors="pt")  # 0..255 floats are rescaled, rightly


# -- folder runs -------------------------------------------------------------------------------------------------------
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_file_is_named_before_anything_is_written(capsys, key_file):
    paths = rgb_images(Path("plain"), 5)
    truncate(paths[2])
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "plain", "enc")
    assert rc == 1 and "plain/02.png" in err and "--skip-errors" in err and "Traceback" not in err
    assert not Path("enc").exists()


def test_a_truncated_jpeg_stops_the_run_by_name_with_complete_outputs(capsys, key_file):
    """A JPEG's damage shows only when it is decoded: the run stops there, and --resume does the rest once fixed."""
    rng = np.random.default_rng(0)
    Path("plain").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(f"plain/{i}.jpg")
    good = Path("plain/2.jpg").read_bytes()
    truncate(Path("plain/2.jpg"))
    args = ["encrypt", "--key-file", key_file, "--block-size", 8, "plain", "enc"]
    rc, _, err = run(capsys, *args)
    assert rc == 1 and "plain/2.jpg" in err and "2 output(s) written are complete" in err and "--resume" in err
    assert files(Path("enc")) == ["0.png", "1.png"]  # no temporary left behind
    Path("plain/2.jpg").write_bytes(good)
    assert run(capsys, *args, "--resume")[0] == 0 and files(Path("enc")) == ["0.png", "1.png", "2.png"]


def test_skip_errors_goes_on_and_lists_the_failures(capsys, key_file):
    paths = rgb_images(Path("plain"), 5)
    truncate(paths[1])
    paths[3].write_bytes(b"not a png at all")
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "--skip-errors", "plain", "enc")
    assert rc == 1 and "2 image(s) failed" in err and "plain/01.png" in err and "plain/03.png" in err
    assert files(Path("enc")) == ["00.png", "02.png", "04.png"]


@pytest.fixture
def stop_at_the_third_write(monkeypatch):
    """`stop_at_the_third_write(stop)`: a folder run's third image write first calls `stop` (Ctrl-C, a signal);
    `stop_at_the_third_write(None)`: writes go through again."""
    real_write = image_io.write_png

    def arm(stop: Callable[[], None] | None) -> None:
        calls = []

        def write(pixels, path, *rest, **kwargs):
            calls.append(path)
            if len(calls) == 3:
                stop()
            real_write(pixels, path, *rest, **kwargs)

        monkeypatch.setattr("hf_lcrypt.cli.folder_run.write_png", real_write if stop is None else write)

    return arm


def ctrl_c() -> None:
    raise KeyboardInterrupt


def test_ctrl_c_stops_cleanly_and_resume_finishes(capsys, key_file, stop_at_the_third_write):
    rgb_images(Path("plain"), 5)
    args = ["encrypt", "--key-file", key_file, "--block-size", 8, "--num-proc", 1, "plain", "enc"]
    stop_at_the_third_write(ctrl_c)
    rc, _, err = run(capsys, *args)
    assert rc == 130 and "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert files(Path("enc")) == ["00.png", "01.png"]  # complete files only, no temporaries
    stop_at_the_third_write(None)

    rc, _, err = run(capsys, *args)  # a plain rerun refuses, and says what to do
    assert rc == 1 and "--resume" in err and "--force" in err
    kept = Path("enc/00.png").stat().st_mtime_ns
    truncate(Path("enc/01.png"))  # a damaged output is redone, not kept
    rc, _, err = run(capsys, *args, "--resume")
    assert rc == 0 and "1 complete output(s) kept" in err
    assert Path("enc/00.png").stat().st_mtime_ns == kept
    assert files(Path("enc")) == [f"{i:02d}.png" for i in range(5)]
    assert run(capsys, "decrypt", "--key-file", key_file, "--block-size", 8, "enc", "dec")[0] == 0
    for i in range(5):
        np.testing.assert_array_equal(load(Path(f"dec/{i:02d}.png")), load(Path(f"plain/{i:02d}.png")))


def test_resume_does_not_keep_outputs_of_other_options(capsys, key_file):
    rgb_images(Path("plain"), 2)
    assert run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "plain", "enc")[0] == 0
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", 16, "--resume", "plain", "enc")
    assert rc == 0 and "kept" not in err
    with Image.open("enc/00.png") as image:
        assert json.loads(image.info[CHUNK_KEY])["block_size"] == 16


# -- keys and passphrases ----------------------------------------------------------------------------------------------
def test_a_mistyped_key_path_is_not_reported_as_bad_hex(capsys):
    with pytest.raises(FileNotFoundError, match="No key file at secret.kye") as err:
        LCryptKey.coerce("secret.kye")
    assert "hex digits" not in str(err.value)
    rgb_images(Path("plain"), 1)
    rc, _, err = run(capsys, "encrypt", "--key-file", "secret.kye", "--block-size", 8, "plain", "enc")
    assert rc == 1 and "No key file at secret.kye" in err and "check the path" in err


def test_a_folder_as_key_file(capsys):
    Path("keys").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        LCryptKey.load("keys")
    rc, _, err = run(capsys, "keygen", "keys")
    assert rc == 1 and "is a folder" in err and "Errno" not in err and files(Path("keys")) == []
    rgb_images(Path("plain"), 1)
    rc, _, err = run(capsys, "encrypt", "--key-file", "keys", "--block-size", 8, "plain", "enc")
    assert rc == 1 and "is a folder, not a key file" in err


def test_a_raw_binary_key_file_gets_a_conversion_hint(capsys):
    secret = bytes(range(200, 232))
    Path("raw.key").write_bytes(secret)
    os.chmod("raw.key", 0o600)
    with pytest.raises(ValueError, match="binary") as err:
        LCryptKey.load("raw.key")
    assert ".hex()" in str(err.value) and secret.hex() not in str(err.value)
    rgb_images(Path("plain"), 1)
    rc, _, err = run(capsys, "encrypt", "--key-file", "raw.key", "--block-size", 8, "plain", "enc")
    assert rc == 1 and "binary" in err and "UnicodeDecodeError" not in err and "codec" not in err


def test_keygen_refuses_to_overwrite_in_command_line_words(capsys, key_file):
    before = key_file.read_text()
    rc, _, err = run(capsys, "keygen", key_file)
    assert rc == 1 and "--force" in err and "overwrite=True" not in err
    assert key_file.read_text() == before


def test_a_key_file_open_to_others_warns(capsys, key_file):
    key_file.chmod(0o644)
    with pytest.warns(UserWarning, match="chmod 600"):
        LCryptKey.load(key_file)
    rgb_images(Path("plain"), 1)
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "plain", "enc")
    assert rc == 0 and "hf-lcrypt encrypt: warning:" in err and "0644" in err
    key_file.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LCryptKey.load(key_file)


def test_short_passphrases_are_refused_unless_allowed(capsys, monkeypatch):
    with pytest.raises(ValueError, match=f"minimum of {MIN_PASSPHRASE_CHARS}"):
        LCryptKey.from_passphrase("a")
    monkeypatch.setattr("sys.stdin", io.StringIO("a\n"))
    rc, _, err = run(capsys, "keygen", "--passphrase", "p.key")
    assert rc == 1 and "--allow-short-passphrase" in err and not Path("p.key").exists()
    monkeypatch.setattr("sys.stdin", io.StringIO("a\n"))
    rc, _, err = run(capsys, "keygen", "--passphrase", "--allow-short-passphrase", "p.key")
    assert rc == 0 and "warning" in err and stat.S_IMODE(Path("p.key").stat().st_mode) == 0o600
    with pytest.warns(UserWarning, match="minimum"):
        assert LCryptKey.load("p.key") == LCryptKey.from_passphrase("a", allow_short=True)


# -- command line options ----------------------------------------------------------------------------------------------
def test_repeated_steps_are_refused(capsys, key_file):
    rgb_images(Path("plain"), 1)
    with pytest.raises(SystemExit) as exit_:
        main(["encrypt", "--key-file", str(key_file), "--block-size", "8", "--steps", "pixel_shuffle,pixel_shuffle",
              "plain", "enc"])  # fmt: skip
    assert exit_.value.code == 2 and "named twice" in capsys.readouterr().err and not Path("enc").exists()
    with pytest.raises(ValueError, match="more than once"):
        BlockCipher(LCryptKey.generate(), 16, 8, steps=["block_scramble", "block_scramble"])


def test_key_file_is_optional_in_usage_and_asked_for_when_missing(capsys, key_file, monkeypatch):
    usage = build_parser()._subparsers._group_actions[0].choices["encrypt"].format_usage()
    assert "[--key-file K]" in usage
    rgb_images(Path("plain"), 1)
    with pytest.raises(SystemExit) as exit_:
        main(["encrypt", "--block-size", "8", "plain", "enc"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--key-file" in err and KEY_ENV_VAR in err
    monkeypatch.setenv(KEY_ENV_VAR, str(key_file))
    assert run(capsys, "encrypt", "--block-size", 8, "plain", "enc")[0] == 0


def test_help_points_to_docs_by_url_and_states_the_memory_bound():
    parser = build_parser()
    encrypt = parser._subparsers._group_actions[0].choices["encrypt"].format_help()
    for text in (parser.format_help(), encrypt):
        assert "https://github.com/hf-lcrypt/hf-lcrypt/blob/main/docs/" in text
        assert " docs/" not in text.replace("/blob/main/docs/", "")
    assert "Memory:" in encrypt and "x the decoded size" in encrypt.replace("\n", " ")


# -- publishing --------------------------------------------------------------------------------------------------------
def test_a_failed_dry_run_leaves_nothing_and_the_retry_works(tmp_path, monkeypatch, keyed_folder):
    from hf_lcrypt.hub import publish as publishing

    folder, key, _ = keyed_folder
    out = tmp_path / "dry"

    def failing_check(*args, **kwargs):
        raise RuntimeError("the fresh process failed")

    monkeypatch.setattr(publishing, "check_remote_load", failing_check)
    with pytest.raises(RuntimeError, match="fresh process"):
        publishing.publish_model(folder, "someone/model", key, dry_run_dir=out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".dry")]
    monkeypatch.setattr(publishing, "check_remote_load", lambda *args, **kwargs: 0.0)
    result = publishing.publish_model(folder, "someone/model", key, dry_run_dir=out)
    assert result.folder == out and (out / "README.md").is_file() and (out / "png_metadata.py").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".dry")]


# -- signals and debris ------------------------------------------------------------------------------------------------
def test_sigterm_stops_like_ctrl_c_and_a_rerun_removes_what_sigkill_left(capsys, key_file, stop_at_the_third_write):
    import signal
    import subprocess
    import sys

    rgb_images(Path("plain"), 5)
    args = ["encrypt", "--key-file", key_file, "--block-size", 8, "--num-proc", 1, "plain", "enc"]
    stop_at_the_third_write(lambda: os.kill(os.getpid(), signal.SIGTERM))  # what `docker stop` and systemd send
    rc, _, err = run(capsys, *args)
    assert rc == 128 + signal.SIGTERM and "stopped by SIGTERM" in err and "--resume" in err
    assert files(Path("enc")) == ["00.png", "01.png"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler does not outlive the run
    stop_at_the_third_write(None)

    # SIGKILL (the OOM killer) in the middle of a write leaves write_png's temporary file: make one for real.
    killed = (
        "import os, signal, numpy as np; from pathlib import Path; from PIL import Image\n"
        "from hf_lcrypt.cli import image_io\n"
        "def save(self, fp, format=None, **kw):\n"
        "    fp.write(b'half'); fp.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "Image.Image.save = save\n"
        "image_io.write_png(np.zeros((8, 8, 3), np.uint8), Path('enc/02.png'))\n"
    )
    assert subprocess.run([sys.executable, "-c", killed]).returncode == -signal.SIGKILL
    debris = [name for name in files(Path("enc")) if name.endswith(".tmp")]
    assert len(debris) == 1 and debris[0].startswith(".02.png.")
    Path("enc/.notes.tmp").write_text("not ours")  # a hidden file the run did not write stays
    rc, _, err = run(capsys, *args)  # a plain rerun removes the debris, then refuses to overwrite
    assert rc == 1 and "removed 1 partial file(s)" in err and "--resume" in err
    rc, _, err = run(capsys, *args, "--resume")
    assert rc == 0 and files(Path("enc")) == [".notes.tmp", *[f"{i:02d}.png" for i in range(5)]]
    assert run(capsys, "decrypt", "--key-file", key_file, "--block-size", 8, "enc", "dec")[0] == 0
    for i in range(5):
        np.testing.assert_array_equal(load(Path(f"dec/{i:02d}.png")), load(Path(f"plain/{i:02d}.png")))


# -- images altered without a word -------------------------------------------------------------------------------------
def rotated_photo(path: Path) -> Image.Image:
    """A 32x48 photo stored sideways with EXIF orientation 6 (turn 90 degrees clockwise to view), as phones do."""
    stored = Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, exif=exif)
    return stored.transpose(Image.Transpose.ROTATE_270)  # as viewed: 48x32


def test_exif_orientation_is_honoured_by_the_cli_and_the_processor(capsys, key_file):
    upright = rotated_photo(Path("plain/photo.png"))
    common = ["--key-file", key_file, "--block-size", 8]
    assert run(capsys, "encrypt", *common, "plain", "enc")[0] == 0
    assert run(capsys, "decrypt", *common, "enc", "dec")[0] == 0
    np.testing.assert_array_equal(load(Path("dec/photo.png")), np.asarray(upright))  # 48x32, as viewed
    processor = LCryptImageProcessor(image_size=(48, 32), block_size=8, key=LCryptKey.load(key_file))
    with Image.open("plain/photo.png") as stored:
        got = processor(stored, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(got, processor(upright, return_tensors="pt")["pixel_values"], rtol=0, atol=0)


def test_animated_and_transparent_images_are_refused_by_name_and_other_formats_listed(capsys, key_file):
    rgb_images(Path("plain"), 1)
    frames = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (0, 128, 255)]
    frames[0].save("plain/animated.png", save_all=True, append_images=frames[1:])
    common = ["--key-file", key_file, "--block-size", 8]
    rc, _, err = run(capsys, "encrypt", *common, "plain", "enc")
    assert rc == 1 and "plain/animated.png: is animated (3 frames)" in err and not Path("enc").exists()
    with Image.open("plain/animated.png") as image, pytest.warns(UserWarning, match="3 frames"):
        LCryptImageProcessor(image_size=32, block_size=8, key=LCryptKey.load(key_file))(image)
    Path("plain/animated.png").unlink()

    rgba = np.random.default_rng(0).integers(0, 256, (32, 32, 4), dtype=np.uint8)
    Image.fromarray(rgba).save("plain/transparent.png")
    rc, _, err = run(capsys, "encrypt", *common, "plain", "enc")
    assert rc == 1 and "plain/transparent.png: has transparent pixels" in err and not Path("enc").exists()
    palette = Image.fromarray(np.arange(32 * 32, dtype=np.uint8).reshape(32, 32) % 8, "L").convert("P")
    palette.info["transparency"] = 3
    Path("plain/transparent.png").unlink()
    palette.save("plain/palette.png", transparency=3)
    rc, _, err = run(capsys, "encrypt", *common, "plain", "enc")
    assert rc == 1 and "plain/palette.png: has transparent pixels" in err
    Path("plain/palette.png").unlink()
    rgba[..., 3] = 255  # an alpha channel that hides nothing is no loss: encrypted as RGB
    Image.fromarray(rgba).save("plain/opaque.png")

    for suffix in (".tif", ".gif", ".webp", ".bmp"):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(f"plain/other{suffix}")
    rc, _, err = run(capsys, "encrypt", *common, "plain", "enc")
    assert rc == 0 and "skipping 4 image file(s)" in err
    for suffix in (".tif", ".gif", ".webp", ".bmp"):
        assert f"plain/other{suffix}" in err
    assert files(Path("enc")) == ["00.png", "opaque.png"]
    assert run(capsys, "decrypt", *common, "enc", "dec")[0] == 0
    np.testing.assert_array_equal(load(Path("dec/opaque.png")), rgba[..., :3])


def test_resume_redoes_an_output_whose_input_changed(capsys, key_file):
    rgb_images(Path("plain"), 2)
    common = ["--key-file", key_file, "--block-size", 8]
    assert run(capsys, *["encrypt", *common, "plain", "enc"])[0] == 0
    kept = Path("enc/00.png").stat().st_mtime_ns
    changed = np.random.default_rng(7).integers(0, 256, (32, 48, 3), dtype=np.uint8)  # same size, new content
    Image.fromarray(changed).save("plain/01.png")
    rc, _, err = run(capsys, "encrypt", *common, "--resume", "plain", "enc")
    assert rc == 0 and "encrypted 1 image(s)" in err and "1 complete output(s) kept" in err
    assert Path("enc/00.png").stat().st_mtime_ns == kept
    with Image.open("enc/01.png") as image:
        assert CHUNK_KEY in image.info and "hf-lcrypt-source" in image.info  # a keyed tag: no plain hash
        assert image.info["hf-lcrypt-source"] == LCryptKey.load(key_file).tag(Path("plain/01.png").read_bytes())
    assert run(capsys, "decrypt", *common, "enc", "dec")[0] == 0
    np.testing.assert_array_equal(load(Path("dec/01.png")), changed)
    # decryption too: a ciphertext re-encrypted after its decryption was written is decrypted again
    rgb_images(Path("plain2"), 2)
    assert run(capsys, "encrypt", *common, "--force", "plain2", "enc")[0] == 0
    rc, _, err = run(capsys, "decrypt", *common, "--resume", "enc", "dec")
    assert rc == 0 and "decrypted 1 image(s)" in err
    np.testing.assert_array_equal(load(Path("dec/01.png")), load(Path("plain2/01.png")))


# -- the library's silent garbage --------------------------------------------------------------------------------------
def test_empty_tensors_and_unit_floats_are_not_turned_into_black_images():
    key = LCryptKey.generate()
    processor = LCryptImageProcessor(image_size=32, block_size=8, key=key)
    for empty in (torch.empty(0), torch.empty(3, 0, 0), np.zeros((0, 0, 3), np.float32)):
        for call in (processor, processor.encrypt_images):
            with pytest.raises(ValueError, match=r"is empty \(shape"):
                call(empty)
    flat = torch.rand(40, 40)
    with pytest.raises(ValueError, match=r"2-D tensor of shape \(40, 40\)") as err:
        processor(flat)
    assert "tensor(" not in str(err.value) and len(str(err.value)) < 200  # the shape, not every value
    floats = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    as_bytes = np.rint(floats * 255).astype(np.uint8)
    expected = np.asarray(processor.encrypt_images(as_bytes)[0])
    np.testing.assert_array_equal(np.asarray(processor.encrypt_images(floats)[0]), expected)
    np.testing.assert_array_equal(np.asarray(processor.encrypt_images(torch.from_numpy(floats).permute(2, 0, 1))[0]),
                                  expected)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(processor.decrypt_images(processor.encrypt_images(floats))[0]), as_bytes)


# -- edited parameter chunks and decrypt hints -------------------------------------------------------------------------
def edit_chunk(path: Path, **changes) -> None:
    with Image.open(path) as image:
        params = {**json.loads(image.info[CHUNK_KEY]), **changes}
        pixels = np.asarray(image)
    info = PngImagePlugin.PngInfo()
    info.add_text(CHUNK_KEY, json.dumps(params))
    Image.fromarray(pixels).save(path, pnginfo=info)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 5}, "steps is 5, not a list of step names"),
        ({"block_size": None}, "block_size is null, not a positive integer"),
        ({"block_size": "8"}, 'block_size is "8", not a positive integer'),
        ({"image_size": [32]}, "image_size is [32], not [height, width]"),
    ],
)
def test_an_edited_parameter_chunk_is_named_and_skip_errors_goes_on(capsys, key_file, change, message):
    rgb_images(Path("plain"), 3)
    common = ["--key-file", key_file, "--block-size", 8]
    assert run(capsys, "encrypt", *common, "plain", "enc")[0] == 0
    edit_chunk(Path("enc/01.png"), **change)
    rc, _, err = run(capsys, "decrypt", *common, "enc", "dec")
    assert rc == 1 and "enc/01.png" in err and message in err and "Traceback" not in err and "TypeError" not in err
    assert not Path("dec").exists()
    rc, _, err = run(capsys, "decrypt", *common, "--skip-errors", "enc", "dec")
    assert rc == 1 and "1 image(s) failed" in err and message in err
    assert files(Path("dec")) == ["00.png", "02.png"]
    with pytest.raises(ValueError, match="edited or damaged"), Image.open("enc/01.png") as image:
        LCryptImageProcessor(image_size=32, block_size=8, key=LCryptKey.load(key_file))(image, do_encrypt=False)


def test_decrypt_hints_name_the_real_cause(capsys, key_file):
    mri_16bit(Path("scans/mri.png"))
    common = ["--key-file", key_file, "--block-size", 8]
    assert run(capsys, "encrypt", *common, "scans", "enc")[0] == 0
    rc, _, err = run(capsys, "decrypt", *common, "--to-8bit", "enc", "dec")
    assert (
        rc == 1 and "16-bit ciphertext" in err and "leave out --to-8bit" in err and "key_id" not in err.split(":")[-1]
    )
    edit_chunk(Path("enc/mri.png"), spec=2)
    rc, _, err = run(capsys, "decrypt", *common, "enc", "dec")
    assert rc == 1 and "newer hf-lcrypt (key spec 2" in err and "upgrade" in err
    assert not Path("dec").exists()


# -- classify ----------------------------------------------------------------------------------------------------------
def test_classify_names_an_unreadable_image_and_prints_the_others(capsys, keyed_folder, cli_workdir):
    folder, key, keyed = keyed_folder
    key.save("k.key")
    for i, image in enumerate(some_images(3)):
        image.save(f"{i}.png")
    Path("1.png").write_bytes(Path("1.png").read_bytes()[:60])  # truncated
    rc, out, err = run(capsys, "classify", "--model", folder, "--key-file", "k.key", "0.png", "1.png", "2.png")
    assert rc == 1 and "1 of 3 image(s) could not be read" in err and "1.png" in err and "Traceback" not in err
    lines = out.strip().splitlines()
    assert len(lines) == 3 and "class_" in lines[0] and "error" in lines[1] and "class_" in lines[2]
    rc, out, _ = run(capsys, "classify", "--model", folder, "--key-file", "k.key", "0.png", "1.png", "--json")
    assert rc == 1 and "error" in json.loads(out)[1] and json.loads(out)[0]["label"].startswith("class_")


def test_classify_says_in_one_line_that_the_server_cannot_be_reached(capsys, key_file):
    rgb_images(Path("plain"), 1)
    rc, _, err = run(capsys, "classify", "--url", "http://127.0.0.1:9/", "--key-file", key_file, "plain")
    assert rc == 1 and "Cannot reach the hf-lcrypt app at http://127.0.0.1:9/" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


# -- memory ------------------------------------------------------------------------------------------------------------
def test_an_image_size_beyond_memory_is_refused_before_reading(capsys, key_file, monkeypatch):
    rgb_images(Path("plain"), 1)
    common = ["--key-file", key_file, "--block-size", 8]
    rc, _, err = run(capsys, "encrypt", *common, "--image-size", 400000, "plain", "enc")
    assert rc == 1 and "--image-size 400000x400000 needs about" in err and "smaller --image-size" in err
    assert not Path("enc").exists()
    monkeypatch.setattr("hf_lcrypt.cli.folder_run.physical_memory", lambda: int(0.4e9) + 6 * 32 * 48 * 3 - 1)
    rc, _, err = run(capsys, "encrypt", *common, "plain", "enc")  # the largest input, after the headers are read
    assert rc == 1 and "The largest image is 32x48" in err and not Path("enc").exists()
    rgb_images(Path("plain"), 2)  # memory for one image, two worker processes: refused, and fine with one
    monkeypatch.setattr("hf_lcrypt.cli.folder_run.physical_memory", lambda: int(0.4e9) + 6 * 32 * 48 * 3)
    rc, _, err = run(capsys, "encrypt", *common, "--num-proc", 2, "plain", "enc")
    assert rc == 1 and "2 such images at once (--num-proc)" in err and not Path("enc").exists()
    assert run(capsys, "encrypt", *common, "--num-proc", 1, "plain", "enc")[0] == 0


# -- write errors ------------------------------------------------------------------------------------------------------
def test_disk_full_names_the_file_the_count_and_resume(capsys, key_file, monkeypatch):
    import errno

    rgb_images(Path("plain"), 4)
    real_save, calls = Image.Image.save, []

    def full(self, fp, format=None, **params):
        calls.append(fp)
        if len(calls) == 3:
            fp.write(b"\x89PNG half")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(self, fp, format=format, **params)

    monkeypatch.setattr(Image.Image, "save", full)
    args = ["encrypt", "--key-file", key_file, "--block-size", 8, "--num-proc", 1, "plain", "enc"]
    rc, _, err = run(capsys, *args)
    assert rc == 1 and "enc/02.png cannot be written: the disk is full" in err and "2 output(s)" in err
    assert "--resume" in err and "Errno" not in err and ".tmp" not in err
    assert files(Path("enc")) == ["00.png", "01.png"]
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert run(capsys, *args, "--resume")[0] == 0 and files(Path("enc")) == [f"{i:02d}.png" for i in range(4)]


def test_disk_full_in_a_worker_process_is_told_the_same_way(capsys, key_file, monkeypatch):
    import errno

    rgb_images(Path("plain"), 4)

    def full(self, fp, format=None, **params):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)  # forked workers inherit it
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "--num-proc", 2, "plain", "enc")
    assert rc == 1 and "enc/00.png cannot be written: the disk is full" in err and "--resume" in err
    assert files(Path("enc")) == [] and "Errno" not in err


def test_a_read_only_folder_is_named_not_a_hidden_temporary(capsys, key_file, monkeypatch):
    import errno

    rgb_images(Path("plain"), 1)

    def read_only(path, mode="r", *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(image_io, "open", read_only, raising=False)
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "plain", "enc")
    assert rc == 1 and "enc/00.png cannot be written: enc is on a read-only file system" in err
    assert ".tmp" not in err and "writable output folder" in err


# -- key input edge cases ----------------------------------------------------------------------------------------------
def test_key_files_with_a_bom_from_pipes_and_one_digit_short(capsys, key_file):
    key = LCryptKey.load(key_file)
    Path("bom.key").write_bytes(b"\xef\xbb\xbf" + key.to_hex().encode() + b"\r\n")
    Path("bom.key").chmod(0o600)
    assert LCryptKey.load("bom.key") == key
    Path("short.key").write_text(key.to_hex()[:63])
    with pytest.raises(ValueError, match="got 63 hex digits"):
        LCryptKey.load("short.key")
    Path("typo.key").write_text(key.to_hex()[:10] + "g" + key.to_hex()[11:])
    with pytest.raises(ValueError, match="character 11 of 64 is not a hex digit"):
        LCryptKey.load("typo.key")
    # a pipe, as /dev/stdin or a shell's <(secret-manager get key) hands it over
    rgb_images(Path("plain"), 1)
    read_end, write_end = os.pipe()
    os.write(write_end, (key.to_hex() + "\n").encode())
    os.close(write_end)
    try:
        rc, _, err = run(capsys, "encrypt", "--key-file", f"/dev/fd/{read_end}", "--block-size", 8, "plain", "enc")
    finally:
        os.close(read_end)
    assert rc == 0 and key.key_id in err and "warning" not in err


def test_keygen_never_writes_through_a_symbolic_link(capsys):
    os.symlink("nowhere.key", "dangling")
    rc, _, err = run(capsys, "keygen", "dangling")
    assert rc == 1 and "symbolic link" in err and "overwrite=True" not in err and not Path("nowhere.key").exists()
    Path("victim.txt").write_text("precious\n")
    os.symlink("victim.txt", "planted")
    rc, _, err = run(capsys, "keygen", "planted", "--force")
    assert rc == 1 and "symbolic link" in err and Path("victim.txt").read_text() == "precious\n"


def test_passphrases_that_are_not_utf_8_or_only_spaces_are_refused(capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("un café très long\n".encode("latin-1"))))
    rc, _, err = run(capsys, "keygen", "--passphrase", "p.key")
    assert rc == 1 and "not UTF-8" in err and "codec" not in err and not Path("p.key").exists()
    monkeypatch.setattr("sys.stdin", io.StringIO(" " * 12 + "\n"))
    rc, _, err = run(capsys, "keygen", "--passphrase", "p.key")
    assert rc == 1 and "only white space" in err and not Path("p.key").exists()


def test_an_empty_key_string_is_called_empty():
    for make in (LCryptKey.coerce, lambda key: LCryptImageProcessor(image_size=32, block_size=8, key=key)):
        with pytest.raises(ValueError, match="empty string") as err:
            make("")
        assert "folder" not in str(err.value)
