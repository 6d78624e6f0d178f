"""Gradio Space of hf-lcrypt: private inference. The visitor's browser encrypts, the server classifies ciphertext.

The server holds a keyed model (HF_LCRYPT_MODEL: a folder or a Hub id; the remote-code model or its standard or ONNX
export, see hf_lcrypt/serving.py) and no key. The page (static/page.mjs) reads
the image with a plain file input, resizes it exactly as LCryptImageProcessor does, encrypts it with static/lcrypt.mjs
(docs/key-spec.md in JavaScript) and sends only the ciphertext PNG to `/classify_encrypted`. Python clients do the
same with `hf-lcrypt classify --url URL --key-file KEY IMAGES...`.

    HF_LCRYPT_MODEL=path/to/model python space/app.py

HF_LCRYPT_DEMO_KEY_FILE may name a *public* demo key for the served model, offered on the page as such. A secret key
variable (HF_LCRYPT_KEY, HF_LCRYPT_KEY_FILE) is ignored with a warning and dropped from the environment: the server
never needs the key.
"""

from __future__ import annotations

import html
import json
import logging
import mimetypes
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402  (after the analytics switch)
from PIL import Image, UnidentifiedImageError  # noqa: E402

from hf_lcrypt import LCryptKey  # noqa: E402
from hf_lcrypt.keys import KEY_ENV_VAR  # noqa: E402
from hf_lcrypt.serving import ServedModel, load_served_model  # noqa: E402

logger = logging.getLogger("hf_lcrypt.space")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
MODEL_ENV_VAR = "HF_LCRYPT_MODEL"
DEMO_KEY_ENV_VAR = "HF_LCRYPT_DEMO_KEY_FILE"
SECRET_ENV_VARS = ("HF_LCRYPT_KEY", KEY_ENV_VAR)
DEFAULT_MODEL = HERE / "model"
DEFAULT_DEMO_KEY = HERE / "demo.key"
EXAMPLES = sorted((HERE / "examples").glob("*.png"))
MAX_PIXELS = 20_000_000  # what the page accepts as a plain image (checked in the browser)
MAX_BYTES = 10 * 2**20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEAD = '<link rel="stylesheet" href="{static}/page.css"><script type="module" src="{static}/page.mjs"></script>'

mimetypes.add_type("text/javascript", ".mjs")  # browsers refuse ES modules served with another type


def drop_secret_variables() -> None:
    """The server must not need a key: a key variable left over from a server-side deployment is ignored."""
    for name in SECRET_ENV_VARS:
        if os.environ.pop(name, None):
            logger.warning("%s is set but ignored: this app never needs the key; remove it from the server.", name)


def load_model() -> ServedModel:
    source = os.environ.get(MODEL_ENV_VAR) or str(DEFAULT_MODEL)
    if source == str(DEFAULT_MODEL) and not DEFAULT_MODEL.is_dir():
        raise SystemExit(
            f"No model: set {MODEL_ENV_VAR} to a keyed model folder or Hub id, or its standard or ONNX export "
            f"(hf-lcrypt export), or put one in {source}."
        )
    served = load_served_model(source)
    logger.info("Serving %s (%s, key_id %s); the server holds no key", source, served.form, served.info["key_id"])
    return served


def load_demo_key(served: ServedModel) -> LCryptKey | None:
    """The public demo key the page may offer: only the served model's own, and only when one is shipped."""
    path = Path(os.environ.get(DEMO_KEY_ENV_VAR) or DEFAULT_DEMO_KEY)
    if not path.is_file():
        return None
    key = LCryptKey.from_hex(path.read_text())  # public by definition: no warning about who may read the file
    if key.key_id != served.info["key_id"]:
        logger.warning("%s is not the served model's key (key_id %s); no demo key is offered.", path, key.key_id)
        return None
    return key


