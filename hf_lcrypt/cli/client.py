"""Private inference from Python: the key holder encrypts on its own machine and a model server classifies ciphertext.

`RemoteClassifier` talks to a running hf-lcrypt app (space/app.py, locally or on the Hub) through `gradio_client`: it
asks for the served model's geometry and key id, encrypts each image locally exactly as `LCryptImageProcessor` does,
and sends only the encrypted PNG to `/classify_encrypted`. `LocalClassifier` runs a keyed model folder, or its
standard or ONNX export (`hf-lcrypt export`), in-process.
Both return one `Prediction` per image, in order; an image that cannot be read gets one with its `error` and the
others are still classified. `hf-lcrypt classify` is the command line around them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..image_processing_lcrypt import LCryptImageProcessor
from ..keys import LCryptKey, check_key_id
from ..medical_io import MedicalImage, MedicalOptions, is_medical, medical_images

ImageInput = str | os.PathLike | Image.Image | MedicalImage
# What reading a damaged or unsupported image raises (Pillow uses all of these).
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Prediction:
    """The classes of one image, most likely first; or, for an image that could not be read, `error` (then `label`
    is empty)."""

    image: str
    label: str
    confidences: dict[str, float] = field(repr=False)
    error: str | None = None

    @classmethod
    def from_probabilities(cls, image: str, probs: dict[str, float]) -> Prediction:
        ranked = dict(sorted(probs.items(), key=lambda item: -item[1]))
        return cls(image=image, label=next(iter(ranked)), confidences=ranked)

    @classmethod
    def failed(cls, image: str, error: Exception) -> Prediction:
        return cls(image=image, label="", confidences={}, error=str(error))

    def to_dict(self) -> dict[str, Any]:
        result = {"image": self.image, "label": self.label, "confidences": self.confidences}
        return result if self.error is None else {**result, "error": self.error}


def _name(image: ImageInput) -> str:
    return "<image>" if isinstance(image, Image.Image) else str(image)


def _open(image: ImageInput) -> tuple[str, Image.Image]:
    """The image, decoded now, so that a damaged file fails here, by name, rather than in a batch."""
    if isinstance(image, Image.Image):
        return "<image>", image
    if isinstance(image, MedicalImage):
        return image.name, image.to_pil()
    path = Path(image)
    if not path.is_file():
        raise FileNotFoundError(f"No image at {path}.")
    opened = Image.open(path)
    opened.load()
    return str(path), opened


def _connect(url: str) -> Any:
    """A `gradio_client.Client` for the app at `url`, or one line saying it cannot be reached."""
    from gradio_client import Client

    try:
        return Client(url, verbose=False, analytics_enabled=False)
    except Exception as err:  # httpx's and huggingface_hub's connection errors share no base class with OSError
        if isinstance(err, OSError) or type(err).__module__.split(".")[0] in ("httpx", "httpcore", "huggingface_hub"):
            raise ConnectionError(
                f"Cannot reach the hf-lcrypt app at {url} ({type(err).__name__}: {err}); check the address, and that "
                "the app is running (python space/app.py) or the Space is awake."
            ) from None
        raise


def _check_key(key: LCryptKey, expected_key_id: str | None, where: str) -> None:
    check_key_id(
        key.key_id,
        expected_key_id or None,
        "This key",
        f"{where} is folded with",
        "Its answers on images encrypted with this key would be meaningless: use the key the model was trained or "
        "folded with.",
    )


class RemoteClassifier:
    """Classify images with a model served by an hf-lcrypt app, sending it only ciphertext.

    Args:
        url: the app's address (e.g. http://127.0.0.1:7860/ or a Space id such as "user/space").
        key: the secret key (an `LCryptKey`, hex string or key file); it stays in this process.
        client: an existing `gradio_client.Client` for the app (for tests and custom connections).
    """

    def __init__(self, url: str, key: Any, client: Any = None):
        self.client = client if client is not None else _connect(url)
        self.url = url
        self.info: dict[str, Any] = self.client.predict(api_name="/model_info")
        self.key = LCryptKey.coerce(key)
        _check_key(self.key, self.info.get("key_id"), f"the model at {url}")
        self.processor = encrypting_processor(self.info, self.key)

    def encrypt(self, image: ImageInput) -> Image.Image:
        """The ciphertext the server gets: resized to the model's size, encrypted, viewable (lossless as PNG)."""
        _, opened = _open(image)
        return self.processor.encrypt_images([opened])[0]

    def classify(self, images: Iterable[ImageInput], progress: bool = False) -> list[Prediction]:
        from gradio_client import handle_file
        from tqdm.auto import tqdm

        images = list(images)
        predictions = []
        with tempfile.TemporaryDirectory(prefix="hf-lcrypt-classify-") as folder:
            for index, image in enumerate(tqdm(images, desc="classify", unit="img", disable=not progress)):
                try:
                    name, opened = _open(image)
                    encrypted = self.processor.encrypt_images([opened])[0]
                except READ_ERRORS as err:
                    predictions.append(Prediction.failed(_name(image), err))
                    continue
                path = Path(folder) / f"{index}.png"
                encrypted.save(path, format="PNG")
                label = self.client.predict(handle_file(str(path)), api_name="/classify_encrypted")
                probs = {c["label"]: float(c["confidence"]) for c in label["confidences"]}
                predictions.append(Prediction.from_probabilities(name, probs))
        return predictions


