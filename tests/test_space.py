"""The Space, run as `python space/app.py` on a tiny keyed model, without any key, and driven through gradio_client."""

import html
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
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
from PIL.PngImagePlugin import PngInfo

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification, png_metadata
from hf_lcrypt.cli import main as cli
from hf_lcrypt.hub.checks import find_secrets
from hf_lcrypt.page_integrity import compute_manifest, integrity, published_manifest

pytestmark = pytest.mark.slow  # the app runs in its own process

APP = REPO_ROOT / "space" / "app.py"
EXAMPLE = REPO_ROOT / "tests" / "data" / "brain-mri" / "glioma.png"
IMAGE_SIZE = 64
BLOCK_SIZE = 8
PASSPHRASE = "correct horse battery staple, space test"
# What the page tells a visitor about the model comes from these two files of the model folder.
METRICS = {"mode": "encrypted", "dataset": "breastmnist", "test": {"accuracy": 0.8125, "num_images": 156}}
WEIGHTS_ONLY = {"flips_right": 0.97, "pixels_in_place": 0.19, "blocks_in_place": 0.42}


@dataclass
class SpaceApp:
    url: str
    key: LCryptKey  # the served model's key: the test plays the key holder; the server never gets it
    model: LCryptViTForImageClassification  # the keyed model the app serves
    plain: torch.nn.Module  # the plain ViT it was folded from
    log: Path
    downloads: Path
    uploads: Path  # gradio's cache folder, where uploads land (and must not stay)
    model_dir: Path
    pid: int

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
    (folder / "model" / "metrics.json").write_text(json.dumps({**METRICS, "key_id": key.key_id}))
    (folder / "model" / "weights_only_attack.json").write_text(json.dumps(WEIGHTS_ONLY))
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
            url,
            key,
            keyed.eval(),
            plain.eval(),
            log,
            folder / "downloads",
            folder / "gradio-tmp",
            folder / "model",
            process.pid,
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
    yield from launch_space(tmp_path_factory.mktemp("space"))


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


def cached_files(app: SpaceApp) -> list[Path]:
    """Whatever the server keeps of what it was sent: every file in gradio's cache folder."""
    return [p for p in app.uploads.rglob("*") if p.is_file()]


