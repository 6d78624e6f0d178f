"""The Space in a real browser (Debian's headless Chromium, driven by Playwright): the page encrypts locally and only
ciphertext reaches the server. Every request the page makes is recorded and searched for the secrets.

A browser that cannot start fails the test; set HF_LCRYPT_SKIP_BROWSER=1 to skip it explicitly instead.
"""

import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_space import EXAMPLE, PASSPHRASE, launch_space

from hf_lcrypt import LCryptImageProcessor, LCryptKey

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("HF_LCRYPT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",  # root in a container: the sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO_ROOT = Path(__file__).resolve().parent.parent
STATIC = REPO_ROOT / "space" / "static"
WRONG_KEY_LABEL = "hf-lcrypt-space/wrong-key"  # as in space/static/page.mjs
PNG = rb"\x89PNG.*?IEND\xaeB`\x82"
PNG_IN_MULTIPART = re.compile(rb'filename="([^"]+)"\r\nContent-Type: [^\r]*\r\n\r\n(' + PNG + b")", re.S)


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("HF_LCRYPT_SKIP_BROWSER") == "1":
        pytest.skip("HF_LCRYPT_SKIP_BROWSER=1")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        pytest.fail(f"playwright is not installed ({err}); pip install playwright, or set HF_LCRYPT_SKIP_BROWSER=1")
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"No Chromium at {CHROMIUM}: apt-get install -y chromium, or set HF_LCRYPT_SKIP_BROWSER=1")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except Exception as err:  # any launch failure must be loud, never a silent skip
            pytest.fail(f"Chromium at {CHROMIUM} did not start: {err}")
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    # The served model is folded with the passphrase's key; the server is never told either.
    yield from launch_space(tmp_path_factory.mktemp("space-browser"), key=LCryptKey.from_passphrase(PASSPHRASE))


