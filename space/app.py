"""Gradio Space of hf-lcrypt: private inference. The visitor's browser encrypts, the server classifies ciphertext.

The server holds a keyed model (HF_LCRYPT_MODEL: a folder or a Hub id, of the keyed model or of its standard or
ONNX export, see hf_lcrypt/serving.py) and no key. The page (static/page.mjs) reads
the image with a plain file input, resizes it exactly as LCryptImageProcessor does, encrypts it with static/lcrypt.mjs
(docs/key-spec.md in JavaScript) and sends only the ciphertext PNG to `/classify_encrypted`. Python clients do the
same with `hf-lcrypt classify --url URL --key-file KEY IMAGES...`.

    HF_LCRYPT_MODEL=path/to/model python space/app.py

HF_LCRYPT_DEMO_KEY_FILE may name a *public* demo key for the served model, offered on the page as such (build one
with `scripts/build_space.py --demo-key`, which moves a copy of the model to a fresh key). The app refuses to start
while a secret key variable (HF_LCRYPT_KEY, HF_LCRYPT_KEY_FILE) is set: the server never needs the key, and a variable
stays readable in the process's environment however the app drops it.

What the server is sent lives only as long as its request: each upload is read into memory and deleted before it is
decoded, uploads never classified are deleted within a minute, and Gradio's monitoring page is off.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import logging
import mimetypes
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402  (after the analytics switch)
from gradio.utils import get_upload_folder, is_in_or_equal  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from hf_lcrypt import LCryptKey  # noqa: E402
from hf_lcrypt.hub.cards import dataset_title, sort_results  # noqa: E402
from hf_lcrypt.keys import KEY_ENV_VAR, KeyMismatchError, check_key_id  # noqa: E402
from hf_lcrypt.page_integrity import compute_manifest  # noqa: E402
from hf_lcrypt.serving import ServedModel, load_served_model  # noqa: E402

logger = logging.getLogger("hf_lcrypt.space")

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
MODEL_ENV_VAR = "HF_LCRYPT_MODEL"
DEMO_KEY_ENV_VAR = "HF_LCRYPT_DEMO_KEY_FILE"
SECRET_ENV_VARS = ("HF_LCRYPT_KEY", KEY_ENV_VAR)
DEFAULT_MODEL = HERE / "model"
DEFAULT_DEMO_KEY = HERE / "demo.key"
_NO_DEMO_KEY = "The page goes on without one: no demo key is offered."
EXAMPLES_DIR = HERE / "examples"  # the served model's own images, written by build_space.py --examples
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_PIXELS = 20_000_000  # what the page accepts as a plain image (checked in the browser)
MAX_BYTES = 10 * 2**20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DISCLAIMER = "A research demonstration of encrypted inference, not a medical device: not for diagnosis."

mimetypes.add_type("text/javascript", ".mjs")  # browsers refuse ES modules served with another type


# -- the model ----------------------------------------------------------------------------------------------------
def load_model(source: str) -> ServedModel:
    """The served model from a local folder or a Hub id: the keyed model, or its standard or ONNX export (`hf-lcrypt
    export`), which runs on transformers' own ViT or ONNX Runtime (hf_lcrypt/serving.py). The one place that knows
    how a served model is loaded."""
    return load_served_model(source)


def probabilities(served: ServedModel, image: Image.Image) -> dict[str, float]:
    """The class probabilities, or the processor's own message (another key_id, edited parameters) as a gr.Error."""
    try:
        return served.probabilities(image)
    except ValueError as err:
        raise gr.Error(str(err).replace("Image 0", "The encrypted image")) from None


def refuse_secret_variables() -> None:
    """The server must not hold a key: a key variable in its environment stops it (dropping it from os.environ would
    leave it in /proc/<pid>/environ, readable for the process's lifetime)."""
    found = [name for name in SECRET_ENV_VARS if os.environ.get(name)]
    if found:
        raise SystemExit(
            f"{' and '.join(found)} set: this app never needs the key and refuses to run with it in its environment. "
            "Remove the variable (or the Space secret) and start again."
        )


