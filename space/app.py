"""Gradio demo of hf-lcrypt: encrypt an image with a key, classify it with a keyed ViT, and see what a wrong key,
a plain image, noise and bit flips do to the prediction.

The app serves one keyed model (HF_LCRYPT_MODEL: a folder or a Hub id) whose own key it is given (HF_LCRYPT_KEY_FILE,
or HF_LCRYPT_KEY as a Space secret). A visitor's passphrase or generated key gets its own copy of the model, moved to
that key with `rekey`; the served model is never changed. Keys and passphrases are never shown or logged: the page
shows only a key's public `key_id`.

    HF_LCRYPT_MODEL=path/to/model HF_LCRYPT_KEY_FILE=path/to/model.key python space/app.py
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from itertools import chain
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402  (after the analytics switch)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification  # noqa: E402
from hf_lcrypt.attacks.corruptions import bit_flips, gaussian_noise  # noqa: E402
from hf_lcrypt.keys import KEY_ENV_VAR  # noqa: E402

logger = logging.getLogger("hf_lcrypt.space")

HERE = Path(__file__).resolve().parent
MODEL_ENV_VAR = "HF_LCRYPT_MODEL"
KEY_HEX_ENV_VAR = "HF_LCRYPT_KEY"
DEFAULT_MODEL = HERE / "model"
EXAMPLES = sorted((HERE / "examples").glob("*.png"))
MAX_PIXELS = 20_000_000
MAX_BYTES = 10 * 2**20
MAX_PASSPHRASE = 1024
# The "wrong key" is derived from the visitor's key, so that the same inputs always give the same page.
WRONG_KEY_LABEL = "hf-lcrypt-space/wrong-key"
NOISE_SEED = 0
# Model-size images are small: scale them up without smoothing, so that the blocks stay visible.
CSS = ".pixelated img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"
OUTPUT_HEIGHT = 224
OUTPUT_DIR = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()) / "hf-lcrypt-space"


class KeyedModels:
    """The served model and its copies moved to other keys.

    A copy shares every tensor except the embeddings with the served model (only those change under `rekey`), so one
    costs a few megabytes even for a ViT-Base; the `capacity` most recently used copies are kept.
    """

    def __init__(self, model: LCryptViTForImageClassification, key: LCryptKey, capacity: int = 16):
        if model.config.key_id != key.key_id:
            raise ValueError(
                f"The key (key_id {key.key_id}) is not the one the model is folded with (key_id {model.config.key_id})."
            )
        self.base = model.eval()
        self.base_key = key
        self.capacity = capacity
        # Images reach the model already encrypted: the processor only normalises them.
        self.processor = LCryptImageProcessor.for_model(model)
        self._copies: OrderedDict[str, LCryptViTForImageClassification] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.base.config.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def for_key(self, key: LCryptKey) -> LCryptViTForImageClassification:
        if key == self.base_key:
            return self.base
        with self._lock:
            model = self._copies.get(key.key_id)
            if model is None:
                shared = {
                    id(tensor): tensor
                    for name, tensor in chain(self.base.named_parameters(), self.base.named_buffers())
                    if not name.startswith("vit.embeddings.")
                }
                model = copy.deepcopy(self.base, memo=shared)
                model.rekey(key, current_key=self.base_key)
                self._copies[key.key_id] = model
                if len(self._copies) > self.capacity:
                    self._copies.popitem(last=False)
            self._copies.move_to_end(key.key_id)
            return model

    def probabilities(self, model: LCryptViTForImageClassification, images: list[np.ndarray]) -> list[dict[str, float]]:
        """Class probabilities for (H, W, 3) uint8 images that are already at the model's size (and encrypted)."""
        batch = self.processor(
            [Image.fromarray(a) for a in images], do_encrypt=False, do_resize=False, return_tensors="pt"
        )
        with torch.inference_mode():
            probs = model(**batch).logits.softmax(-1)
        names = model.config.id2label
        return [{names[i]: float(p) for i, p in enumerate(row)} for row in probs.tolist()]


def load_models() -> KeyedModels:
    """The served model from HF_LCRYPT_MODEL (default: space/model) and its key from the environment."""
    source = os.environ.get(MODEL_ENV_VAR) or str(DEFAULT_MODEL)
    # A Space secret arrives as an environment variable; drop it so that no child process inherits it.
    key_hex = os.environ.pop(KEY_HEX_ENV_VAR, None)
    key_file = os.environ.get(KEY_ENV_VAR)
    if key_hex:
        key = LCryptKey.from_hex(key_hex)
    elif key_file:
        key = LCryptKey.load(key_file)
    else:
        raise SystemExit(
            f"Set {KEY_ENV_VAR} to the key file the model is folded with (or {KEY_HEX_ENV_VAR} to the key in hex, "
            "as a Space secret); the app needs it to move copies of the model to the visitors' keys."
        )
    if source == str(DEFAULT_MODEL) and not DEFAULT_MODEL.is_dir():
        raise SystemExit(f"No model: set {MODEL_ENV_VAR} to a keyed model folder or Hub id (or put one in {source}).")
    model = LCryptViTForImageClassification.from_pretrained(source)
    logger.info("Serving %s (key_id %s)", source, model.config.key_id)
    return KeyedModels(model, key)


