"""The Python side of the Node tests: encrypt, decrypt and resize with hf_lcrypt and PIL, as jobs read from stdin.

Input: a JSON list of jobs, each {"op": "encrypt" | "decrypt", "key_hex", "height", "width", "block_size", "channels",
"steps", "pixels"} or {"op": "resize", "width", "height", "channels", "out_width", "out_height", "pixels"}, pixels
being base64 (H, W, C) uint8 values. Output: a JSON list of base64 results.
"""

import base64
import json
import sys

import numpy as np
from PIL import Image

from hf_lcrypt import BlockCipher, LCryptKey


def run(job: dict) -> str:
    pixels = np.frombuffer(base64.b64decode(job["pixels"]), dtype=np.uint8)
    if job["op"] == "resize":
        array = pixels.reshape(job["height"], job["width"], job["channels"])
        image = Image.fromarray(array[..., 0] if job["channels"] == 1 else array)  # L, RGB or RGBA
        out = np.asarray(image.resize((job["out_width"], job["out_height"]), Image.Resampling.BILINEAR))
    else:
        cipher = BlockCipher(
            LCryptKey.from_hex(job["key_hex"]),
            (job["height"], job["width"]),
            job["block_size"],
            channels=job["channels"],
            steps=job["steps"],
        )
        image = pixels.reshape(job["height"], job["width"], job["channels"])
        out = cipher.encrypt(image) if job["op"] == "encrypt" else cipher.decrypt(image)
    return base64.b64encode(np.ascontiguousarray(out).tobytes()).decode()


if __name__ == "__main__":
    json.dump([run(job) for job in json.load(sys.stdin)], sys.stdout)
