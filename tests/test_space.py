"""The Space, run as `python space/app.py` on a tiny keyed model, without any key, and driven through gradio_client."""

import html
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from helpers import IMAGENET_MEAN, IMAGENET_STD, REPO_ROOT, tiny_vit
from PIL import Image

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.cli import main as cli

pytestmark = pytest.mark.slow  # the app runs in its own process

APP = REPO_ROOT / "space" / "app.py"
EXAMPLE = REPO_ROOT / "space" / "examples" / "glioma.png"
IMAGE_SIZE = 64
BLOCK_SIZE = 8
PASSPHRASE = "correct horse battery staple, space test"


@dataclass
class SpaceApp:
    url: str
    key: LCryptKey  # the served model's key: the test plays the key holder; the server never gets it
    model: LCryptViTForImageClassification  # the keyed model the app serves
    plain: torch.nn.Module  # the plain ViT it was folded from
    log: Path
    downloads: Path
    uploads: Path  # where gradio keeps what it received
    model_dir: Path

    def client(self) -> Client:
        return Client(self.url, verbose=False, analytics_enabled=False, download_files=str(self.downloads))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"space/app.py exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"space/app.py did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


def launch_space(folder: Path, key: LCryptKey | None = None, env: dict[str, str] | None = None) -> Iterator[SpaceApp]:
    """Fold a tiny ViT with `key` (default: a new one) in `folder`, serve it with `python space/app.py` on a free
    port, without the key, and stop it after. `env` adds variables to the app's environment."""
    torch.manual_seed(0)
    key = key or LCryptKey.generate()
    plain = tiny_vit(image_size=IMAGE_SIZE, patch_size=BLOCK_SIZE)
    keyed = LCryptViTForImageClassification.from_plain(plain, key, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    keyed.save_pretrained(folder / "model")
    LCryptImageProcessor.for_model(keyed).save_pretrained(folder / "model")
    port = _free_port()
    app_env = {
        **{k: v for k, v in os.environ.items() if k not in ("HF_LCRYPT_KEY", "HF_LCRYPT_KEY_FILE")},
        "HF_LCRYPT_MODEL": str(folder / "model"),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(folder / "gradio-tmp"),
        "HF_HUB_OFFLINE": "1",
        **(env or {}),
    }
    log = folder / "space.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, str(APP)], env=app_env, stdout=out, stderr=subprocess.STDOUT, cwd=folder
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_up(url, process, log)
        yield SpaceApp(
            url, key, keyed.eval(), plain.eval(), log, folder / "downloads", folder / "gradio-tmp", folder / "model"
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def space_app(tmp_path_factory) -> Iterator[SpaceApp]:
    folder = tmp_path_factory.mktemp("space")
    # A leftover secret variable must be ignored (and never used): the server holds no key.
    decoy = LCryptKey.generate()
    yield from launch_space(folder, env={"HF_LCRYPT_KEY": decoy.to_hex()})


@pytest.fixture(scope="module")
def client(space_app) -> Client:
    return space_app.client()


def encrypt_example(app: SpaceApp, path: Path, folder: Path, key: LCryptKey | None = None) -> tuple[Path, np.ndarray]:
    """The key holder's side: resize and encrypt locally (as LCryptImageProcessor does), save a lossless PNG."""
    processor = LCryptImageProcessor.for_model(app.model, key=key or app.key, key_id=None)
    (encrypted,) = processor.encrypt_images([Image.open(path)])
    out = folder / f"{path.stem}-encrypted.png"
    encrypted.save(out)
    return out, np.asarray(encrypted)


def plain_probabilities(app: SpaceApp, image: Image.Image) -> dict[str, float]:
    """What the plain model says about the plain image: the served model must say the same about its ciphertext."""
    processor = LCryptImageProcessor(image_size=IMAGE_SIZE, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    pixel_values = processor(image, do_encrypt=False, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = app.plain(pixel_values).logits.softmax(-1)[0]
    return {app.plain.config.id2label[i]: float(p) for i, p in enumerate(probs)}


def received_images(app: SpaceApp) -> list[np.ndarray]:
    """Every readable image the server was sent (the bad-input test also sends unreadable ones)."""
    images = []
    for path in app.uploads.rglob("*.png"):
        try:
            images.append(np.asarray(Image.open(path).convert("RGB")))
        except (OSError, SyntaxError, ValueError):
            continue
    return images


def confidences(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def test_api_lists_the_endpoints_and_needs_no_key(space_app, client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/classify_encrypted", "/model_info"}
    assert [p["parameter_name"] for p in endpoints["/classify_encrypted"]["parameters"]] == ["ciphertext"]
    info = client.predict(api_name="/model_info")
    assert info["image_size"] == [IMAGE_SIZE, IMAGE_SIZE] and info["block_size"] == BLOCK_SIZE
    assert info["key_id"] == space_app.key.key_id and info["channels"] == 3
    log = space_app.log.read_text()
    assert "HF_LCRYPT_KEY is set but ignored" in log


def test_classify_encrypted_equals_the_plain_model(space_app, client, tmp_path):
    path, encrypted = encrypt_example(space_app, EXAMPLE, tmp_path)
    label = client.predict(handle_file(path), api_name="/classify_encrypted")
    assert set(label) == {"label", "confidences"} and len(label["confidences"]) == 4
    expected = plain_probabilities(space_app, Image.open(EXAMPLE).convert("RGB"))
    assert confidences(label) == pytest.approx(expected, abs=1e-4)
    assert label["label"] == max(expected, key=expected.get)
    # The server received the ciphertext, byte for byte, and nothing else.
    received = received_images(space_app)
    assert any(np.array_equal(r, encrypted) for r in received)
    plain = np.asarray(Image.open(EXAMPLE).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
    assert not any(np.array_equal(r, plain) for r in received)


def test_a_wrong_key_gives_another_answer(space_app, client, tmp_path):
    right_path, _ = encrypt_example(space_app, EXAMPLE, tmp_path)
    wrong_dir = tmp_path / "wrong"
    wrong_dir.mkdir()
    wrong_path, _ = encrypt_example(space_app, EXAMPLE, wrong_dir, key=LCryptKey.generate())
    right = confidences(client.predict(handle_file(right_path), api_name="/classify_encrypted"))
    wrong = confidences(client.predict(handle_file(wrong_path), api_name="/classify_encrypted"))
    assert wrong != pytest.approx(right, abs=1e-4)


def test_bad_inputs_get_a_clear_message(space_app, client, tmp_path):
    _, encrypted = encrypt_example(space_app, EXAMPLE, tmp_path)
    not_png = tmp_path / "notes.png"
    not_png.write_text("this is not an image")
    with pytest.raises(AppError, match="not a PNG"):
        client.predict(handle_file(not_png), api_name="/classify_encrypted")
    lossy = tmp_path / "encrypted.jpg"
    Image.fromarray(encrypted).save(lossy, quality=95)
    with pytest.raises(AppError, match="lossless PNG"):
        client.predict(handle_file(lossy), api_name="/classify_encrypted")
    big = tmp_path / "big.png"
    Image.fromarray(np.tile(encrypted, (2, 2, 1))).save(big)
    with pytest.raises(AppError, match=f"is {2 * IMAGE_SIZE}x{2 * IMAGE_SIZE}, but this model takes exactly"):
        client.predict(handle_file(big), api_name="/classify_encrypted")
    transparent = tmp_path / "transparent.png"
    Image.fromarray(np.dstack([encrypted, np.full(encrypted.shape[:2], 128, np.uint8)])).save(transparent)
    with pytest.raises(AppError, match="transparent pixels"):
        client.predict(handle_file(transparent), api_name="/classify_encrypted")
    grey = tmp_path / "grey16.png"
    Image.fromarray(encrypted[..., 0].astype(np.uint16) * 257).save(grey)
    with pytest.raises(AppError, match="mode I;16"):
        client.predict(handle_file(grey), api_name="/classify_encrypted")
    broken = tmp_path / "broken.png"
    buffer = io.BytesIO()
    Image.fromarray(encrypted).save(buffer, format="PNG")
    broken.write_bytes(buffer.getvalue()[:200])
    with pytest.raises(AppError, match="cannot be read"):
        client.predict(handle_file(broken), api_name="/classify_encrypted")
    # An opaque RGBA PNG (what a browser canvas writes) is fine.
    opaque = tmp_path / "opaque.png"
    Image.fromarray(encrypted).convert("RGBA").save(opaque)
    assert client.predict(handle_file(opaque), api_name="/classify_encrypted")["label"]


def test_eight_concurrent_requests(space_app, client, tmp_path):
    examples = sorted(EXAMPLE.parent.glob("*.png"))
    keys = [space_app.key if i % 2 == 0 else LCryptKey.generate() for i in range(8)]
    jobs = []
    for i, key in enumerate(keys):
        folder = tmp_path / str(i)
        folder.mkdir()
        path, _ = encrypt_example(space_app, examples[i % len(examples)], folder, key=None if i % 2 == 0 else key)
        jobs.append(path)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda p: client.predict(handle_file(p), api_name="/classify_encrypted"), jobs))
    # Each answer is the model's on its own ciphertext, whatever else ran at the same time.
    for path, label in zip(jobs, results, strict=True):
        batch = LCryptImageProcessor.for_model(space_app.model)(
            Image.open(path), do_encrypt=False, do_resize=False, return_tensors="pt"
        )
        with torch.no_grad():
            probs = space_app.model(**batch).logits.softmax(-1)[0]
        expected = {space_app.model.config.id2label[i]: float(p) for i, p in enumerate(probs)}
        assert confidences(label) == pytest.approx(expected, abs=1e-5)


def test_the_server_never_sees_the_key(space_app, client, tmp_path):
    path, _ = encrypt_example(space_app, EXAMPLE, tmp_path)
    client.predict(handle_file(path), api_name="/classify_encrypted")
    log = space_app.log.read_text()
    assert "Running on" in log and "holds no key" in log
    # Nothing the app wrote or was given (model, uploads, log) holds the key.
    secret = space_app.key.to_hex().encode()
    for path in space_app.log.parent.rglob("*"):
        assert not path.is_file() or secret not in path.read_bytes(), path


def test_cli_classify_encrypts_locally_and_sends_only_ciphertext(space_app, tmp_path, capsys):
    key_file = space_app.key.save(tmp_path / "holder.key")
    examples = sorted(EXAMPLE.parent.glob("*.png"))
    assert cli(["classify", "--url", space_app.url, "--key-file", str(key_file), str(EXAMPLE.parent), "--json"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in remote] == [str(p) for p in examples]
    # The same answers as the keyed model run by the key holder, and as the plain model on the plain images.
    assert cli(["classify", "--model", str(space_app.model_dir), "--key-file", str(key_file), *map(str, examples)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == len(examples)
    for prediction, line, path in zip(remote, table, examples, strict=True):
        expected = plain_probabilities(space_app, Image.open(path).convert("RGB"))
        assert prediction["confidences"] == pytest.approx(expected, abs=1e-4)
        assert prediction["label"] == max(expected, key=expected.get) == line.split()[1]
        assert line.startswith(str(path)) and float(line.split()[2]) == pytest.approx(
            expected[line.split()[1]], abs=1e-3
        )
    # The server received each example's ciphertext (as the processor encrypts it) and no plain image.
    received = received_images(space_app)
    for path in examples:
        _, encrypted = encrypt_example(space_app, path, tmp_path)
        assert any(np.array_equal(r, encrypted) for r in received)
        plain = np.asarray(Image.open(path).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
        assert not any(np.array_equal(r, plain) for r in received)


def test_cli_classify_refuses_a_key_the_model_was_not_folded_with(space_app, tmp_path, capsys):
    other = LCryptKey.generate().save(tmp_path / "other.key")
    for where in (["--url", space_app.url], ["--model", str(space_app.model_dir)]):
        assert cli(["classify", *where, "--key-file", str(other), str(EXAMPLE)]) == 1
        err = capsys.readouterr().err
        assert f"folded with key_id {space_app.key.key_id}" in err and LCryptKey.load(other).to_hex() not in err
    assert cli(["classify", "--model", str(space_app.model_dir), "--key-file", str(other), str(tmp_path / "none")]) == 1
    assert "No image or folder at" in capsys.readouterr().err


def test_a_public_demo_key_is_offered_only_for_the_served_model(space_app, tmp_path, monkeypatch, caplog):
    spec = importlib.util.spec_from_file_location("space_app_module", APP)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    served = app.load_served_model(space_app.model_dir)
    monkeypatch.setenv("HF_LCRYPT_DEMO_KEY_FILE", str(space_app.key.save(tmp_path / "demo.key")))
    demo = app.load_demo_key(served)
    assert demo == space_app.key and space_app.key.to_hex() in app.page_html(served, demo)
    monkeypatch.setenv("HF_LCRYPT_DEMO_KEY_FILE", str(LCryptKey.generate().save(tmp_path / "other.key")))
    assert app.load_demo_key(served) is None and "no demo key is offered" in caplog.text
    monkeypatch.setenv("HF_LCRYPT_DEMO_KEY_FILE", str(tmp_path / "missing.key"))
    assert app.load_demo_key(served) is None
    page = app.page_html(served, None)
    assert '"demo_key": null' in html.unescape(page) and space_app.key.to_hex() not in page


def test_build_space_ships_the_model_and_its_public_demo_key(space_app, tmp_path, monkeypatch):
    """scripts/build_space.py: the Space's repository, whose app serves its own model and offers its demo key."""
    spec = importlib.util.spec_from_file_location("build_space", REPO_ROOT / "scripts" / "build_space.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    other_key = LCryptKey.generate().save(tmp_path / "other.key")
    assert builder.main([str(space_app.model_dir), str(tmp_path / "bad"), "--demo-key", str(other_key)]) == 1
    assert not any(tmp_path.glob("*bad*"))  # nothing half-built is left behind
    out = tmp_path / "space"
    files = builder.build_space(space_app.model_dir, out, space_app.key)
    assert {"app.py", "demo.key", "model/config.json", "model/model.safetensors", "static/lcrypt.mjs"} <= set(files)
    with pytest.raises(FileExistsError):
        builder.build_space(space_app.model_dir, out, space_app.key)
    # The built app, with no variable set, serves model/ and offers demo.key, labelled as public.
    for name in ("HF_LCRYPT_MODEL", "HF_LCRYPT_DEMO_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location("built_space_app", out / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    served = app.load_model()
    assert served.info["key_id"] == space_app.key.key_id and app.load_demo_key(served) == space_app.key
    assert "public" in (out / "static" / "page.html").read_text()