class RecordingPage:
    """A page whose every request (HTTP and WebSocket) is recorded; requests outside the app are refused."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        self.requests: list[tuple[str, bytes]] = []  # (method and URL, body)
        self.console_errors: list[str] = []
        self.page.on("console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None)
        self.page.on("websocket", self._watch_socket)
        self.page.route("**/*", self._route(url))

    def _route(self, url: str):
        def handle(route):
            request = route.request
            self.requests.append((f"{request.method} {request.url}", request.post_data_buffer or b""))
            # Hermetic: only the app itself is reachable (gradio's default theme would otherwise ask for web fonts).
            route.continue_() if request.url.startswith(url) else route.abort()

        return handle

    def _watch_socket(self, socket) -> None:
        def sent(payload):
            self.requests.append((f"WS {socket.url}", payload if isinstance(payload, bytes) else payload.encode()))

        socket.on("framesent", sent)

    def uploads(self) -> dict[str, list[bytes]]:
        """The PNG files the page uploaded, by file name."""
        found: dict[str, list[bytes]] = {}
        for _, body in self.requests:
            for name, data in PNG_IN_MULTIPART.findall(body):
                found.setdefault(name.decode(), []).append(data)
        return found


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def model_probabilities(space, image: np.ndarray) -> dict[str, float]:
    batch = LCryptImageProcessor.for_model(space.model)(
        Image.fromarray(image), do_encrypt=False, do_resize=False, return_tensors="pt"
    )
    with torch.no_grad():
        probs = space.model(**batch).logits.softmax(-1)[0]
    return {space.model.config.id2label[i]: float(p) for i, p in enumerate(probs)}


def test_the_page_encrypts_locally_and_sends_only_ciphertext(browser, space, tmp_path):
    recorder = RecordingPage(browser, space.url)
    page = recorder.page
    page.goto(space.url, wait_until="domcontentloaded")
    page.locator("#lcrypt-app[data-ready=true]").wait_for(timeout=60_000)

    page.locator("#plain-file").set_input_files(str(EXAMPLE))
    page.locator("#passphrase").fill(PASSPHRASE)
    page.locator("#use-passphrase").click()
    page.wait_for_function("() => /key_id [0-9a-f]{16}/.test(document.querySelector('#key-status').innerText)")
    assert f"key_id {space.key.key_id}" in page.locator("#key-status").inner_text()
    page.locator("#run").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Done')", timeout=60_000)
    assert not page.locator("#status.error").count()
    assert "has seen 3 encrypted images" in page.locator("#status").inner_text()

    # The model's facts and the disclaimer are on the page.
    facts = page.locator("#model-facts").inner_text()
    assert "81.2% (156 images)" in facts and "breastmnist" in facts and "97.0% of the sign flips" in facts
    assert "not for diagnosis" in page.locator("#disclaimer").inner_text()
    # The wrong key's answer is a labelled demonstration, never styled as the result.
    demonstration = page.locator("#demonstration")
    assert "Demonstration, not a result" in demonstration.inner_text()
    assert demonstration.locator("#label-wrong li").count() == 4 and not page.locator(".result #label-wrong").count()
    weight = "(el) => getComputedStyle(el).fontWeight"
    assert page.locator("#label-key li").first.evaluate(weight) == "700"
    assert page.locator("#label-wrong li").first.evaluate(weight) == "400"
    assert demonstration.evaluate("(el) => getComputedStyle(el).borderStyle") == "dashed"

    # Noise and bit flips, applied in the browser to the ciphertext, change what the model says; the count is true.
    clean_label = page.locator("#label-corrupted").inner_text()
    page.locator("#sigma").evaluate("(el) => { el.value = '0.3'; el.dispatchEvent(new Event('change')); }")
    page.wait_for_function("(t) => document.querySelector('#label-corrupted').innerText !== t", arg=clean_label)
    page.wait_for_function("() => /has seen 4 encrypted images/.test(document.querySelector('#status').innerText)")

    # Kept under outputs/ (ignored by git) for a look at the page after the run.
    screenshot = REPO_ROOT / "outputs" / "screenshots" / "space-private-inference.png"
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000

    # Every upload has the same neutral name; what the server received is exactly the Python encryption of the same
    # resized pixels with the same key (twice: the clean copy of the noise panel), the wrong key's, and the noisy one.
    uploads = recorder.uploads()
    assert set(uploads) == {"ciphertext.png"}, list(uploads)
    sent_pixels = [pixels(data) for data in uploads["ciphertext.png"]]
    assert len(sent_pixels) == 4
    processor = LCryptImageProcessor.for_model(space.model, key=space.key)
    (expected,) = processor.encrypt_images([Image.open(EXAMPLE)])
    wrong = LCryptImageProcessor.for_model(space.model, key=space.key.derive(WRONG_KEY_LABEL), key_id=None)
    expected_wrong = np.asarray(wrong.encrypt_images([Image.open(EXAMPLE)])[0])
    assert sum(np.array_equal(p, np.asarray(expected)) for p in sent_pixels) == 2
    assert sum(np.array_equal(p, expected_wrong) for p in sent_pixels) == 1
    assert np.mean(sent_pixels[-1] != np.asarray(expected)) > 0.3  # the noisy copy
    sent = next(
        d
        for d, p in zip(uploads["ciphertext.png"], sent_pixels, strict=True)
        if np.array_equal(p, np.asarray(expected))
    )

    # The prediction shown is the model's on that ciphertext.
    probs = model_probabilities(space, pixels(sent))
    best = max(probs, key=probs.get)
    assert page.locator("#label-key").get_attribute("data-label") == best
    assert f"{best}: {100 * probs[best]:.1f} %" in page.locator("#label-key").inner_text()

    # No request carries the key, the passphrase, or the plain image (file bytes, decoded or resized pixels).
    plain_file = EXAMPLE.read_bytes()
    plain_full = np.asarray(Image.open(EXAMPLE).convert("RGB"))
    plain_resized = processor.decrypt_images([expected])[0]
    secrets = {
        "key hex": space.key.to_hex().encode(),
        "key HEX": space.key.to_hex().upper().encode(),
        "passphrase": PASSPHRASE.encode(),
        "passphrase (URL-encoded)": PASSPHRASE.replace(" ", "+").encode(),
        "plain file": plain_file,
        "plain pixels": plain_full.tobytes(),
        "plain grey pixels": plain_full[..., 0].tobytes(),
        "resized plain pixels": np.asarray(plain_resized).tobytes(),
    }
    assert len(recorder.requests) > 5
    for what, body in recorder.requests:
        for name, secret in secrets.items():
            assert secret not in body and secret.decode("latin-1") not in what, f"{name} in {what}"
    # Nor any PNG in any request, multipart or not.
    for what, body in recorder.requests:
        for data in re.findall(PNG, body, re.S):
            sent_pixels = pixels(data)
            assert not np.array_equal(sent_pixels, np.asarray(plain_resized)), f"the plain image in {what}"
            assert sent_pixels.shape != plain_full.shape, f"a full-size image in {what}"
    # Another image clears the previous image's answers; so does a file that is not an image.
    page.locator("#plain-file").set_input_files(str(EXAMPLE.with_name("pituitary.png")))
    page.wait_for_function("() => /Image read/.test(document.querySelector('#status').innerText)")
    for label in ("#label-key", "#label-wrong", "#label-corrupted"):
        assert page.locator(f"{label} li").count() == 0 and page.locator(label).get_attribute("data-label") is None
    page.locator("#run").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Done')", timeout=60_000)
    assert "has seen 3 encrypted images" in page.locator("#status").inner_text()
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not an image")
    page.locator("#plain-file").set_input_files(str(not_an_image))
    page.locator("#status.error").wait_for()
    assert page.locator("#label-key li").count() == 0 and page.locator("#run").is_disabled()
    assert PASSPHRASE not in page.locator("body").inner_text()
    assert not [e for e in recorder.console_errors if "Failed to load resource" not in e], recorder.console_errors
    page.close()


def test_a_key_that_is_not_the_models_is_refused_without_a_request(browser, space, tmp_path):
    recorder = RecordingPage(browser, space.url)
    page = recorder.page
    page.goto(space.url, wait_until="domcontentloaded")
    page.locator("#lcrypt-app[data-ready=true]").wait_for(timeout=60_000)
    assert page.locator("#demo-key").is_hidden()  # this app ships no public demo key
    assert not page.locator("#generate-key").count()  # a new key could never be the model's
    status = page.locator("#key-status")
    page.locator("#plain-file").set_input_files(str(EXAMPLE))
    page.locator("#key-file").set_input_files(str(space.key.save(tmp_path / "model.key")))
    page.wait_for_function("() => /key file/.test(document.querySelector('#key-status').innerText)")
    assert f"key_id {space.key.key_id}, the model's key" in status.inner_text() and page.locator("#run").is_enabled()
    page.locator("#run").click()
    page.wait_for_function("() => document.querySelector('#status').innerText.startsWith('Done')", timeout=60_000)
    assert page.locator("#label-key li").count() == 4
    # Another key: refused, the previous answers cleared, and nothing can be sent.
    requests_before = len(recorder.requests)
    other = LCryptKey.generate()
    page.locator("#key-hex").fill(other.to_hex().upper())
    page.locator("#use-hex").click()
    text = status.inner_text()
    assert "refused" in text and f"key_id is {other.key_id}" in text and f"expects key_id {space.key.key_id}" in text
    assert page.locator("#key-status.refused").count() == 1
    assert page.locator("#label-key li").count() == 0 and page.locator("#run").is_disabled()
    page.locator("#run").click(force=True)  # a disabled button does nothing, even when clicked
    page.wait_for_timeout(1000)
    assert len(recorder.requests) == requests_before
    page.screenshot(path=str(REPO_ROOT / "outputs" / "screenshots" / "space-key-refused.png"), full_page=True)
    page.locator("#key-hex").fill("not a key")
    page.locator("#use-hex").click()
    assert "not all hex digits" in page.locator("#status.error").inner_text()
    for secret in (space.key.to_hex(), other.to_hex()):
        assert all(secret.encode() not in body and secret not in what for what, body in recorder.requests)
    page.close()


@pytest.mark.parametrize("module", ["page.mjs", "lcrypt.mjs", "vendor/noble-hashes/sha2.js"])
def test_a_tampered_module_is_refused(browser, space, module):
    """Subresource Integrity: a module that differs from the hashed one, the page's or one it imports, never runs."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

    def tamper(route):
        body = route.fetch().text() + "\nglobalThis.leak = true;\n"
        route.fulfill(status=200, body=body, headers={"content-type": "text/javascript"})

    page.route(f"**/static/{module}", tamper)
    page.goto(space.url, wait_until="domcontentloaded")
    page.locator("#lcrypt-app").wait_for(timeout=60_000)
    page.wait_for_timeout(3000)
    assert page.locator("#lcrypt-app").get_attribute("data-ready") is None
    assert not page.evaluate("() => globalThis.leak === true")
    assert any("integrity" in e for e in errors), errors
    page.close()


def test_the_spec_vectors_in_chromium(browser, space):
    """tests/js/check_vectors.mjs, run on the module the page loads, inside the browser."""
    page = browser.new_page()
    page.goto(space.url, wait_until="domcontentloaded")
    failures = page.evaluate(
        """async ([checker, base, vectors]) => {
            const check = await import(URL.createObjectURL(new Blob([checker], { type: "text/javascript" })));
            const lcrypt = await import(`${base}/lcrypt.mjs`);
            const { sha256 } = await import(`${base}/vendor/noble-hashes/sha2.js`);
            return check.checkVectors(lcrypt, sha256, vectors);
        }""",
        [
            (REPO_ROOT / "tests" / "js" / "check_vectors.mjs").read_text(),
            f"{space.url.rstrip('/')}/gradio_api/file={STATIC}",
            json.loads((REPO_ROOT / "tests" / "vectors" / "v1.json").read_text()),
        ],
    )
    assert failures == []
    page.close()
