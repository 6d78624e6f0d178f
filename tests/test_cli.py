"""The hf-lcrypt command line: keygen, folder encrypt/decrypt round trips on generated and real images, errors."""

from __future__ import annotations

import io
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli as run
from PIL import Image

from hf_lcrypt import BlockCipher, LCryptKey
from hf_lcrypt.cli import main
from hf_lcrypt.cli.image_io import RESAMPLE
from hf_lcrypt.keys import KEY_ENV_VAR

pytestmark = pytest.mark.usefixtures("cli_workdir")


def rgb(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def make_images(root: Path, size: tuple[int, int] = (32, 48)) -> list[Path]:
    """A small tree of PNGs and JPEGs in the modes people have: RGB, RGBA, grey, palette."""
    rng = np.random.default_rng(0)
    h, w = size
    files = {
        "a.png": Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
        "sub/b.png": Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8)).convert("RGB").convert("RGBA"),
        "sub/deeper/c.png": Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)),
        "sub/d.png": Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).quantize(16),
        "e.JPG": Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)),
    }
    for name, image in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / name)
    (root / "notes.txt").write_text("not an image")
    return sorted(root / name for name in files)


def outputs(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


# -- keygen ---------------------------------------------------------------------------------------------------------
def test_keygen_prints_only_the_key_id(capsys):
    rc, out, _ = run(capsys, "keygen", "new.key")
    key = LCryptKey.load("new.key")
    assert rc == 0 and out == key.key_id + "\n"
    assert stat.S_IMODE(Path("new.key").stat().st_mode) == 0o600
    rc, _, err = run(capsys, "keygen", "new.key")
    assert rc == 1 and "overwrite" in err
    assert LCryptKey.load("new.key") == key
    rc, out, _ = run(capsys, "keygen", "new.key", "--force")
    assert rc == 0 and LCryptKey.load("new.key") != key and out.strip() == LCryptKey.load("new.key").key_id


def test_keygen_from_a_passphrase_on_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("a long test passphrase\nignored\n"))
    rc, out, _ = run(capsys, "keygen", "p.key", "--passphrase")
    assert rc == 0
    assert LCryptKey.load("p.key") == LCryptKey.from_passphrase("a long test passphrase")
    assert out.strip() == LCryptKey.load("p.key").key_id and "passphrase" not in out
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    rc, _, err = run(capsys, "keygen", "q.key", "--passphrase")
    assert rc == 1 and "passphrase is empty" in err and not Path("q.key").exists()


# -- round trips ----------------------------------------------------------------------------------------------------
def test_folder_round_trip_is_exact(capsys, key_file):
    sources = make_images(Path("plain"))
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "plain", "enc")
    assert rc == 0 and "5 image(s)" in err
    expected = [p.relative_to("plain").with_suffix(".png") for p in sources]
    assert outputs(Path("enc")) == sorted(expected)  # layout kept, all PNG, nothing else, no temporary files

    cipher = BlockCipher(LCryptKey.load(key_file), (32, 48), 8)
    for source, rel in zip(sources, expected, strict=True):
        encrypted = rgb(Path("enc") / rel)
        np.testing.assert_array_equal(encrypted, cipher.encrypt(rgb(source)))
        assert not np.array_equal(encrypted, rgb(source))

    rc, _, _ = run(capsys, "decrypt", "--key-file", key_file, "--block-size", 8, "enc", "dec")
    assert rc == 0
    for source, rel in zip(sources, expected, strict=True):
        np.testing.assert_array_equal(rgb(Path("dec") / rel), rgb(source))


