"""The public cipher parameters carried by each encrypted PNG, in a text chunk named `hf-lcrypt`.

Decrypting with the wrong key, block size or steps cannot be told from the pixels (the result is noise of the right
size), so `hf-lcrypt encrypt` writes the parameters into every ciphertext and `decrypt` and the image processor
compare them before use. The chunk holds only public facts: the spec version, the key's public `key_id`, the
geometry, the steps and the bit depth; never the key.
"""

import json
from collections.abc import Mapping
from typing import Any

from .keys import SPEC_VERSION

CHUNK_KEY = "hf-lcrypt"
# A second chunk: a keyed tag of the file an output was made from, so that `--resume` can tell a stale output.
SOURCE_KEY = "hf-lcrypt-source"
CHECKED_FIELDS = ("spec", "key_id", "image_size", "block_size", "channels", "steps", "bits")
_STEPS = ("pixel_shuffle", "negative_positive", "block_scramble")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# What each field must hold; a chunk edited by hand (e.g. "block_size": "4" or null) is refused by name.
SCHEMA = {
    "spec": ("a positive integer", _positive_int),
    "key_id": ("16 hexadecimal characters", lambda v: isinstance(v, str) and len(v) == 16 and _is_hex(v)),
    "image_size": (
        "[height, width], two positive integers",
        lambda v: isinstance(v, list) and len(v) == 2 and all(map(_positive_int, v)),
    ),
    "block_size": ("a positive integer", _positive_int),
    "channels": ("a positive integer", _positive_int),
    "steps": (
        f"a list of step names from {list(_STEPS)}",
        lambda v: isinstance(v, list) and all(step in _STEPS for step in v),
    ),
    "bits": ("8 or 16", lambda v: v in (8, 16) and not isinstance(v, bool)),
}


def _is_hex(text: str) -> bool:
    return all(char in "0123456789abcdef" for char in text)


def cipher_params(description: Mapping[str, Any], bits: int = 8) -> dict[str, Any]:
    """The chunk's content for a cipher, from `BlockCipher.describe()` and the image's bits per sample."""
    return {"spec": SPEC_VERSION, **description, "bits": int(bits)}


def encode(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


def decode(info: Mapping[str, Any], source: object = "the image") -> dict[str, Any] | None:
    """The parameters from a PIL image's `info` (or `text`), or None for an image without the chunk."""
    text = info.get(CHUNK_KEY)
    if text is None:
        return None
    try:
        params = json.loads(text)
    except (TypeError, ValueError):
        params = None
    if not isinstance(params, dict):
        raise ValueError(f"{source} has a damaged {CHUNK_KEY} parameters chunk; re-encrypt it from the original.")
    for name, (expected, valid) in SCHEMA.items():
        if name in params and not valid(params[name]):
            raise ValueError(
                f"{source} has an edited or damaged {CHUNK_KEY} parameters chunk: {name} is "
                f"{json.dumps(params[name])}, not {expected}; re-encrypt it from the original, or restore the chunk."
            )
    return params


def mismatches(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """`name found (expected)` for every checked field that differs; fields missing on either side are skipped."""
    differ = []
    for name in CHECKED_FIELDS:
        if name in found and name in expected and _norm(found[name]) != _norm(expected[name]):
            differ.append(f"{name} {_norm(found[name])} (expected {_norm(expected[name])})")
    return differ


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


__all__ = ["CHECKED_FIELDS", "CHUNK_KEY", "SCHEMA", "SOURCE_KEY", "cipher_params", "decode", "encode", "mismatches"]