def model_source() -> str:
    source = os.environ.get(MODEL_ENV_VAR) or str(DEFAULT_MODEL)
    if source == str(DEFAULT_MODEL) and not DEFAULT_MODEL.is_dir():
        raise SystemExit(
            f"No model: set {MODEL_ENV_VAR} to a keyed model folder or Hub id, or its standard or ONNX export "
            f"(hf-lcrypt export), or put one in {source}."
        )
    return source


def read_model_json(source: str | None, name: str) -> dict[str, Any]:
    """A JSON file that a model folder or repository may carry (metrics.json, weights_only_attack.json), or {}."""
    if source is None:
        return {}
    path = Path(source) / name
    if not Path(source).is_dir():
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, name))
        except Exception:  # a repository without that file: the page says the figure is not published
            return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def model_facts(source: str | None, served: ServedModel) -> dict[str, Any]:
    """What the page tells a visitor about the model, from its metrics.json and weights_only_attack.json."""
    metrics = read_model_json(source, "metrics.json")
    results = sort_results(metrics)
    accuracy = next((value for mid, _, value in results.main if mid == "accuracy"), None)
    test = metrics.get("test") if isinstance(metrics.get("test"), dict) else {}
    weights_only = read_model_json(source, "weights_only_attack.json")
    return {
        "task": f"image classification into {len(served.info['labels'])} classes",
        "classes": served.info["labels"],
        "dataset": dataset_title(metrics.get("dataset")),
        "accuracy": accuracy,
        "split": results.split,
        "test_images": test.get("num_images"),
        "weights_only": {
            k: weights_only[k] for k in ("flips_right", "pixels_in_place", "blocks_in_place") if k in weights_only
        },
    }


def load_demo_key(served: ServedModel) -> LCryptKey | None:
    """The public demo key the page may offer: only the served model's own, and only when one is shipped."""
    path = Path(os.environ.get(DEMO_KEY_ENV_VAR) or DEFAULT_DEMO_KEY)
    if not path.is_file():
        return None
    key = LCryptKey.from_hex(path.read_text())  # public by definition: no warning about who may read the file
    try:
        check_key_id(key.key_id, served.info["key_id"], str(path), "the served model is folded with", _NO_DEMO_KEY)
    except KeyMismatchError as err:
        logger.warning("%s", err)
        return None
    return key


# -- the endpoint -------------------------------------------------------------------------------------------------
class UploadTaker:
    """Reads each upload into memory and deletes its file (and the file's folder) at once.

    Gradio stores an upload in a folder named by its content's hash, so two identical uploads in flight share one
    file: the bytes just taken stay in memory for `ttl` seconds, under that path, for the other request.
    """

    def __init__(self, ttl: float = 30.0):
        self.ttl = ttl
        self._recent: dict[str, tuple[float, bytes]] = {}
        self._lock = threading.Lock()

    def __call__(self, upload: Any) -> bytes:
        path = upload.get("path") if isinstance(upload, dict) else upload
        if not path:
            raise gr.Error("Send one encrypted PNG.")
        folder = get_upload_folder()
        if not is_in_or_equal(path, folder):
            raise gr.Error("Send the encrypted PNG as an upload.")
        with self._lock:
            now = time.monotonic()
            self._recent = {p: (t, data) for p, (t, data) in self._recent.items() if now - t < self.ttl}
            try:
                if os.path.getsize(path) > MAX_BYTES:
                    raise gr.Error(f"That file is over {MAX_BYTES >> 20} MB; an encrypted PNG is far smaller.")
                data = Path(path).read_bytes()
            except FileNotFoundError:
                if path in self._recent:
                    return self._recent[path][1]
                raise gr.Error("The upload is gone; send the encrypted PNG again.") from None
            finally:
                _delete_upload(Path(path), Path(folder))
            self._recent[path] = (now, data)
            return data


def _delete_upload(path: Path, folder: Path) -> None:
    path.unlink(missing_ok=True)
    if path.parent != folder and is_in_or_equal(path.parent, folder):
        with contextlib.suppress(OSError):  # not empty: another name was uploaded with the same content
            path.parent.rmdir()


