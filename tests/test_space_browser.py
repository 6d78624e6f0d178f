"""The Space demo in a real browser: Debian's headless Chromium, driven by Playwright.

A browser that cannot start fails the test; set HF_LCRYPT_SKIP_BROWSER=1 to skip it explicitly instead.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from test_space import EXAMPLE, PASSPHRASE, launch_space

from hf_lcrypt import LCryptKey

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
def space_url(tmp_path_factory):
    for app in launch_space(tmp_path_factory.mktemp("space-browser")):
        yield app.url


def test_upload_encrypt_and_classify_in_the_browser(browser, space_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    console_errors: list[str] = []
    page.on("console", lambda message: console_errors.append(message.text) if message.type == "error" else None)
    # Hermetic: only the app itself is reachable (gradio's default theme would otherwise ask for web fonts).
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(space_url) else route.abort())
    page.goto(space_url, wait_until="domcontentloaded")
    page.locator("#run").wait_for(state="visible", timeout=60_000)

    page.locator("#upload input[type=file]").set_input_files(str(EXAMPLE))
    page.locator("#upload img").first.wait_for(state="visible", timeout=30_000)
    page.locator("#passphrase input, #passphrase textarea").first.fill(PASSPHRASE)
    page.locator("#run").click()

    encrypted = page.locator("#encrypted img").first
    encrypted.wait_for(state="visible", timeout=60_000)
    page.wait_for_function(
        "() => { const img = document.querySelector('#encrypted img'); "
        "return img && img.complete && img.naturalWidth > 0; }",
        timeout=30_000,
    )
    assert ".png" in (encrypted.get_attribute("src") or "")
    label = page.locator("#label-key")
    page.wait_for_function(
        "() => /class_\\d/.test(document.querySelector('#label-key')?.innerText || '')", timeout=30_000
    )
    assert "class_" in label.inner_text()
    corrupted = page.locator("#corrupted img").first
    corrupted.wait_for(state="visible", timeout=30_000)

    # Typing a noise level into the slider's box re-runs the prediction on a corrupted copy (a new image file).
    clean_src = corrupted.get_attribute("src")
    sigma = page.locator("#sigma input[type=number]").first
    sigma.fill("0.3")
    sigma.press("Enter")
    page.wait_for_function(
        "(src) => { const img = document.querySelector('#corrupted img'); return img && img.src !== src; }",
        arg=clean_src,
        timeout=30_000,
    )

    key_info = page.locator("#key-info").inner_text()
    assert LCryptKey.from_passphrase(PASSPHRASE).key_id in key_info
    assert PASSPHRASE not in page.locator("body").inner_text()  # the password field does not echo it

    shots = Path(tempfile.mkdtemp(prefix="hf-lcrypt-space-"))
    screenshot = shots / "space.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000
    assert not [e for e in console_errors if "Failed to load resource" not in e], console_errors
    page.close()
