"""Write tests/vectors/v1.json: known answers for the key spec (docs/key-spec.md), so that a change to the key
derivation or the cipher cannot go unnoticed and other implementations can check themselves against this one.

    python scripts/make_test_vectors.py [--out tests/vectors/v1.json]

The file is regenerated only when the spec version changes; tests/test_vectors.py checks the code against it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import torch

from hf_lcrypt import BlockCipher, LCryptKey
from hf_lcrypt.keys import SPEC_VERSION

# A fixed random key (drawn once from secrets.token_hex(32)) and a passphrase, both public test material.
RANDOM_KEY_HEX = "1fc3b20aa85ef0137a3080299e0af8f05b744796809c43ad52d329bac17b797a"
PASSPHRASE = "correct horse battery staple"
CLIENT_ID = "client-a"
# (H, W, M, C): a square RGB case and a rectangular greyscale one; the smallest also stores its ciphertext.
GEOMETRIES = [(8, 8, 4, 3), (12, 8, 4, 1)]
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "v1.json"


def plaintext(height: int, width: int, channels: int) -> np.ndarray:
    """The spec's deterministic uint8 test image, (C, H, W): x[c,h,w] = (7*(c*H*W + h*W + w) + 3) mod 256."""
    return ((7 * np.arange(channels * height * width) + 3) % 256).astype(np.uint8).reshape(channels, height, width)


def keys() -> list[dict]:
    """The test keys, each with how it was made, so the test can remake it."""
    zero = LCryptKey(bytes(32))
    fixed = LCryptKey.from_hex(RANDOM_KEY_HEX)
    return [
        {"name": "zero", "key": zero},
        {"name": "random", "key": fixed},
        {"name": "passphrase", "passphrase": PASSPHRASE, "key": LCryptKey.from_passphrase(PASSPHRASE)},
        {"name": "random/client-a", "parent": "random", "client_id": CLIENT_ID, "key": fixed.derive(CLIENT_ID)},
    ]


def vector(key: LCryptKey, height: int, width: int, block_size: int, channels: int, smallest: bool) -> dict:
    cipher = BlockCipher(key, (height, width), block_size, channels)
    x = plaintext(height, width, channels)
    y = cipher.encrypt(torch.from_numpy(x)).numpy()
    entry = {
        "height": height,
        "width": width,
        "block_size": block_size,
        "channels": channels,
        "geometry": f"H={height};W={width};M={block_size};C={channels}",
        "pixel_perm": cipher.pixel_perm.tolist(),
        "flip_mask": cipher.flip_mask.astype(int).tolist(),
        "block_perm": cipher.block_perm.tolist(),
        "ciphertext_sha256": hashlib.sha256(y.tobytes()).hexdigest(),
    }
    if smallest:
        entry["ciphertext_hex"] = y.tobytes().hex()
    return entry


def build() -> dict:
    smallest = min(GEOMETRIES, key=lambda g: g[0] * g[1] * g[3])
    entries = []
    for spec in keys():
        key = spec.pop("key")
        spec.update(key_hex=key.to_hex(), key_id=key.key_id)
        spec["vectors"] = [vector(key, *g, smallest=g == smallest) for g in GEOMETRIES]
        entries.append(spec)
    return {
        "spec_version": SPEC_VERSION,
        "spec": "docs/key-spec.md",
        "plaintext": "uint8 (C,H,W), x[c,h,w] = (7*(c*H*W + h*W + w) + 3) mod 256; ciphertext bytes in (C,H,W) order",
        "keys": entries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(build(), indent=1)
    # One line per list of numbers keeps the file short and readable.
    text = re.sub(r"\[\s+([-\d,\s]+?)\s+\]", lambda m: "[" + re.sub(r"\s+", "", m.group(1)) + "]", text)
    args.out.write_text(text + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