# -- inputs -------------------------------------------------------------------------------------------------------
def load_upload(upload: Any) -> Image.Image:
    """The uploaded file as an RGB image, or a friendly error for anything that is not a readable, modest image.

    The events take the raw upload (preprocess=False), so that even a non-image sent through the API gets this
    message rather than a decoder's traceback; the size is checked before any pixel is decoded.
    """
    path = upload.get("path") if isinstance(upload, dict) else upload
    if not path:
        raise gr.Error("Upload an image or pick one of the examples first.")
    size = os.path.getsize(path)
    if size > MAX_BYTES:
        raise gr.Error(f"That file is {size / 2**20:.1f} MB; please upload an image of at most {MAX_BYTES >> 20} MB.")
    try:
        with Image.open(path) as image:
            width, height = image.size
            picture = image.convert("RGB") if width * height <= MAX_PIXELS else None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError):
        raise gr.Error("That file is not an image this demo can read; please upload a PNG or JPEG.") from None
    if picture is None:
        raise gr.Error(
            f"That image is {width}x{height} ({width * height / 1e6:.0f} megapixels); please upload one of at most "
            f"{MAX_PIXELS // 1_000_000} megapixels."
        )
    return picture


def session_key(passphrase: str | None, generated: LCryptKey | None, default: LCryptKey) -> tuple[LCryptKey, str]:
    """The key for this request and where it came from: the passphrase, else a generated key, else the demo's."""
    if passphrase:
        if len(passphrase) > MAX_PASSPHRASE:
            raise gr.Error(f"Please use a passphrase of at most {MAX_PASSPHRASE} characters.")
        return LCryptKey.from_passphrase(passphrase), "your passphrase"
    if generated is not None:
        return generated, "a generated key"
    return default, "the demo key"


def key_markdown(key: LCryptKey, origin: str) -> str:
    return f"Key from {origin}: `key_id {key.key_id}`. The key itself never leaves the server."


def png_file(pixels: np.ndarray, name: str) -> str:
    """Save an output image as a lossless PNG named by its content, written atomically.

    Handing gradio arrays makes it rewrite one shared cache file in place when concurrent requests produce the same
    image, and a download of that file can then break mid-stream; a finished file that is never rewritten cannot.
    """
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    folder = OUTPUT_DIR / hashlib.sha256(data).hexdigest()[:32]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    if not path.exists():
        fd, staging = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(staging, path)
    return str(path)


def _labels(probs: dict[str, float]) -> dict[str, float]:
    return dict(sorted(probs.items(), key=lambda item: -item[1]))


