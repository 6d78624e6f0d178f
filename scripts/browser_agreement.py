#!/usr/bin/env python
"""Does the browser path give the model the same input as LCryptImageProcessor? Measured on a dataset's test split.

The Space's page decodes each image in the browser, resizes it with space/static/pixels.mjs and encrypts it with
space/static/lcrypt.mjs. This script runs exactly those modules in headless Chromium on every test image, and the
Python processor on the same files, then compares the resized pixels, the ciphertexts and (with --model) the keyed
model's predictions and accuracy on both. For comparison it also measures the canvas's own resize (`drawImage` with
high-quality smoothing), which a page would use without pixels.mjs. Nothing is served: the browser reads the modules
from space/static/.

    python scripts/browser_agreement.py --data ../shared/data/brain-tumor-mri/train \\
        --model outputs/run/model --key-file outputs/run.key
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from datasets import Image as ImageFeature
from PIL import Image
from tqdm.auto import tqdm

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.image_datasets import load_image_dataset

REPO_ROOT = Path(__file__).resolve().parent.parent
STATIC = REPO_ROOT / "space" / "static"
ORIGIN = "http://lcrypt.invalid"  # a name that never resolves: every request is answered from space/static/
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
BROWSER_PATH = """async ([origin, keyHex, height, width, blockSize, steps, images]) => {
    const { decodeImage, resizeBilinear } = await import(`${origin}/pixels.mjs`);
    const { BlockCipher, LCryptKey } = await import(`${origin}/lcrypt.mjs`);
    const cipher = new BlockCipher(LCryptKey.fromHex(keyHex), { height, width, blockSize, channels: 3, steps });
    const b64 = (bytes) => btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(""));
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.imageSmoothingQuality = "high";
    const out = [];
    for (const data of images) {
        const file = await (await fetch(`data:application/octet-stream;base64,${data}`)).blob();
        const source = await decodeImage(file);
        const plain = resizeBilinear(source.rgb, source.width, source.height, 3, width, height);
        const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
        context.drawImage(bitmap, 0, 0, width, height);
        const rgba = context.getImageData(0, 0, width, height).data;
        const scaled = Uint8Array.from({ length: width * height * 3 }, (_, i) => rgba[Math.floor(i / 3) * 4 + (i % 3)]);
        out.push([b64(plain), b64(cipher.encrypt(plain)), b64(cipher.encrypt(scaled))]);
    }
    return out;
}"""


def browser_path(files: list[bytes], key: LCryptKey, processor: LCryptImageProcessor, chromium: str, batch: int):
    """(plain resized, encrypted, encrypted after the canvas's resize) uint8 arrays for every file, in Chromium."""
    from playwright.sync_api import sync_playwright

    height, width = processor.size.height, processor.size.width
    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()

        def serve(route):
            path = STATIC / route.request.url.removeprefix(ORIGIN + "/").split("?")[0]
            if path.is_file() and STATIC in path.resolve().parents:
                route.fulfill(path=str(path), content_type="text/javascript")
            else:
                route.fulfill(status=200, content_type="text/html", body="<!doctype html><title>agreement</title>")

        page.route(f"{ORIGIN}/**", serve)
        page.goto(f"{ORIGIN}/index.html")
        steps = list(processor.cipher_steps)
        for start in tqdm(range(0, len(files), batch), desc="browser", unit="batch"):
            chunk = [base64.b64encode(f).decode() for f in files[start : start + batch]]
            answers = page.evaluate(
                BROWSER_PATH, [ORIGIN, key.to_hex(), height, width, processor.block_size, steps, chunk]
            )
            shape = (height, width, 3)
            results.extend(
                tuple(np.frombuffer(base64.b64decode(x), np.uint8).reshape(shape) for x in answer) for answer in answers
            )
        browser.close()
    return results


def predictions(model, processor: LCryptImageProcessor, encrypted: list[np.ndarray], batch: int = 64) -> np.ndarray:
    """The keyed model's classes for ciphertexts at the model's size, as the Space computes them."""
    out = []
    for start in range(0, len(encrypted), batch):
        images = [Image.fromarray(a) for a in encrypted[start : start + batch]]
        inputs = processor(images, do_encrypt=False, do_resize=False, return_tensors="pt")
        with torch.inference_mode():
            out.append(model(**inputs).logits.argmax(-1).numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset (as for scripts/train.py); its test split is used")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the content-hash split (default: 0)")
    parser.add_argument("--model", help="keyed model folder: also compare its predictions and accuracy")
    parser.add_argument("--key-file", help="the model's key file (default: a fresh key, for pixels only)")
    parser.add_argument("--image-size", type=int, default=32, help="without --model: the size to resize to")
    parser.add_argument("--block-size", type=int, default=4, help="without --model: the cipher block size")
    parser.add_argument("--chromium", default=os.environ.get("HF_LCRYPT_CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--batch", type=int, default=64, help="images per call into the browser")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = parser.parse_args(argv)

    key = LCryptKey.load(args.key_file) if args.key_file else LCryptKey.generate()
    model = None
    if args.model:
        model = LCryptViTForImageClassification.from_pretrained(args.model).eval()
        processor = LCryptImageProcessor.for_model(model, key=key)
    else:
        processor = LCryptImageProcessor(image_size=args.image_size, block_size=args.block_size, key=key)
    test = load_image_dataset(args.data, seed=args.split_seed)["test"]
    labels = np.asarray(test["label"])
    files = [
        row["bytes"] or Path(row["path"]).read_bytes()
        for row in test.cast_column("image", ImageFeature(decode=False))["image"]
    ]

    # The Python path: PIL decodes, the processor converts to RGB, resizes and encrypts.
    python_encrypted = [np.asarray(e) for e in tqdm(processor.encrypt_images(list(test["image"])), desc="python")]
    python_plain = [np.asarray(p) for p in processor.decrypt_images(python_encrypted)]
    browser = browser_path(files, key, processor, args.chromium, args.batch)

    # Pixel differences are compared on plain images: the cipher only moves and flips values.
    canvas_plain = [np.asarray(p) for p in processor.decrypt_images([c for *_, c in browser])]
    report = {
        "data": args.data,
        "test_images": len(files),
        "image_size": [processor.size.height, processor.size.width],
        "identical_ciphertexts": int(
            sum(np.array_equal(b, p) for (_, b, _), p in zip(browser, python_encrypted, strict=True))
        ),
    }
    for name, resized in (("pixels_mjs", [b for b, *_ in browser]), ("canvas", canvas_plain)):
        diffs = [np.abs(b.astype(int) - p.astype(int)) for b, p in zip(resized, python_plain, strict=True)]
        report[name] = {
            "identical_images": int(sum(not d.any() for d in diffs)),
            "max_abs_pixel_difference": int(max(d.max() for d in diffs)),
            "mean_abs_pixel_difference": round(float(np.mean([d.mean() for d in diffs])), 4),
        }
    if model is not None:
        on_python = predictions(model, processor, python_encrypted)
        report |= {"model": args.model, "accuracy_python_processor": float(np.mean(on_python == labels))}
        for name, index in (("pixels_mjs", 1), ("canvas", 2)):
            on_browser = predictions(model, processor, [answer[index] for answer in browser])
            report[name] |= {
                "same_prediction": float(np.mean(on_python == on_browser)),
                "accuracy": float(np.mean(on_browser == labels)),
            }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