def png_header_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk: what the file claims, before any pixel is decoded."""
    if data[: len(PNG_SIGNATURE)] != PNG_SIGNATURE:
        raise gr.Error(
            "That file is not a PNG. Send the ciphertext as a lossless PNG: JPEG or WebP compression changes the "
            "encrypted pixels, and the model then sees noise."
        )
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise gr.Error("That PNG cannot be read; send the encrypted image as written by the encryption.")
    return struct.unpack(">II", data[16:24])


def read_ciphertext(data: bytes, height: int, width: int) -> Image.Image:
    """The encrypted PNG as an RGB image of the model's size, or a clear error naming what is wrong.

    Ciphertext must be lossless (a JPEG's changes are spread over the whole block by the decryption, and the model
    then sees noise) and already at the model's size (resampling ciphertext mixes pixels across blocks). The size is
    read from the header first, so an oversized image is refused without being decoded.
    """
    claimed = png_header_size(data)
    if claimed != (width, height):
        raise gr.Error(
            f"The encrypted image is {claimed[0]}x{claimed[1]}, but this model takes exactly {width}x{height}. "
            "Resize the plain image to the model's size first, then encrypt; never resize a ciphertext."
        )
    try:
        image = Image.open(io.BytesIO(data))
        if getattr(image, "n_frames", 1) > 1 or "acTL" in _chunk_types(data):
            raise gr.Error("The encrypted PNG is animated; send a single still image.")
        image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, EOFError):
        raise gr.Error("That PNG cannot be read; send the encrypted image as written by the encryption.") from None
    if "transparency" in image.info or (image.mode in ("RGBA", "LA", "PA") and image.getextrema()[-1][0] < 255):
        raise gr.Error("The encrypted PNG has transparent pixels; save it as opaque RGB.")
    if image.mode not in ("RGB", "RGBA", "P"):
        raise gr.Error(f"The encrypted PNG is in mode {image.mode}; this model takes 8-bit RGB ciphertext.")
    return image.convert("RGB")


def _chunk_types(data: bytes) -> set[bytes]:
    """The chunk types of a PNG, walked from the header (an animated PNG has acTL before its first IDAT)."""
    types, offset = set(), len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        types.add(kind)
        if kind in (b"IDAT", b"IEND"):
            break
        offset += 12 + length
    return types


def label_value(probs: dict[str, float]) -> dict[str, float]:
    return dict(sorted(probs.items(), key=lambda item: -item[1]))


# -- the page -----------------------------------------------------------------------------------------------------
def file_url(path: Path) -> str:
    return f"/gradio_api/file={path}"


def page_head() -> str:
    """The page's stylesheet and module, each pinned by its SRI hash; an import map pins the modules it imports, so
    the browser refuses any file that differs (`hf-lcrypt verify-page` compares the hashes with the published ones)."""
    hashes = compute_manifest(STATIC)
    modules = {file_url(STATIC / name): value for name, value in hashes.items() if name != "page.css"}
    return (
        f'<script type="importmap">{json.dumps({"integrity": modules})}</script>'
        f'<link rel="stylesheet" href="{file_url(STATIC / "page.css")}" integrity="{hashes["page.css"]}">'
        f'<script type="module" src="{file_url(STATIC / "page.mjs")}" integrity="{hashes["page.mjs"]}"></script>'
    )


def examples() -> list[Path]:
    return sorted(p for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in EXAMPLE_SUFFIXES)


def facts_html(facts: dict[str, Any], demo_key: LCryptKey | None) -> str:
    """The model's facts as the page shows them: escaped text, one line each."""
    pct = "{:.1%}".format
    rows = [("Task", facts["task"]), ("Classes", ", ".join(facts["classes"]))]
    rows.append(("Training data", facts["dataset"] or "not recorded with the model"))
    if facts["accuracy"] is not None:
        images = f" ({facts['test_images']} images)" if facts.get("test_images") else ""
        rows.append((f"{(facts['split'] or 'test').capitalize()} accuracy", f"{pct(facts['accuracy'])}{images}"))
    else:
        rows.append(("Test accuracy", "not published with the model"))
    attack = facts["weights_only"]
    if attack:
        parts = {
            "flips_right": "sign flips",
            "pixels_in_place": "in-block pixels",
            "blocks_in_place": "block positions",
        }
        rows.append(
            (
                "Key recovered from the weights alone",
                ", ".join(f"{pct(v)} of the {parts[k]}" for k, v in attack.items()),
            )
        )
    else:
        rows.append(("Key recovered from the weights alone", "not measured for this model"))
    if demo_key is not None:
        rows.append(("Demo key", f"public (key_id {demo_key.key_id}): anyone can decrypt what it encrypts"))
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in rows)
    return f'<dl id="model-facts">{items}</dl><p class="disclaimer" id="disclaimer">{html.escape(DISCLAIMER)}</p>'


