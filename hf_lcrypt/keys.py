"""Secret keys and the key-derived permutations and masks (spec: docs/key-spec.md, version 1).

Everything the cipher needs is derived from a 256-bit secret with SHAKE-256 and an unbiased Fisher-Yates shuffle,
never from numpy's or torch's RNG streams, whose outputs change between versions and platforms.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import stat
import string
import warnings
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np

SPEC_VERSION = 1
KEY_BYTES = 32
_PREFIX = b"hf-lcrypt/v1"

# scrypt parameters for passphrases (docs/key-spec.md): 32 MiB of memory, about 0.1 s on a laptop core.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SCRYPT_SALT = _PREFIX + b"/passphrase"

# Domain-separation labels, one per purpose.
PURPOSE_PIXEL_SHUFFLE = "pixel-shuffle"
PURPOSE_NEGATIVE_POSITIVE = "negative-positive"
PURPOSE_BLOCK_SCRAMBLE = "block-scramble"

# The cipher's steps, in the order they run (docs/key-spec.md); here, not in cipher.py, so that the command line can
# name them without importing torch.
PIXEL_SHUFFLE = "pixel_shuffle"
NEGATIVE_POSITIVE = "negative_positive"
BLOCK_SCRAMBLE = "block_scramble"
ALL_STEPS = (PIXEL_SHUFFLE, NEGATIVE_POSITIVE, BLOCK_SCRAMBLE)

KEY_ENV_VAR = "HF_LCRYPT_KEY_FILE"

# Anyone can run the (public-salt) scrypt derivation on guesses, so a short phrase is a weak key.
MIN_PASSPHRASE_CHARS = 12


def _field(value: bytes) -> bytes:
    """Length-prefixed field, so that no two different inputs encode to the same bytes."""
    return len(value).to_bytes(4, "big") + value


def geometry_label(height: int, width: int, block_size: int, channels: int) -> str:
    return f"H={height};W={width};M={block_size};C={channels}"


class LCryptKey:
    """A 256-bit secret key. Its repr shows only the public `key_id`."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes):
        if not isinstance(secret, bytes | bytearray):
            raise TypeError(f"LCryptKey needs bytes, got {type(secret).__name__}; use LCryptKey.from_hex for strings.")
        if len(secret) != KEY_BYTES:
            raise ValueError(
                f"An LCryptKey is {KEY_BYTES} bytes ({KEY_BYTES * 8} bits), got {len(secret)} bytes. "
                "Use LCryptKey.generate() for a new key or LCryptKey.from_passphrase() to derive one from a phrase."
            )
        self._secret = bytes(secret)

    # -- construction -------------------------------------------------------------------------------------------
    @classmethod
    def generate(cls) -> LCryptKey:
        """A fresh random key from the operating system's CSPRNG."""
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_hex(cls, text: str) -> LCryptKey:
        text = text.strip()
        if not re.fullmatch(r"[0-9a-fA-F]*", text):
            bad = next(i for i, char in enumerate(text) if char not in string.hexdigits)
            raise ValueError(
                f"A key in hex is {KEY_BYTES * 2} hexadecimal characters; character {bad + 1} of {len(text)} is not a "
                "hex digit (0-9, a-f)."
            )
        if len(text) != KEY_BYTES * 2:
            raise ValueError(
                f"A key in hex is {KEY_BYTES * 2} hexadecimal characters, got {len(text)} hex digits (a digit lost or "
                "added in a copy?)."
            )
        return cls(bytes.fromhex(text))

    @classmethod
    def from_passphrase(cls, passphrase: str, allow_short: bool = False) -> LCryptKey:
        """Derive a key from a passphrase with scrypt (N=2**15, r=8, p=1, fixed public salt; see the spec).

        The fixed salt makes the same phrase give the same key everywhere; choose a long phrase, since anyone can
        run the same derivation on guesses. Phrases under `MIN_PASSPHRASE_CHARS` characters are refused unless
        `allow_short` (then with a warning).
        """
        if not passphrase.strip():
            what = "empty" if not passphrase else f"only white space ({len(passphrase)} characters)"
            raise ValueError(f"The passphrase is {what}; choose a long phrase or use LCryptKey.generate().")
        if len(passphrase) < MIN_PASSPHRASE_CHARS:
            message = (
                f"The passphrase has {len(passphrase)} characters, under the minimum of {MIN_PASSPHRASE_CHARS}: "
                "anyone can try short phrases quickly, since the derivation is public."
            )
            if not allow_short:
                raise ValueError(
                    f"{message} Choose a longer phrase (several words), use a random key, or accept the risk with "
                    "allow_short=True (--allow-short-passphrase on the command line)."
                )
            warnings.warn(message, UserWarning, stacklevel=2)
        raw = hashlib.scrypt(
            passphrase.encode("utf-8"),
            salt=SCRYPT_SALT,
            n=SCRYPT_N,
            r=SCRYPT_R,
            p=SCRYPT_P,
            maxmem=64 * 2**20,
            dklen=KEY_BYTES,
        )
        return cls(raw)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LCryptKey:
        """Read a key file written by `save` (64 hex characters, surrounding white space and a UTF-8 byte order mark
        ignored), or a pipe such as /dev/stdin or a shell's process substitution, as a secret manager hands keys over.

        A file that other users can read is accepted with a warning: the key is only as secret as the file.
        """
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(
                f"{path} is a folder, not a key file; name the key file itself, e.g. {path}/secret.key."
            )
        if not path.exists():
            dangling = " (a symbolic link to nothing)" if path.is_symlink() else ""
            raise FileNotFoundError(
                f"No key file at {path}{dangling}; check the path, or create one with `hf-lcrypt keygen {path}`."
            )
        regular = path.is_file()
        raw = path.read_bytes()
        raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte order mark some Windows editors write
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            hint = (
                f" It holds {len(raw)} bytes: if they are a raw binary key, write them as hex with "
                f"`python -c \"import sys; print(open(sys.argv[1], 'rb').read().hex())\" {path} > {path}.hex`."
                if len(raw) == KEY_BYTES
                else ""
            )
            raise ValueError(
                f"{path} is not an hf-lcrypt key file: it is binary, and a key file is {KEY_BYTES * 2} hexadecimal "
                f"characters.{hint}"
            ) from None
        try:
            key = cls.from_hex(text)
        except ValueError as err:
            raise ValueError(f"{path} is not an hf-lcrypt key file: {err}") from None
        mode = stat.S_IMODE(path.stat().st_mode) if regular else 0  # a pipe is gone once read
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.warn(
                f"The key file {path} is open to other users (mode {mode:04o}); restrict it with `chmod 600 {path}`.",
                UserWarning,
                stacklevel=2,
            )
        return key

    @classmethod
    def coerce(cls, key: LCryptKey | str | os.PathLike | bytes) -> LCryptKey:
        """Accept a key, raw bytes, a hex string or the path of a key file."""
        if isinstance(key, LCryptKey):
            return key
        if isinstance(key, bytes | bytearray):
            return cls(bytes(key))
        if isinstance(key, str) and not key.strip():
            raise ValueError(
                "The key is an empty string; pass a key file's path, a 64-character hex key or an LCryptKey (or set "
                f"{KEY_ENV_VAR} to the key file's path)."
            )
        if isinstance(key, os.PathLike) or (isinstance(key, str) and Path(key).exists()):
            return cls.load(key)
        if isinstance(key, str):
            if not re.fullmatch(r"\s*[0-9a-fA-F]*\s*", key):  # not meant as hex: a key file path that is not there
                raise FileNotFoundError(
                    f"No key file at {key} (and it is not a {KEY_BYTES * 2}-character hex key); check the path, or "
                    f"create a key file with `hf-lcrypt keygen {key}`."
                )
            return cls.from_hex(key)
        raise TypeError(f"Cannot make a key from {type(key).__name__}: pass an LCryptKey, a hex string or a key file.")

    # -- use ----------------------------------------------------------------------------------------------------
    def to_hex(self) -> str:
        return self._secret.hex()

    def to_bytes(self) -> bytes:
        return self._secret

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the key as hex to a new file readable by its owner only (mode 0600)."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; name the key file to create, e.g. {path}/secret.key.")
        if path.is_symlink():  # never write a secret through a link someone may have planted
            raise FileExistsError(
                f"{path} is a symbolic link (to {os.readlink(path)}); refusing to write a key through it. Remove the "
                "link or name another file."
            )
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(path, flags, stat.S_IRUSR | stat.S_IWUSR)
        except FileExistsError:
            raise FileExistsError(
                f"{path} exists; refusing to overwrite a key (pass overwrite=True). Images encrypted with the old key "
                "need it to be decrypted."
            ) from None
        # Tighten the mode before writing: overwriting keeps an existing file's (possibly wider) mode until then.
        os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
        with os.fdopen(fd, "w") as f:
            f.write(self.to_hex() + "\n")
        return path

    def derive(self, client_id: str) -> LCryptKey:
        """An independent subkey for one client: HMAC-SHA256(master, label || client_id).

        HMAC is a PRF, so subkeys look independent of each other and reveal nothing about the master.
        """
        if not client_id:
            raise ValueError("client_id is empty; give each client a distinct, non-empty name.")
        msg = _field(_PREFIX + b"/derive") + _field(client_id.encode("utf-8"))
        return LCryptKey(hmac.new(self._secret, msg, hashlib.sha256).digest())

    def tag(self, data: bytes) -> str:
        """A keyed fingerprint of `data` (32 hex characters): public, since without the key it tells nothing about
        the data, not even whether two files are a known image. Outputs carry their input's tag for `--resume`."""
        return hmac.new(self._secret, _field(_PREFIX + b"/source") + data, hashlib.sha256).hexdigest()[:32]

    @property
    def key_id(self) -> str:
        """Public fingerprint (16 hex characters): identifies the key without revealing it."""
        return hmac.new(self._secret, _PREFIX + b"/key-id", hashlib.sha256).hexdigest()[:16]

    def stream(self, purpose: str, geometry: str, nbytes: int) -> bytes:
        """`nbytes` pseudo-random bytes for one purpose and geometry (SHAKE-256 over framed fields)."""
        xof = hashlib.shake_256(
            _field(_PREFIX) + _field(purpose.encode()) + _field(geometry.encode()) + _field(self._secret)
        )
        return xof.digest(nbytes)

    def permutation(self, purpose: str, geometry: str, n: int) -> np.ndarray:
        return _permutation(self._secret, purpose, geometry, n).copy()

    def mask(self, purpose: str, geometry: str, n: int) -> np.ndarray:
        """n independent key-chosen bits (bit i is bit i%8, LSB first, of stream byte i//8)."""
        raw = np.frombuffer(self.stream(purpose, geometry, (n + 7) // 8), dtype=np.uint8)
        return np.unpackbits(raw, bitorder="little")[:n].astype(bool)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LCryptKey) and hmac.compare_digest(self._secret, other._secret)

    def __hash__(self) -> int:
        return hash(self.key_id)

    def __repr__(self) -> str:
        return f"LCryptKey(key_id={self.key_id!r})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("LCryptKey refuses to be pickled, so that the secret cannot leak into a saved object.")

    # Keys are immutable: copies (e.g. a deep copy of a model or processor holding one) share the object.
    def __copy__(self) -> LCryptKey:
        return self

    def __deepcopy__(self, memo: dict) -> LCryptKey:
        return self


class KeyMismatchError(ValueError):
    """A key, an input or a model met something bound to another key (their key_ids differ)."""


def check_key_id(
    found: str | Iterable[str] | None,
    expected: str | None,
    what: str,
    owner: str,
    fix: str,
    error: type[Exception] = KeyMismatchError,
) -> None:
    """Refuse `what`, which belongs to key_id `found` (one id, or the ids of a batch), for `owner`, which belongs to
    key_id `expected`: one message for every such check, naming both ids and `fix`. A side without a key_id (an
    unkeyed model, an input without metadata) has nothing to refuse.

    `owner` reads after "is not the one", e.g. "the model is folded with"; `fix` is a sentence."""
    if found is None or expected is None:
        return
    ids = {found} if isinstance(found, str) else set(found)
    if ids != {expected}:
        raise error(f"{what} (key_id {', '.join(sorted(ids))}) is not the one {owner} (key_id {expected}). {fix}")


@lru_cache(maxsize=256)
def _permutation(secret: bytes, purpose: str, geometry: str, n: int) -> np.ndarray:
    """Fisher-Yates driven by the key stream; each index drawn as a 32-bit big-endian integer by rejection sampling.

    For i = n-1 down to 1: draw r until r < 2**32 - (2**32 mod (i+1)), then swap a[i] and a[r mod (i+1)].
    """
    key = LCryptKey(secret)
    # Rejection is rare (< 2**-20 per draw for n < 4096); read the stream in chunks and extend if ever short.
    chunk = 4 * n + 64
    buf = key.stream(purpose, geometry, chunk)
    pos = 0
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = 2**32 - (2**32 % bound)
        while True:
            if pos + 4 > len(buf):
                chunk *= 2
                buf = key.stream(purpose, geometry, chunk)
            r = int.from_bytes(buf[pos : pos + 4], "big")
            pos += 4
            if r < limit:
                break
        j = r % bound
        perm[i], perm[j] = perm[j], perm[i]
    out = np.asarray(perm, dtype=np.int64)
    out.setflags(write=False)
    return out
