"""The Space demo, run as `python space/app.py` on a tiny keyed model and driven through gradio_client."""

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

from hf_lcrypt import BlockCipher, LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.hub.publish import SPACE_MAX_MEGABYTES, SPACE_MAX_MEGAPIXELS

pytestmark = pytest.mark.slow  # the app runs in its own process

APP = REPO_ROOT / "space" / "app.py"
EXAMPLE = REPO_ROOT / "space" / "examples" / "glioma.png"
IMAGE_SIZE = 64
PASSPHRASE = "correct horse battery staple, space test"


@dataclass
class SpaceApp:
    url: str
    key: LCryptKey  # the served model's key
    plain: torch.nn.Module  # the plain ViT the served model was folded from
    log: Path
    downloads: Path

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


def launch_space(folder: Path) -> Iterator[SpaceApp]:
    """Build a tiny keyed model in `folder`, serve it with `python space/app.py` on a free port, stop it after."""
    torch.manual_seed(0)
    key = LCryptKey.generate()
    plain = tiny_vit(image_size=IMAGE_SIZE, patch_size=8)
    keyed = LCryptViTForImageClassification.from_plain(plain, key, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    keyed.save_pretrained(folder / "model")
    LCryptImageProcessor.for_model(keyed).save_pretrained(folder / "model")
    key_file = key.save(folder / "model.key")
    port = _free_port()
    env = {
        **os.environ,
        "HF_LCRYPT_MODEL": str(folder / "model"),
        "HF_LCRYPT_KEY_FILE": str(key_file),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(folder / "gradio-tmp"),
        "HF_HUB_OFFLINE": "1",
    }
    log = folder / "space.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, str(APP)], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=folder
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        _wait_until_up(url, process, log)
        yield SpaceApp(url, key, plain, log, folder / "downloads")
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


def plain_probabilities(app: SpaceApp, original: np.ndarray) -> dict[str, float]:
    """What the plain model says about the (resized) original: the keyed model must say the same."""
    processor = LCryptImageProcessor(image_size=IMAGE_SIZE, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    pixel_values = processor(Image.fromarray(original), do_encrypt=False, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = app.plain(pixel_values).logits.softmax(-1)[0]
    return {app.plain.config.id2label[i]: float(p) for i, p in enumerate(probs)}


def confidences(label: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label["confidences"]}


def read(path: str) -> np.ndarray:
    assert path.endswith(".png"), path  # lossless, or the encrypted image could not be decrypted
    return np.asarray(Image.open(path).convert("RGB"))


def test_api_lists_the_named_endpoints(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/classify", "/perturb", "/generate_key"} <= set(endpoints)
    assert [p["parameter_name"] for p in endpoints["/perturb"]["parameters"]] == [
        "upload",
        "passphrase",
        "sigma",
        "rate",
    ]


def test_classify_with_a_passphrase(space_app, client):
    result = client.predict(handle_file(EXAMPLE), PASSPHRASE, api_name="/classify")
    original_path, encrypted_path, decrypted_path, right, wrong, plain, key_info = result
    original, encrypted, decrypted = read(original_path), read(encrypted_path), read(decrypted_path)
    assert original.shape == encrypted.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    assert np.array_equal(decrypted, original) and not np.array_equal(encrypted, original)
    key = LCryptKey.from_passphrase(PASSPHRASE)
    cipher = BlockCipher(key, IMAGE_SIZE, 8)
    assert np.array_equal(cipher.encrypt(original), encrypted)  # the passphrase's key, not the demo key
    assert key.key_id in key_info and "passphrase" in key_info and PASSPHRASE not in key_info
    for label in (right, wrong, plain):
        assert set(label) == {"label", "confidences"} and isinstance(label["label"], str)
        assert len(label["confidences"]) == 3 and all(isinstance(c["confidence"], float) for c in label["confidences"])
    # The copy moved to the passphrase's key predicts exactly what the plain model predicts on the plain image.
    expected = plain_probabilities(space_app, original)
    for name, confidence in confidences(right).items():
        assert confidence == pytest.approx(expected[name], abs=1e-4)
    assert right["label"] == max(expected, key=expected.get)


def test_perturb_moves_the_prediction(client):
    _, encrypted_path, _, right, *_ = client.predict(handle_file(EXAMPLE), PASSPHRASE, api_name="/classify")
    clean_path, clean_label = client.predict(handle_file(EXAMPLE), PASSPHRASE, 0.0, 0.0, api_name="/perturb")
    assert np.array_equal(read(clean_path), read(encrypted_path))
    assert confidences(clean_label) == pytest.approx(confidences(right), abs=1e-6)
    noisy_path, noisy_label = client.predict(handle_file(EXAMPLE), PASSPHRASE, 0.3, 0.05, api_name="/perturb")
    assert np.mean(read(noisy_path) != read(encrypted_path)) > 0.3
    assert confidences(noisy_label) != pytest.approx(confidences(right), abs=1e-6)


def test_generated_and_demo_keys(space_app):
    fresh = space_app.client()
    original_path, _, _, right, _, _, demo_info = fresh.predict(handle_file(EXAMPLE), "", api_name="/classify")
    assert f"key_id {space_app.key.key_id}" in demo_info and "demo key" in demo_info
    # Copies for other keys (made by earlier requests) share tensors with the served model but left it unchanged.
    expected = plain_probabilities(space_app, read(original_path))
    assert confidences(right) == pytest.approx({name: expected[name] for name in confidences(right)}, abs=1e-4)
    passphrase, generated_info = fresh.predict(api_name="/generate_key")
    assert passphrase == "" and "generated" in generated_info
    generated_id = generated_info.split("key_id ")[1][:16]
    assert generated_id != space_app.key.key_id
    *_, info = fresh.predict(handle_file(EXAMPLE), "", api_name="/classify")
    assert f"key_id {generated_id}" in info  # the session keeps its generated key


def test_bad_uploads_get_a_friendly_error(client, tmp_path):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    with pytest.raises(AppError, match="not an image"):
        client.predict(handle_file(not_image), "", api_name="/classify")
    huge = tmp_path / "huge.png"
    Image.new("L", (5000, SPACE_MAX_MEGAPIXELS * 210)).save(huge)  # just over the limit, in a small file
    # The limits the Space README (rendered by hf_lcrypt.publishing) announces are the ones the app enforces.
    with pytest.raises(AppError, match=f"at most {SPACE_MAX_MEGAPIXELS} megapixels"):
        client.predict(handle_file(huge), "", api_name="/classify")
    heavy = tmp_path / "heavy.png"
    heavy.write_bytes(np.random.default_rng(0).bytes((SPACE_MAX_MEGABYTES + 1) * 2**20))
    with pytest.raises(ValueError, match=f"maximum file size of {SPACE_MAX_MEGABYTES * 2**20} bytes"):  # not uploaded
        client.predict(handle_file(heavy), "", api_name="/classify")


def test_eight_concurrent_predictions(space_app, client):
    def one(i: int) -> tuple[str, str]:
        *_, key_info = client.predict(handle_file(EXAMPLE), f"{PASSPHRASE} {i}", api_name="/classify")
        return key_info, f"{PASSPHRASE} {i}"

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(8)))
    for key_info, passphrase in results:
        assert f"key_id {LCryptKey.from_passphrase(passphrase).key_id}" in key_info


def test_no_secret_in_the_server_log(space_app, client):
    client.predict(handle_file(EXAMPLE), PASSPHRASE, api_name="/classify")  # at least one request before looking
    log = space_app.log.read_text()
    assert "Running on" in log
    for secret in (PASSPHRASE, space_app.key.to_hex(), LCryptKey.from_passphrase(PASSPHRASE).to_hex()):
        assert secret not in log