def test_resize_and_steps(capsys, key_file):
    make_images(Path("plain"), size=(30, 45))
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "plain", "enc")
    assert rc == 1 and "--image-size" in err and "30x45" in err
    assert not Path("enc").exists()  # checked before anything was written

    common = ["--key-file", key_file, "--block-size", 8, "--image-size", "32x40", "--steps", "block_scramble"]
    assert run(capsys, "encrypt", *common, "plain", "enc")[0] == 0
    assert run(capsys, "decrypt", *common, "enc", "dec")[0] == 0
    with Image.open("plain/a.png") as image:
        resized = np.asarray(image.convert("RGB").resize((40, 32), RESAMPLE))
    np.testing.assert_array_equal(rgb(Path("dec/a.png")), resized)
    only_blocks = BlockCipher(LCryptKey.load(key_file), (32, 40), 8, steps=["block_scramble"])
    np.testing.assert_array_equal(rgb(Path("enc/a.png")), only_blocks.encrypt(resized))

    # The wrong steps are refused (the ciphertexts carry theirs); a ciphertext of another size is refused rather
    # than resized.
    rc, _, err = run(capsys, "decrypt", "--key-file", key_file, "--block-size", 8, "enc", "wrong")
    assert rc == 1 and "--steps block_scramble" in err and not Path("wrong").exists()
    rc, _, err = run(capsys, "decrypt", "--key-file", key_file, "--block-size", 8, "--image-size", 32, "enc", "x")
    assert rc == 1 and "cannot be decrypted" in err and not Path("x").exists()


def test_single_file_and_key_from_the_environment(capsys, key_file, monkeypatch):
    source = make_images(Path("plain"))[0]
    monkeypatch.setenv(KEY_ENV_VAR, str(key_file))
    assert run(capsys, "encrypt", "--block-size", 16, source, "one.png")[0] == 0
    Path("out").mkdir()
    assert run(capsys, "decrypt", "--block-size", 16, "one.png", "out")[0] == 0  # into a folder: out/one.png
    np.testing.assert_array_equal(rgb(Path("out/one.png")), rgb(source))


def test_overwrite_needs_force(capsys, key_file):
    make_images(Path("plain"))
    args = ["encrypt", "--key-file", key_file, "--block-size", 8, "plain", "enc"]
    assert run(capsys, *args)[0] == 0
    last = Path("enc/sub/deeper/c.png")  # the last image written: the check must come before the first write
    for path in Path("enc").rglob("*.png"):
        path.unlink()
    last.write_bytes(b"old")
    rc, _, err = run(capsys, *args)
    assert rc == 1 and "--force" in err and str(last) in err
    assert outputs(Path("enc")) == [last.relative_to("enc")] and last.read_bytes() == b"old"
    assert run(capsys, *args, "--force")[0] == 0
    assert len(outputs(Path("enc"))) == 5 and rgb(last).shape == (32, 48, 3)


def test_a_failed_write_leaves_no_file(capsys, key_file, monkeypatch):
    make_images(Path("plain"))

    def broken_save(self, fp, format=None, **params):
        fp.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    rc, _, err = run(capsys, "encrypt", "--key-file", key_file, "--block-size", 8, "plain", "enc")
    assert rc == 1 and "disk full" in err
    assert outputs(Path("enc")) == []


def test_decrypting_jpeg_warns(capsys, key_file):
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save("c.jpg")
    rc, _, err = run(capsys, "decrypt", "--key-file", key_file, "--block-size", 8, "c.jpg", "c.png")
    assert rc == 0 and "JPEG" in err and "lossless" in err