# -- the app ------------------------------------------------------------------------------------------------------
def build_demo(models: KeyedModels) -> gr.Blocks:
    """The Blocks app around one served model; every event has an api_name."""
    height, width = models.image_size

    def prepare(upload: Any, passphrase: str | None, generated: LCryptKey | None):
        picture = load_upload(upload)
        key, origin = session_key(passphrase, generated, models.base_key)
        model = models.for_key(key)
        plain = np.asarray(picture.resize((width, height), Image.Resampling.BILINEAR))
        return model, model.cipher(key), key, origin, plain

    def classify(upload: Any, passphrase: str | None, generated: LCryptKey | None):
        model, cipher, key, origin, plain = prepare(upload, passphrase, generated)
        encrypted = cipher.encrypt(plain)
        wrong = model.cipher(key.derive(WRONG_KEY_LABEL)).encrypt(plain)
        right, wrong_probs, plain_probs = models.probabilities(model, [encrypted, wrong, plain])
        return (
            png_file(plain, "original"),
            png_file(encrypted, "encrypted"),
            png_file(cipher.decrypt(encrypted), "decrypted"),
            _labels(right),
            _labels(wrong_probs),
            _labels(plain_probs),
            key_markdown(key, origin),
        )

    def perturb(upload: Any, passphrase: str | None, generated: LCryptKey | None, sigma: float, rate: float):
        model, cipher, _, _, plain = prepare(upload, passphrase, generated)
        encrypted = torch.from_numpy(cipher.encrypt(plain)).permute(2, 0, 1).unsqueeze(0)
        generator = torch.Generator().manual_seed(NOISE_SEED)
        corrupted = bit_flips(gaussian_noise(encrypted, float(sigma), generator), float(rate), generator)
        corrupted = corrupted[0].permute(1, 2, 0).contiguous().numpy()
        (probs,) = models.probabilities(model, [corrupted])
        return png_file(corrupted, "corrupted"), _labels(probs)

    def generate_key():
        key = LCryptKey.generate()
        return key, "", key_markdown(key, "a generated key")

    with gr.Blocks(title="hf-lcrypt demo", analytics_enabled=False) as demo:
        generated = gr.State(None)
        gr.Markdown(
            "# hf-lcrypt: classify images you cannot see\n"
            "A Vision Transformer with a secret key folded into its weights classifies images encrypted with that key. "
            "Upload an image, choose a key, and compare the prediction on the encrypted image with what a **wrong "
            "key** and the **plain** image give. The passphrase and the key never leave the server; only the key's "
            f"public fingerprint is shown. Images up to {MAX_PIXELS // 1_000_000} megapixels and {MAX_BYTES >> 20} MB."
        )
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.Image(
                    label="Image",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=OUTPUT_HEIGHT,
                    elem_id="upload",
                )
                if EXAMPLES:
                    gr.Examples([[str(p)] for p in EXAMPLES], inputs=[upload], label="Examples (brain MRI, CC0)")
                passphrase = gr.Textbox(
                    label="Passphrase",
                    type="password",
                    placeholder="empty: the demo key",
                    max_length=MAX_PASSPHRASE,
                    elem_id="passphrase",
                )
                with gr.Row():
                    new_key = gr.Button("Generate key", elem_id="generate-key")
                    run = gr.Button("Encrypt and classify", variant="primary", elem_id="run")
                key_info = gr.Markdown(elem_id="key-info")
            with gr.Column(scale=2):
                with gr.Row():
                    images = {
                        name: gr.Image(
                            label=label,
                            format="png",
                            interactive=False,
                            height=OUTPUT_HEIGHT,
                            elem_id=name,
                            elem_classes="pixelated",
                        )
                        for name, label in (
                            ("original", "Original (model size)"),
                            ("encrypted", "Encrypted"),
                            ("decrypted", "Decrypted"),
                        )
                    }
                with gr.Row():
                    label_key = gr.Label(label="Encrypted with your key", num_top_classes=3, elem_id="label-key")
                    label_wrong = gr.Label(label="Encrypted with a wrong key", num_top_classes=3, elem_id="label-wrong")
                    label_plain = gr.Label(label="Plain image", num_top_classes=3, elem_id="label-plain")
        gr.Markdown("### Noise and bit flips on the encrypted image")
        with gr.Row():
            sigma = gr.Slider(0.0, 0.5, value=0.0, step=0.01, label="Gaussian noise sigma", elem_id="sigma")
            rate = gr.Slider(0.0, 0.2, value=0.0, step=0.005, label="Bit-flip rate", elem_id="rate")
        with gr.Row():
            corrupted = gr.Image(
                label="Corrupted encrypted image",
                format="png",
                interactive=False,
                height=OUTPUT_HEIGHT,
                elem_id="corrupted",
                elem_classes="pixelated",
            )
            label_corrupted = gr.Label(label="Prediction on it", num_top_classes=3, elem_id="label-corrupted")

        key_inputs = [upload, passphrase, generated]
        classified = run.click(
            classify,
            inputs=key_inputs,
            outputs=[*images.values(), label_key, label_wrong, label_plain, key_info],
            api_name="classify",
            preprocess=False,
        )
        perturb_io = {"inputs": [*key_inputs, sigma, rate], "outputs": [corrupted, label_corrupted]}
        gr.on(
            [sigma.input, rate.input],
            perturb,
            **perturb_io,
            api_name="perturb",
            preprocess=False,
            trigger_mode="always_last",  # one run for the last position of a drag, not one per step
        )
        # Refresh the corrupted view after each classification; the same work as /perturb, so not a public endpoint.
        classified.success(
            perturb, **perturb_io, api_name="perturb_after_classify", api_visibility="private", preprocess=False
        )
        new_key.click(generate_key, outputs=[generated, passphrase, key_info], api_name="generate_key")
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    demo = build_demo(load_models())
    demo.queue(default_concurrency_limit=4, max_size=64).launch(
        # Local runs stay on the loopback interface; Spaces set GRADIO_SERVER_NAME=0.0.0.0 themselves.
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        max_file_size=MAX_BYTES,
        allowed_paths=[str(HERE / "examples"), str(OUTPUT_DIR)],
        css=CSS,
    )


if __name__ == "__main__":
    main()