def confidences(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def test_api_lists_the_endpoints_and_needs_no_key(space_app, client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(endpoints) == {"/classify_encrypted", "/model_info"}
    assert [p["parameter_name"] for p in endpoints["/classify_encrypted"]["parameters"]] == ["ciphertext"]
    info = client.predict(api_name="/model_info")
    assert info["image_size"] == [IMAGE_SIZE, IMAGE_SIZE] and info["block_size"] == BLOCK_SIZE
    assert info["key_id"] == space_app.key.key_id and info["channels"] == 3


def test_classify_encrypted_equals_the_plain_model(space_app, client, tmp_path):
    path, encrypted = encrypt_example(space_app, EXAMPLE, tmp_path)
    label = client.predict(handle_file(path), api_name="/classify_encrypted")
    assert set(label) == {"label", "confidences"} and len(label["confidences"]) == 4
    expected = plain_probabilities(space_app, Image.open(EXAMPLE).convert("RGB"))
    assert confidences(label) == pytest.approx(expected, abs=1e-4)
    assert label["label"] == max(expected, key=expected.get)
    # Nothing of what the server was sent stays on its disk.
    assert cached_files(space_app) == []


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
    # A palette image with a transparent colour, and an animated PNG, are refused as the docs say.
    palette = tmp_path / "palette.png"
    Image.fromarray(encrypted).convert("P").save(palette, transparency=0)
    with pytest.raises(AppError, match="transparent pixels"):
        client.predict(handle_file(palette), api_name="/classify_encrypted")
    animated = tmp_path / "animated.png"
    frames = [Image.fromarray(encrypted), Image.fromarray(255 - encrypted)]
    frames[0].save(animated, save_all=True, append_images=frames[1:])
    with pytest.raises(AppError, match="animated"):
        client.predict(handle_file(animated), api_name="/classify_encrypted")
    # An opaque RGBA PNG (what a browser canvas writes) is fine.
    opaque = tmp_path / "opaque.png"
    Image.fromarray(encrypted).convert("RGBA").save(opaque)
    assert client.predict(handle_file(opaque), api_name="/classify_encrypted")["label"]
    assert cached_files(space_app) == []  # refused files are deleted too


def save_with_params(path: Path, pixels: np.ndarray, chunk: str) -> Path:
    info = PngInfo()
    info.add_text(png_metadata.CHUNK_KEY, chunk)
    Image.fromarray(pixels).save(path, pnginfo=info)
    return path


def test_the_processor_message_reaches_the_client(space_app, client, tmp_path):
    """A ciphertext whose parameters chunk names another key, or is damaged, gets the processor's own message."""
    other = LCryptKey.generate()
    _, encrypted = encrypt_example(space_app, EXAMPLE, tmp_path, key=other)
    params = png_metadata.cipher_params(space_app.model.cipher(other).describe())
    wrong = save_with_params(tmp_path / "other-key.png", encrypted, png_metadata.encode(params))
    with pytest.raises(AppError, match=f"encrypted with key_id {other.key_id} \\(expected {space_app.key.key_id}\\)"):
        client.predict(handle_file(wrong), api_name="/classify_encrypted")
    damaged = save_with_params(tmp_path / "damaged.png", encrypted, png_metadata.encode(params)[:-5])
    with pytest.raises(AppError, match="damaged hf-lcrypt parameters chunk"):
        client.predict(handle_file(damaged), api_name="/classify_encrypted")
    # The key's own chunk is accepted.
    right = save_with_params(
        tmp_path / "right.png",
        encrypt_example(space_app, EXAMPLE, tmp_path)[1],
        png_metadata.encode(png_metadata.cipher_params(space_app.model.cipher(space_app.key).describe())),
    )
    assert client.predict(handle_file(right), api_name="/classify_encrypted")["label"]


def peak_memory_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def test_an_oversized_png_is_refused_before_it_is_decoded(space_app, client, tmp_path):
    """13000x13000 in 1 MB of PNG: decoding it would take the server's peak memory up by about half a gigabyte."""
    huge = tmp_path / "huge.png"
    Image.fromarray(np.zeros((13_000, 13_000), np.uint8)).save(huge, compress_level=9)
    assert huge.stat().st_size < 1_000_000
    before = peak_memory_kb(space_app.pid)
    with pytest.raises(AppError, match="is 13000x13000, but this model takes exactly"):
        client.predict(handle_file(huge), api_name="/classify_encrypted")
    assert peak_memory_kb(space_app.pid) - before < 50_000  # kB; decoding alone would add 169 000
    assert cached_files(space_app) == []


def test_no_monitoring_endpoint(space_app):
    for path in ("monitoring", "monitoring/summary", "gradio_api/monitoring", "gradio_api/monitoring/summary"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(space_app.url + path, timeout=10)
        assert err.value.code == 404, path


def test_the_page_shows_the_model_facts_and_pins_its_scripts(space_app):
    with urllib.request.urlopen(space_app.url, timeout=10) as response:
        page = html.unescape(response.read().decode())
    for fact in (
        "image classification into 4 classes",
        "breastmnist",
        "81.2% (156 images)",
        "97.0% of the sign flips",
        "19.0% of the in-block pixels",
        "not for diagnosis",
    ):
        assert fact in page, fact


def test_the_published_hashes_are_the_page_files(space_app, capsys, monkeypatch):
    """The package publishes the page files' SRI hashes; `hf-lcrypt verify-page` checks a served page against them."""
    assert published_manifest() == compute_manifest(REPO_ROOT / "space" / "static"), (
        "hf_lcrypt/assets/space-page-integrity.json is out of date: run python -m hf_lcrypt.page_integrity"
    )
    assert set(published_manifest()) >= {"page.mjs", "lcrypt.mjs", "pixels.mjs", "vendor/noble-hashes/sha2.js"}
    assert cli(["verify-page", space_app.url]) == 0
    out = capsys.readouterr().out
    assert f"All {len(published_manifest())} files pinned and served as published" in out
    # A page whose hashes are not the published ones fails the check.
    altered = {**published_manifest(), "lcrypt.mjs": integrity(b"another lcrypt.mjs")}
    monkeypatch.setattr("hf_lcrypt.page_integrity.published_manifest", lambda: altered)
    assert cli(["verify-page", space_app.url]) == 1
    captured = capsys.readouterr()
    assert "DIFFERS   lcrypt.mjs" in captured.out and "do not trust this page" in captured.err


def test_the_app_refuses_to_start_with_a_key_variable(tmp_path):
    """A key in the server's environment stays readable in /proc/<pid>/environ: the app does not start."""
    key = LCryptKey.generate()
    for name, value in (("HF_LCRYPT_KEY", key.to_hex()), ("HF_LCRYPT_KEY_FILE", str(key.save(tmp_path / "k.key")))):
        env = {**os.environ, name: value, "HF_LCRYPT_MODEL": str(tmp_path / "no-model")}
        result = subprocess.run([sys.executable, str(APP)], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode != 0
        assert f"{name} set: this app never needs the key" in result.stderr
        assert key.to_hex() not in result.stdout + result.stderr


def test_eight_concurrent_requests(space_app, client, tmp_path):
    examples = sorted(EXAMPLE.parent.glob("*.png"))
    keys = [space_app.key if i % 2 == 0 else LCryptKey.generate() for i in range(8)]
    jobs = []
    for i, key in enumerate(keys):
        folder = tmp_path / str(i)
        folder.mkdir()
        path, _ = encrypt_example(space_app, examples[i % len(examples)], folder, key=None if i % 2 == 0 else key)
        jobs.append(path)
    # Jobs 0 and 6 are the same ciphertext, which gradio stores as one file: both must be answered.
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
    assert cached_files(space_app) == []


def test_cli_classify_refuses_a_key_the_model_was_not_folded_with(space_app, tmp_path, capsys):
    other = LCryptKey.generate().save(tmp_path / "other.key")
    for where in (["--url", space_app.url], ["--model", str(space_app.model_dir)]):
        assert cli(["classify", *where, "--key-file", str(other), str(EXAMPLE)]) == 1
        err = capsys.readouterr().err
        assert f"is folded with (key_id {space_app.key.key_id})" in err and LCryptKey.load(other).to_hex() not in err
    assert cli(["classify", "--model", str(space_app.model_dir), "--key-file", str(other), str(tmp_path / "none")]) == 1
    assert "No image or folder at" in capsys.readouterr().err


def test_a_public_demo_key_is_offered_only_for_the_served_model(space_app, tmp_path, monkeypatch, caplog):
    spec = importlib.util.spec_from_file_location("space_app_module", APP)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    served = app.load_model(str(space_app.model_dir))
    monkeypatch.setenv("HF_LCRYPT_DEMO_KEY_FILE", str(space_app.key.save(tmp_path / "demo.key")))
    demo = app.load_demo_key(served)
    assert demo == space_app.key and space_app.key.to_hex() in app.page_html(served, demo)
    monkeypatch.setenv("HF_LCRYPT_DEMO_KEY_FILE", str(LCryptKey.generate().save(tmp_path / "other.key")))
    assert app.load_demo_key(served) is None and "no demo key is offered" in caplog.text
    monkeypatch.setenv("HF_LCRYPT_DEMO_KEY_FILE", str(tmp_path / "missing.key"))
    assert app.load_demo_key(served) is None
    page = app.page_html(served, None)
    assert '"demo_key": null' in html.unescape(page) and space_app.key.to_hex() not in page


def load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_space_refuses_to_publish_the_model_key(space_app, tmp_path):
    builder = load_script("build_space", REPO_ROOT / "scripts" / "build_space.py")
    model_key = space_app.key.save(tmp_path / "model.key")
    assert builder.main([str(space_app.model_dir), str(tmp_path / "bad"), "--demo-key", str(model_key)]) == 1
    # A fresh demo key needs the model's key to move the copy to it.
    assert builder.main([str(space_app.model_dir), str(tmp_path / "bad"), "--demo-key"]) == 1
    # A key file that is not the model's cannot move it either.
    other = LCryptKey.generate().save(tmp_path / "other.key")
    assert builder.main([str(space_app.model_dir), str(tmp_path / "bad"), "--demo-key", "--key-file", str(other)]) == 1
    empty = tmp_path / "no-images"
    empty.mkdir()
    assert builder.main([str(space_app.model_dir), str(tmp_path / "bad"), "--examples", str(empty)]) == 1
    assert not any(tmp_path.glob("*bad*"))  # nothing half-built is left behind
    # Told explicitly, the model's own key is published, and the model copied as it is.
    out = tmp_path / "public-model-key"
    args = [str(space_app.model_dir), str(out), "--demo-key", str(model_key), "--publish-model-key"]
    assert builder.main(args) == 0
    assert LCryptKey.from_hex((out / "demo.key").read_text()) == space_app.key
    assert (out / "model" / "model.safetensors").read_bytes() == (
        space_app.model_dir / "model.safetensors"
    ).read_bytes()
    assert not (out / "examples").exists()  # no examples unless given


def test_build_space_rekeys_a_copy_of_the_model_to_a_fresh_demo_key(space_app, tmp_path, monkeypatch, capsys):
    """scripts/build_space.py --demo-key: neither the training key nor its weights leave; the copy answers exactly."""
    builder = load_script("build_space", REPO_ROOT / "scripts" / "build_space.py")
    model_key = space_app.key.save(tmp_path / "model.key")
    examples = REPO_ROOT / "tests" / "data" / "brain-mri"
    out = tmp_path / "space"
    args = [str(space_app.model_dir), str(out), "--demo-key", "--key-file", str(model_key), "--examples", str(examples)]
    assert builder.main(args) == 0
    demo_key = LCryptKey.from_hex((out / "demo.key").read_text())
    assert (
        demo_key != space_app.key and f"PUBLIC demo key (demo.key, key_id {demo_key.key_id})" in capsys.readouterr().out
    )
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"app.py", "demo.key", "model/config.json", "model/model.safetensors", "static/lcrypt.mjs"} <= files
    assert {f"examples/{p.name}" for p in examples.glob("*.png")} <= files
    # No file holds the training key, its key_id, or the weights folded with it.
    assert find_secrets(out, space_app.key) == []
    for path in out.rglob("*"):
        assert not path.is_file() or space_app.key.key_id.encode() not in path.read_bytes(), path
    assert (out / "model" / "model.safetensors").read_bytes() != (
        space_app.model_dir / "model.safetensors"
    ).read_bytes()
    for name in ("config.json", "preprocessor_config.json", "metrics.json"):
        assert json.loads((out / "model" / name).read_text())["key_id"] == demo_key.key_id, name
    # The copy under the demo key answers as the original under the training key.
    rekeyed = LCryptViTForImageClassification.from_pretrained(out / "model").eval()
    images = [Image.open(p) for p in sorted(examples.glob("*.png"))]
    with torch.no_grad():
        original = space_app.model(
            **LCryptImageProcessor.for_model(space_app.model, key=space_app.key)(images, return_tensors="pt")
        ).logits
        moved = rekeyed(**LCryptImageProcessor.for_model(rekeyed, key=demo_key)(images, return_tensors="pt")).logits
    assert torch.allclose(moved, original, atol=1e-5) and torch.equal(moved.argmax(-1), original.argmax(-1))
    with pytest.raises(FileExistsError):
        builder.build_space(space_app.model_dir, out)
    # The built app, with no variable set, serves model/, offers demo.key and its examples, and says so in its log.
    for name in ("HF_LCRYPT_MODEL", "HF_LCRYPT_DEMO_KEY_FILE", "HF_LCRYPT_KEY", "HF_LCRYPT_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    app = load_script("built_space_app", out / "app.py")
    launched = {}
    monkeypatch.setattr(app.gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    monkeypatch.setattr(app.gr.Blocks, "block_thread", lambda self: None)
    monkeypatch.setattr(app, "remove_monitoring_routes", lambda demo: None)
    messages = []
    monkeypatch.setattr(app.logger, "warning", lambda msg, *a: messages.append(msg % a))
    app.main()
    assert launched["enable_monitoring"] is False
    assert any(f"PUBLIC demo key (key_id {demo_key.key_id})" in m for m in messages), messages
    served = app.load_model(str(out / "model"))
    assert served.info["key_id"] == demo_key.key_id and app.load_demo_key(served) == demo_key
    page = html.unescape(app.page_html(served, demo_key, app.model_facts(str(out / "model"), served)))
    assert "glioma" in page and "public (key_id" in page and "81.2%" in page