def page_html(served: ServedModel, demo_key: LCryptKey | None, facts: dict[str, Any] | None = None) -> str:
    """The client-side app. Its inputs live only in the browser: no Gradio component ever holds a plain image or key."""
    settings = {
        **served.info,
        "demo_key": demo_key.to_hex() if demo_key else None,  # public by definition: labelled so on the page
        "examples": [{"name": p.stem.replace("_", " "), "url": file_url(p)} for p in examples()],
        "max_pixels": MAX_PIXELS,
    }
    facts = facts or model_facts(None, served)
    template = (STATIC / "page.html").read_text()
    return template.replace("{{facts}}", facts_html(facts, demo_key)).replace(
        "{{settings}}", html.escape(json.dumps(settings), quote=True)
    )


def build_demo(
    served: ServedModel, demo_key: LCryptKey | None = None, facts: dict[str, Any] | None = None
) -> gr.Blocks:
    """The page and the API. Every event has an api_name; the one the page calls is `/classify_encrypted`."""
    height, width = served.height, served.width
    take_upload = UploadTaker()

    def classify_encrypted(ciphertext: Any) -> dict[str, float]:
        return label_value(probabilities(served, read_ciphertext(take_upload(ciphertext), height, width)))

    def model_info() -> dict[str, Any]:
        return served.info

    # Uploads never classified (a client that stops half-way) are deleted within a minute.
    with gr.Blocks(title="hf-lcrypt: private inference", analytics_enabled=False, delete_cache=(30, 30)) as demo:
        gr.HTML(page_html(served, demo_key, facts), elem_id="lcrypt-page")
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
            preprocess=False,  # the raw upload, read into memory and deleted, so that any bad file gets our message
        )
        info_button.click(model_info, outputs=info, api_name="model_info")
    return demo


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    refuse_secret_variables()
    source = model_source()
    served = load_model(source)
    demo_key = load_demo_key(served)
    logger.info("Serving %s (%s, key_id %s); the server holds no key.", source, served.form, served.info["key_id"])
    if demo_key is not None:
        logger.warning(
            "The page offers a PUBLIC demo key (key_id %s): anyone can read it and decrypt what it encrypts.",
            demo_key.key_id,
        )
    gr.set_static_paths([STATIC, *examples()])
    demo = build_demo(served, demo_key, model_facts(source, served))
    demo.queue(default_concurrency_limit=4, max_size=64).launch(
        # Local runs stay on the loopback interface; Spaces set GRADIO_SERVER_NAME=0.0.0.0 themselves.
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        max_file_size=MAX_BYTES,
        head=page_head(),
        enable_monitoring=False,
        prevent_thread_lock=True,
    )
    remove_monitoring_routes(demo)
    demo.block_thread()


def remove_monitoring_routes(demo: gr.Blocks) -> None:
    """Gradio routes /monitoring even when monitoring is off (it answers 403): take the routes out altogether."""
    routes = demo.server_app.router.routes
    routes[:] = [r for r in routes if "/monitoring" not in getattr(r, "path", "")]


if __name__ == "__main__":
    main()