# -- the endpoint -------------------------------------------------------------------------------------------------
def read_ciphertext(upload: Any, height: int, width: int) -> Image.Image:
    """The uploaded encrypted PNG as an RGB image of the model's size, or a clear error naming what is wrong.

    Ciphertext must be lossless (a JPEG's changes are spread over the whole block by the decryption, and the model
    then sees noise) and already at the model's size (resampling ciphertext mixes pixels across blocks).
    """
    path = upload.get("path") if isinstance(upload, dict) else upload
    if not path:
        raise gr.Error("Send one encrypted PNG.")
    if os.path.getsize(path) > MAX_BYTES:
        raise gr.Error(f"That file is over {MAX_BYTES >> 20} MB; an encrypted {width}x{height} PNG is far smaller.")
    with open(path, "rb") as f:
        if f.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
            raise gr.Error(
                "That file is not a PNG. Send the ciphertext as a lossless PNG: JPEG or WebP compression changes the "
                "encrypted pixels, and the model then sees noise."
            )
    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError):
        raise gr.Error("That PNG cannot be read; send the encrypted image as written by the encryption.") from None
    if image.size != (width, height):
        raise gr.Error(
            f"The encrypted image is {image.width}x{image.height}, but this model takes exactly {width}x{height}. "
            "Resize the plain image to the model's size first, then encrypt; never resize a ciphertext."
        )
    if image.mode == "RGBA" and image.getextrema()[3][0] < 255:
        raise gr.Error("The encrypted PNG has transparent pixels; save it as opaque RGB.")
    if image.mode not in ("RGB", "RGBA", "P"):
        raise gr.Error(f"The encrypted PNG is in mode {image.mode}; this model takes 8-bit RGB ciphertext.")
    return image.convert("RGB")


def label_value(probs: dict[str, float]) -> dict[str, float]:
    return dict(sorted(probs.items(), key=lambda item: -item[1]))


# -- the page -----------------------------------------------------------------------------------------------------
def file_url(path: Path) -> str:
    return f"/gradio_api/file={path}"


def page_html(served: ServedModel, demo_key: LCryptKey | None) -> str:
    """The client-side app. Its inputs live only in the browser: no Gradio component ever holds a plain image or key."""
    settings = {
        **served.info,
        "demo_key": demo_key.to_hex() if demo_key else None,  # public by definition: labelled so on the page
        "examples": [{"name": p.stem.replace("_", " "), "url": file_url(p)} for p in EXAMPLES],
        "max_pixels": MAX_PIXELS,
    }
    template = (STATIC / "page.html").read_text()
    return template.replace("{{settings}}", html.escape(json.dumps(settings), quote=True))


def build_demo(served: ServedModel, demo_key: LCryptKey | None = None) -> gr.Blocks:
    """The page and the API. Every event has an api_name; the one the page calls is `/classify_encrypted`."""
    height, width = served.height, served.width

    def classify_encrypted(ciphertext: Any) -> dict[str, float]:
        return label_value(served.probabilities(read_ciphertext(ciphertext, height, width)))

    def model_info() -> dict[str, Any]:
        return served.info

    with gr.Blocks(title="hf-lcrypt: private inference", analytics_enabled=False) as demo:
        gr.HTML(page_html(served, demo_key), elem_id="lcrypt-page")
        # The API: components kept off the page, since the page talks to the endpoint itself.
        upload = gr.File(label="Encrypted PNG", file_types=[".png"], visible=False)
        prediction = gr.Label(label="Prediction", num_top_classes=len(served.info["labels"]), visible=False)
        info = gr.JSON(visible=False)
        classify_button = gr.Button(visible=False)
        info_button = gr.Button(visible=False)
        classify_button.click(
            classify_encrypted,
            inputs=upload,
            outputs=prediction,
            api_name="classify_encrypted",
            preprocess=False,  # the raw upload, so that any bad file gets read_ciphertext's message
        )
        info_button.click(model_info, outputs=info, api_name="model_info")
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    drop_secret_variables()
    served = load_model()
    demo_key = load_demo_key(served)
    gr.set_static_paths([STATIC, *EXAMPLES])
    demo = build_demo(served, demo_key)
    demo.queue(default_concurrency_limit=4, max_size=64).launch(
        # Local runs stay on the loopback interface; Spaces set GRADIO_SERVER_NAME=0.0.0.0 themselves.
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        max_file_size=MAX_BYTES,
        head=HEAD.format(static=file_url(STATIC)),
    )


if __name__ == "__main__":
    main()