class LocalClassifier:
    """Classify images with a model folder on this machine (the key holder runs the model too): the keyed model, or
    its standard or ONNX export (`hf-lcrypt export`). Images are encrypted here, then classified as a server would."""

    def __init__(self, model_dir: str | os.PathLike, key: Any, batch_size: int = 32):
        from ..serving import load_served_model

        self.served = load_served_model(model_dir)
        self.key = LCryptKey.coerce(key)
        _check_key(self.key, self.served.info["key_id"], f"the model in {model_dir}")
        self.processor = encrypting_processor(self.served.info, self.key)
        self.batch_size = batch_size

    def classify(self, images: Iterable[ImageInput], progress: bool = False) -> list[Prediction]:
        from tqdm.auto import tqdm

        images = list(images)
        predictions = []
        for start in tqdm(range(0, len(images), self.batch_size), desc="classify", unit="batch", disable=not progress):
            opened, failed = [], {}
            for index, image in enumerate(images[start : start + self.batch_size]):
                try:
                    opened.append(_open(image))
                except READ_ERRORS as err:
                    failed[index] = Prediction.failed(_name(image), err)
            try:
                results = iter(self._predict(opened) if opened else [])
            except ValueError:  # an image the processor refuses (e.g. 16 bits): find it, keep the others
                results = iter([self._predict_or_fail(item) for item in opened])
            size = len(opened) + len(failed)
            predictions.extend(failed[i] if i in failed else next(results) for i in range(size))
        return predictions

    def _predict_or_fail(self, item: tuple[str, Image.Image]) -> Prediction:
        try:
            return self._predict([item])[0]
        except ValueError as err:
            return Prediction.failed(item[0], err)

    def _predict(self, opened: list[tuple[str, Image.Image]]) -> list[Prediction]:
        logits = self.served.logits(self.processor.encrypt_images([picture for _, picture in opened]))
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        names = self.served.info["labels"]
        return [
            Prediction.from_probabilities(name, dict(zip(names, map(float, row), strict=True)))
            for (name, _), row in zip(opened, probs, strict=True)
        ]


def encrypting_processor(info: dict[str, Any], key: LCryptKey) -> LCryptImageProcessor:
    """The key holder's half of a served model's processor (resize and encrypt) from its public `info`; the key
    stays in this process."""
    height, width = info["image_size"]
    return LCryptImageProcessor(
        image_size=(height, width), block_size=info["block_size"], cipher_steps=info["cipher_steps"], key=key
    )


def expand_images(
    paths: Sequence[str | os.PathLike], medical: MedicalOptions | None = None
) -> list[Path | MedicalImage]:
    """Files as given, folders as the image files directly inside them (sorted); a DICOM file (found by content) or
    NIfTI volume becomes one image per frame or slice, read with `medical`."""
    suffixes = {suffix for suffix, _ in Image.registered_extensions().items()}
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(
                sorted(p for p in path.iterdir() if p.is_file() and (p.suffix.lower() in suffixes or is_medical(p)))
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"No image or folder at {path}.")
    found: list[Path | MedicalImage] = []
    for path in files:
        if path.suffix.lower() in (".png", ".jpg", ".jpeg") or not is_medical(path):
            found.append(path)
        else:
            try:
                found.extend(medical_images(path, medical))
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
    if not found:
        raise ValueError(f"No images found in {', '.join(map(str, paths))}.")
    return found


def format_table(predictions: Sequence[Prediction], top: int = 1) -> str:
    """One line per image: the path, then the `top` classes with their confidences."""
    width = max(len(p.image) for p in predictions)
    lines = []
    for prediction in predictions:
        if prediction.error is not None:
            lines.append(f"{prediction.image:<{width}}  error: {prediction.error}")
            continue
        ranked = list(prediction.confidences.items())[:top]
        lines.append(f"{prediction.image:<{width}}  " + "  ".join(f"{name} {p:.3f}" for name, p in ranked))
    return "\n".join(lines)
