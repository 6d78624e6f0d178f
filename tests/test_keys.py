"""LCryptKey against an independent reading of docs/key-spec.md, and its handling of the secret."""

from __future__ import annotations

import copy
import hashlib
import pickle
import stat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_lcrypt import KeyMismatchError, LCryptKey, check_key_id
from hf_lcrypt.keys import PURPOSE_BLOCK_SCRAMBLE, PURPOSE_NEGATIVE_POSITIVE, PURPOSE_PIXEL_SHUFFLE, geometry_label

secrets_ = st.binary(min_size=32, max_size=32)
purposes = st.sampled_from([PURPOSE_PIXEL_SHUFFLE, PURPOSE_NEGATIVE_POSITIVE, PURPOSE_BLOCK_SCRAMBLE])
geometries = st.builds(geometry_label, st.integers(1, 512), st.integers(1, 512), st.integers(1, 32), st.integers(1, 4))
SETTINGS = settings(max_examples=30, deadline=None)


# -- the spec, re-implemented from the text of docs/key-spec.md -----------------------------------------------------
def field(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def spec_stream(secret: bytes, purpose: str, geometry: str, nbytes: int) -> bytes:
    data = field(b"hf-lcrypt/v1") + field(purpose.encode()) + field(geometry.encode()) + field(secret)
    return hashlib.shake_256(data).digest(nbytes)


def spec_permutation(read_word, n: int, reject: bool = True) -> list[int]:
    """Fisher-Yates over words from `read_word()`, with the spec's rejection rule (or, to show it matters, without)."""
    a = list(range(n))
    for i in range(n - 1, 0, -1):
        bound = i + 1
        r = read_word()
        while reject and r >= 2**32 - (2**32 % bound):
            r = read_word()
        j = r % bound
        a[i], a[j] = a[j], a[i]
    return a


def word_reader(stream_bytes):
    """Words of a prefix-consistent stream function `stream_bytes(nbytes)`, read 4 bytes at a time."""
    pos = 0

    def read() -> int:
        nonlocal pos
        pos += 4
        return int.from_bytes(stream_bytes(pos)[pos - 4 : pos], "big")

    return read


def spec_mask(secret: bytes, purpose: str, geometry: str, n: int) -> list[bool]:
    s = spec_stream(secret, purpose, geometry, (n + 7) // 8)
    return [bool((s[k // 8] >> (k % 8)) & 1) for k in range(n)]


# -- derivations ----------------------------------------------------------------------------------------------------
@SETTINGS
@given(secret=secrets_, purpose=purposes, geometry=geometries, n=st.integers(0, 300))
def test_permutation_and_mask_follow_the_spec(secret, purpose, geometry, n):
    key = LCryptKey(secret)
    perm = key.permutation(purpose, geometry, n)
    reader = word_reader(lambda nbytes: spec_stream(secret, purpose, geometry, nbytes))
    assert perm.tolist() == spec_permutation(reader, n)
    assert sorted(perm.tolist()) == list(range(n))
    assert key.mask(purpose, geometry, n).tolist() == spec_mask(secret, purpose, geometry, n)
    assert key.stream(purpose, geometry, 40) == spec_stream(secret, purpose, geometry, 40)


def test_rejection_sampling_and_stream_extension(monkeypatch):
    """A forged stream whose first 40 words must all be rejected (0xFFFFFFFF is >= the limit for bound 5).

    40 words are more than the first read (4*n + 64 bytes) holds, so the permutation must also read further.
    """
    n, rejected = 5, 40
    words = [0xFFFFFFFF] * rejected + [(i * 2654435761 + 12345) % 2**32 for i in range(1000)]
    forged = b"".join(w.to_bytes(4, "big") for w in words)
    monkeypatch.setattr(LCryptKey, "stream", lambda self, purpose, geometry, nbytes: forged[:nbytes])
    perm = LCryptKey(b"\x5a" * 32).permutation("forged", "rejection-test", n).tolist()
    assert perm == spec_permutation(word_reader(lambda nbytes: forged[:nbytes]), n)
    without_rejection = spec_permutation(word_reader(lambda nbytes: forged[4 * rejected :][:nbytes]), n)
    assert perm == without_rejection  # the rejected words are skipped, not used
    assert perm != spec_permutation(word_reader(lambda nbytes: forged[:nbytes]), n, reject=False)


def test_mask_is_lsb_first():
    key = LCryptKey(bytes(range(32)))
    byte0 = key.stream("p", "g", 1)[0]
    assert key.mask("p", "g", 8).tolist() == [bool(byte0 >> k & 1) for k in range(8)]


def test_streams_are_separated_by_purpose_and_geometry():
    key = LCryptKey(bytes(32))
    streams = {
        key.stream(PURPOSE_PIXEL_SHUFFLE, geometry_label(8, 8, 4, 3), 32),
        key.stream(PURPOSE_BLOCK_SCRAMBLE, geometry_label(8, 8, 4, 3), 32),
        key.stream(PURPOSE_PIXEL_SHUFFLE, geometry_label(8, 8, 4, 1), 32),
        key.stream(PURPOSE_PIXEL_SHUFFLE, geometry_label(8, 8, 2, 3), 32),
        # Field framing: moving a character across the purpose/geometry boundary changes the stream.
        key.stream("ab", "c", 32),
        key.stream("a", "bc", 32),
    }
    assert len(streams) == 6
    assert key.stream("ab", "c", 16) == key.stream("ab", "c", 32)[:16]


@SETTINGS
@given(secret=secrets_)
def test_key_id_is_a_short_fingerprint_that_shows_nothing_of_the_secret(secret):
    """Its value is pinned by the published vectors (tests/test_vectors.py); here what holds for every secret."""
    key_id = LCryptKey(secret).key_id
    assert len(key_id) == 16 and set(key_id) <= set("0123456789abcdef")
    assert secret.hex() not in key_id and key_id != LCryptKey(bytes(a ^ 1 for a in secret)).key_id


def test_subkeys_differ_from_each_other_and_from_the_master():
    master = LCryptKey(bytes(range(32)))
    subkeys = [master.derive(name) for name in ("client-a", "client-b", "client-a/x", "a")]
    assert len({k.to_bytes() for k in [master, *subkeys]}) == 5
    assert master.derive("client-a") == subkeys[0]  # deterministic
    assert master.derive("client-a").derive("x") != subkeys[2]  # a chain is not a path name
    with pytest.raises(ValueError, match="client_id is empty"):
        master.derive("")


def test_passphrases_are_taken_as_given():
    """The derivation itself is pinned by the published vectors (tests/test_vectors.py); the spec also says the
    passphrase is used as typed: no Unicode normalisation, no trimming."""
    composed, decomposed = "caf\u00e9 au lait ce matin", "cafe\u0301 au lait ce matin"
    keys = [LCryptKey.from_passphrase(phrase) for phrase in (composed, decomposed, composed + " ")]
    assert len({key.to_bytes() for key in keys}) == 3
    assert LCryptKey.from_passphrase(composed) == keys[0]
    with pytest.raises(ValueError, match="passphrase is empty"):
        LCryptKey.from_passphrase("")


def test_generate_gives_fresh_keys():
    a, b = LCryptKey.generate(), LCryptKey.generate()
    assert a != b and len(a.to_bytes()) == 32


# -- construction errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_wrong_length_is_refused(length):
    with pytest.raises(ValueError, match="32 bytes"):
        LCryptKey(bytes(length))
    with pytest.raises(ValueError, match="64 hexadecimal characters"):
        LCryptKey.from_hex("ab" * length)


def test_from_hex():
    secret = bytes(range(100, 132))
    assert LCryptKey.from_hex(f"  {secret.hex().upper()}\n").to_bytes() == secret
    with pytest.raises(ValueError, match="hex") as err:
        LCryptKey.from_hex("zz" + secret.hex()[2:])
    assert secret.hex()[2:] not in str(err.value)
    with pytest.raises(TypeError, match="from_hex"):
        LCryptKey(secret.hex())


def test_coerce(tmp_path):
    key = LCryptKey(bytes(range(32)))
    path = key.save(tmp_path / "k.key")
    for form in (key, key.to_bytes(), bytearray(key.to_bytes()), key.to_hex(), str(path), path):
        assert LCryptKey.coerce(form) == key
    with pytest.raises(TypeError, match="Cannot make a key"):
        LCryptKey.coerce(12345)


# -- the secret stays secret ----------------------------------------------------------------------------------------
def test_save_and_load(tmp_path):
    key, other = LCryptKey(bytes(range(32))), LCryptKey(bytes(32))
    path = tmp_path / "k.key"
    assert key.save(path) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == key.to_hex() + "\n"
    assert LCryptKey.load(path) == key
    with pytest.raises(FileExistsError, match="overwrite=True"):
        other.save(path)
    assert LCryptKey.load(path) == key
    path.chmod(0o644)  # overwriting must also tighten a wider mode
    other.save(path, overwrite=True)
    assert LCryptKey.load(path) == other
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf-lcrypt keygen"):
        LCryptKey.load(tmp_path / "missing.key")
    bad = tmp_path / "bad.key"
    content = "ab" * 31
    bad.write_text(content)
    with pytest.raises(ValueError, match="not an hf-lcrypt key file") as err:
        LCryptKey.load(bad)
    assert content not in str(err.value)


def test_repr_and_str_hide_the_secret():
    secret = bytes(range(32))
    key = LCryptKey(secret)
    for text in (repr(key), str(key), f"{key}", repr([key])):
        assert key.key_id in text
        assert secret.hex() not in text and secret.hex().upper() not in text and repr(secret) not in text


def test_pickling_is_refused_and_copies_share_the_key():
    key = LCryptKey(bytes(range(32)))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="pickled"):
            pickle.dumps(key, protocol=protocol)
    assert copy.copy(key) is key and copy.deepcopy([key])[0] is key


def test_equality_and_hash():
    a, b = LCryptKey(bytes(range(32))), LCryptKey(bytes(range(32)))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != LCryptKey(bytes(32)) and a != a.to_bytes()


def test_permutation_is_a_copy():
    key = LCryptKey(bytes(32))
    perm = key.permutation("p", "g", 10)
    perm[:] = 0
    assert sorted(key.permutation("p", "g", 10).tolist()) == list(range(10))
    assert np.array_equal(key.permutation("p", "g", 10), key.permutation("p", "g", 10))


def test_one_key_ownership_check_names_both_ids_and_the_fix():
    mine, other = LCryptKey.generate().key_id, LCryptKey.generate().key_id
    check_key_id(mine, mine, "This key", "the model is folded with", "Use the model's key.")
    check_key_id([mine, mine], mine, "A batch", "the model is folded with", "Use the model's key.")
    check_key_id(None, mine, "An input without metadata", "the model is folded with", "Nothing to check.")
    check_key_id(other, None, "A key", "an unkeyed model is folded with", "Nothing to check.")
    with pytest.raises(KeyMismatchError) as err:
        check_key_id([mine, other], mine, "A batch", "the model is folded with", "Use the model's key.")
    assert str(err.value) == (
        f"A batch (key_id {', '.join(sorted([mine, other]))}) is not the one the model is folded with (key_id {mine}). "
        "Use the model's key."
    )
    with pytest.raises(FileNotFoundError, match=f"key_id {other}.*key_id {mine}"):
        check_key_id(other, mine, "This key", "the data", "Fix.", error=FileNotFoundError)