# -- errors ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        (None, ["--key-file", "missing.key", "plain", "enc"], "hf-lcrypt keygen"),
        ("bad-key", ["--key-file", "bad.key", "plain", "enc"], "not an hf-lcrypt key file"),
        (None, ["--key-file", "k.key", "nowhere", "enc"], "does not exist"),
        ("empty", ["--key-file", "k.key", "empty", "enc"], "No PNG, JPEG, DICOM or NIfTI images"),
        (None, ["--key-file", "k.key", "plain", "plain/enc"], "must not be inside"),
        (None, ["--key-file", "k.key", "plain/a.png", "a.jpg"], "must be a .png"),
        (None, ["--key-file", "k.key", "plain/a.png", "plain/a.png"], "replace its own input"),
        ("twins", ["--key-file", "k.key", "plain", "enc"], "would both be written"),
        ("broken", ["--key-file", "k.key", "plain", "enc"], "cannot identify image file"),
    ],
)
def test_errors_are_one_clear_line(capsys, key_file, setup, argv, message):
    make_images(Path("plain"))
    if setup == "bad-key":
        Path("bad.key").write_text("00" * 31)
    elif setup == "empty":
        Path("empty").mkdir()
    elif setup == "twins":
        Image.new("RGB", (48, 32)).save("plain/a.jpg")
    elif setup == "broken":
        Path("plain/z.png").write_bytes(b"not a png")
    rc, _, err = run(capsys, "encrypt", "--block-size", 8, *argv)
    assert rc == 1 and message in err and "Traceback" not in err
    assert err.startswith("hf-lcrypt encrypt: error:") and len(err.strip().splitlines()) == 1
    assert not Path("enc").exists() and not Path("plain/enc").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["encrypt", "--key-file", "k.key", "--block-size", "0", "a", "b"],
        ["encrypt", "--key-file", "k.key", "--block-size", "8", "--image-size", "32x", "a", "b"],
        ["encrypt", "--key-file", "k.key", "--block-size", "8", "--steps", "shuffle", "a", "b"],
        ["encrypt", "--block-size", "8", "a", "b"],  # no key file and no environment variable
        [],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "usage: hf-lcrypt" in capsys.readouterr().err


# -- real data and a real process -----------------------------------------------------------------------------------
def test_real_images_round_trip(capsys, key_file, shared_data):
    plain = Path("plain")
    picks = [
        sorted((shared_data / "brain-tumor-mri" / "train" / "glioma").glob("*.jpg"))[:2],
        sorted((shared_data / "lc25000" / "lung_n").glob("*.jpeg"))[:2],
    ]
    sources = [p for group in picks for p in group]
    if len(sources) < 4:
        pytest.skip("the shared data set lacks the expected images")
    for source in sources:  # links, not copies: the data never leaves the shared folder
        (plain / source.parent.name).mkdir(parents=True, exist_ok=True)
        (plain / source.parent.name / source.name).symlink_to(source)
    common = ["--key-file", key_file, "--block-size", 16, "--image-size", 224]
    assert run(capsys, "encrypt", *common, plain, "enc")[0] == 0
    assert run(capsys, "decrypt", *common, "enc", "dec")[0] == 0
    for source in sources:
        rel = Path(source.parent.name) / f"{source.stem}.png"
        with Image.open(source) as image:
            expected = np.asarray(image.convert("RGB").resize((224, 224), RESAMPLE))
        np.testing.assert_array_equal(rgb(Path("dec") / rel), expected)
        assert not np.array_equal(rgb(Path("enc") / rel), expected)


def test_help_examples_are_commands_the_parser_accepts(capsys):
    from hf_lcrypt.cli import build_parser

    for argv in (["--help"], ["encrypt", "--help"], ["decrypt", "--help"], ["keygen", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert text.startswith("usage: hf-lcrypt")
        examples = [line.split("#")[0].split() for line in text.splitlines() if line.lstrip().startswith("hf-lcrypt ")]
        assert examples or argv[0] == "keygen", text
        for example in examples:  # a typo in an example, or an option renamed since, exits here with usage error 2
            args = build_parser().parse_args(example[1:])
            assert args.command == example[1]


def test_module_entry_point_in_a_subprocess(key_file):
    Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)).save("x.png")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_lcrypt",
            "encrypt",
            "--key-file",
            str(key_file),
            "--block-size",
            "8",
            "x.png",
            "y.png",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert key_file.read_text().strip() not in done.stdout + done.stderr
    cipher = BlockCipher(LCryptKey.load(key_file), 16, 8)
    np.testing.assert_array_equal(rgb(Path("y.png")), cipher.encrypt(rgb(Path("x.png"))))
