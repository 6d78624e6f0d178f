"""The code against the committed known-answer vectors of docs/key-spec.md (tests/vectors/v1.json)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_lcrypt import BlockCipher, LCryptKey
from hf_lcrypt.keys import (
    PURPOSE_BLOCK_SCRAMBLE,
    PURPOSE_NEGATIVE_POSITIVE,
    PURPOSE_PIXEL_SHUFFLE,
    SPEC_VERSION,
    geometry_label,
)

ROOT = Path(__file__).resolve().parent.parent
VECTORS = json.loads((ROOT / "tests" / "vectors" / "v1.json").read_text())
KEYS = {entry["name"]: entry for entry in VECTORS["keys"]}
CASES = [(entry, vec) for entry in VECTORS["keys"] for vec in entry["vectors"]]


def spec_plaintext(c: int, h: int, w: int) -> np.ndarray:
    """x[c,h,w] = (7*(c*H*W + h*W + w) + 3) mod 256, written out index by index as the spec states it."""
    x = np.empty((c, h, w), dtype=np.uint8)
    for ci in range(c):
        for hi in range(h):
            for wi in range(w):
                x[ci, hi, wi] = (7 * (ci * h * w + hi * w + wi) + 3) % 256
    return x


def make_key(entry: dict) -> LCryptKey:
    """Remake a key the way the vector says it was made, not from its stored hex."""
    if "passphrase" in entry:
        return LCryptKey.from_passphrase(entry["passphrase"])
    if "parent" in entry:
        return make_key(KEYS[entry["parent"]]).derive(entry["client_id"])
    return LCryptKey.from_hex(entry["key_hex"])


def test_file_shape():
    assert VECTORS["spec_version"] == SPEC_VERSION
    assert len(KEYS) >= 4 and {"passphrase", "parent"} <= {field for e in KEYS.values() for field in e}
    geometries = {vec["geometry"] for _, vec in CASES}
    assert len(geometries) >= 2
    assert sum("ciphertext_hex" in vec for _, vec in CASES) == len(KEYS)


@pytest.mark.parametrize("name", sorted(KEYS))
def test_key_and_key_id(name):
    entry = KEYS[name]
    key = make_key(entry)
    assert key.to_hex() == entry["key_hex"]
    assert key.key_id == entry["key_id"]


@pytest.mark.parametrize(("entry", "vec"), CASES, ids=[f"{e['name']}:{v['geometry']}" for e, v in CASES])
def test_vector(entry, vec):
    key = LCryptKey.from_hex(entry["key_hex"])
    h, w, m, c = vec["height"], vec["width"], vec["block_size"], vec["channels"]
    geometry = geometry_label(h, w, m, c)
    assert geometry == vec["geometry"]
    d, n = c * m * m, (h // m) * (w // m)
    assert key.permutation(PURPOSE_PIXEL_SHUFFLE, geometry, d).tolist() == vec["pixel_perm"]
    assert key.mask(PURPOSE_NEGATIVE_POSITIVE, geometry, d).astype(int).tolist() == vec["flip_mask"]
    assert key.permutation(PURPOSE_BLOCK_SCRAMBLE, geometry, n).tolist() == vec["block_perm"]

    cipher = BlockCipher(key, (h, w), m, c)
    assert cipher.pixel_perm.tolist() == vec["pixel_perm"]
    assert cipher.flip_mask.astype(int).tolist() == vec["flip_mask"]
    assert cipher.block_perm.tolist() == vec["block_perm"]

    x = spec_plaintext(c, h, w)
    y_chw = cipher.encrypt(torch.from_numpy(x)).numpy()
    y_hwc = cipher.encrypt(x.transpose(1, 2, 0).copy()).transpose(2, 0, 1)  # numpy layout, same values
    np.testing.assert_array_equal(y_hwc, y_chw)
    assert hashlib.sha256(y_chw.tobytes()).hexdigest() == vec["ciphertext_sha256"]
    if "ciphertext_hex" in vec:
        assert y_chw.tobytes().hex() == vec["ciphertext_hex"]
    np.testing.assert_array_equal(cipher.decrypt(torch.from_numpy(y_chw)).numpy(), x)


def test_the_vectors_file_is_frozen():
    """The file is the fixed reference, not whatever the code makes today: regenerating it with changed code would
    make every test above pass against the change. A new spec version gets a new file (v2.json), not a new v1."""
    digest = hashlib.sha256((ROOT / "tests" / "vectors" / "v1.json").read_bytes()).hexdigest()
    assert digest == "b6433bc9d22cc1a875b8b240a93c8c78eb8c233de2bbc73154618932cc33d9d4"
