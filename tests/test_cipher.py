"""BlockCipher: exact inverse, agreement with a per-block reading of the spec, layouts, dtypes, `out=` and errors."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import hf_lcrypt.cipher as cipher_module
from hf_lcrypt import ALL_STEPS, BlockCipher, LCryptKey
from hf_lcrypt.cipher import BLOCK_SCRAMBLE, NEGATIVE_POSITIVE, PIXEL_SHUFFLE, CipherCache

SETTINGS = settings(max_examples=30, deadline=None)
DTYPES = [torch.uint8, torch.float32, torch.float64]
KEY = LCryptKey(bytes(range(32)))


@st.composite
def cases(draw, dtypes=DTYPES):
    """A cipher for a random (often rectangular) geometry and a matching random image, batched or not."""
    m, gh, gw = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    c = draw(st.sampled_from([1, 2, 3, 4]))
    steps = draw(st.sets(st.sampled_from(ALL_STEPS))) if draw(st.booleans()) else ALL_STEPS
    cipher = BlockCipher(LCryptKey(draw(st.binary(min_size=32, max_size=32))), (gh * m, gw * m), m, c, steps)
    batch = draw(st.sampled_from([None, 1, 3]))
    dtype = draw(st.sampled_from(dtypes))
    shape = (c, gh * m, gw * m) if batch is None else (batch, c, gh * m, gw * m)
    x = random_image(shape, dtype, draw(st.integers(0, 2**32 - 1)))
    return cipher, x


def random_image(shape: tuple[int, ...], dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, dtype=dtype, generator=generator)
    if dtype == torch.uint16:
        return torch.randint(0, 65536, shape, dtype=torch.int32, generator=generator).to(dtype)
    return torch.rand(shape, dtype=torch.float64, generator=generator).to(dtype)


def to_hwc(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.movedim(-3, -1).numpy())


def reference_encrypt(cipher: BlockCipher, x: torch.Tensor) -> torch.Tensor:
    """docs/key-spec.md section 3, block by block: E[n,k] = neg?(P[block_perm[n], pixel_perm[k]]).

    16-bit images are passed as int32 (torch has little uint16 arithmetic), and flip as 65535 - x."""
    m, (_, gw) = cipher.block_size, cipher.grid
    images = x.reshape(-1, *x.shape[-3:])
    out = torch.empty_like(images)
    for n, src in enumerate(cipher.block_perm.tolist()):
        (si, sj), (di, dj) = divmod(src, gw), divmod(n, gw)
        block = images[:, :, si * m : (si + 1) * m, sj * m : (sj + 1) * m].reshape(len(images), -1)
        block = block[:, torch.from_numpy(cipher.pixel_perm)]
        neg = 255 - block if x.dtype == torch.uint8 else 65535 - block if x.dtype == torch.int32 else 1 - block
        block = torch.where(torch.from_numpy(cipher.flip_mask), neg, block)
        out[:, :, di * m : (di + 1) * m, dj * m : (dj + 1) * m] = block.reshape(len(images), -1, m, m)
    return out.reshape(x.shape)


def assert_roundtrip(original, decrypted):
    if original.dtype in (torch.uint8, np.uint8, torch.uint16, np.uint16):
        assert (decrypted == original).all()
    else:
        assert np.abs(np.asarray(decrypted, dtype=np.float64) - np.asarray(original, dtype=np.float64)).max() <= 1e-6


# -- properties -----------------------------------------------------------------------------------------------------
@SETTINGS
@given(case=cases())
def test_torch_matches_the_spec_and_inverts(case):
    cipher, x = case
    y = cipher.encrypt(x)
    assert isinstance(y, torch.Tensor) and y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y, reference_encrypt(cipher, x))
    assert_roundtrip(x, cipher.decrypt(y))


@SETTINGS
@given(case=cases())
def test_numpy_hwc_matches_torch_chw(case):
    cipher, x = case
    y = cipher.encrypt(to_hwc(x))
    assert isinstance(y, np.ndarray) and y.dtype == to_hwc(x).dtype
    np.testing.assert_array_equal(y, to_hwc(cipher.encrypt(x)))
    assert_roundtrip(to_hwc(x), cipher.decrypt(y))


@SETTINGS
@given(case=cases(dtypes=[torch.uint8]))
def test_uint8_and_float_ciphertexts_agree(case):
    """255 - x for uint8 and 1 - x for floats give the same ciphertext up to the 1/255 scale."""
    cipher, x = case
    from_float = cipher.encrypt(x.double() / 255) * 255
    assert torch.equal(from_float.round().to(torch.uint8), cipher.encrypt(x))


@SETTINGS
@given(case=cases(dtypes=[torch.float64]), step=st.sampled_from(ALL_STEPS))
def test_each_step_alone_is_a_bijection(case, step):
    cipher, x = case
    cipher = BlockCipher(cipher.key, (cipher.height, cipher.width), cipher.block_size, cipher.channels, [step])
    x = torch.randperm(x.numel(), dtype=torch.float64).reshape(x.shape) / x.numel()  # distinct values
    y = cipher.encrypt(x)
    if step == NEGATIVE_POSITIVE:  # every value stays in place, flipped where the mask says
        bx = blocks(cipher, x)
        assert torch.equal(blocks(cipher, y), torch.where(torch.from_numpy(cipher.flip_mask), 1 - bx, bx))
    else:  # the same values, moved
        assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)
    assert_roundtrip(x, cipher.decrypt(y))


def blocks(cipher: BlockCipher, x: torch.Tensor) -> torch.Tensor:
    """(..., N, C*M*M): blocks in raster order, values in (c, row, col) order."""
    (gh, gw), m = cipher.grid, cipher.block_size
    lead = x.dim() - 3
    x = x.reshape(*x.shape[:lead], cipher.channels, gh, m, gw, m)
    order = [*range(lead), lead + 1, lead + 3, lead, lead + 2, lead + 4]  # (gh, gw, C, row, col)
    return x.permute(order).reshape(*x.shape[:lead], gh * gw, -1)


def test_blocks_helper_follows_the_spec_order():
    cipher = BlockCipher(KEY, (4, 6), 2, channels=2)
    positions = torch.arange(2 * 4 * 6).reshape(2, 4, 6)
    expected = torch.from_numpy(cipher.block_positions("chw"))
    assert torch.equal(blocks(cipher, positions), expected)


@SETTINGS
@given(case=cases(dtypes=[torch.uint8]))
def test_block_scramble_alone_moves_whole_blocks(case):
    cipher, x = case
    only = BlockCipher(cipher.key, (cipher.height, cipher.width), cipher.block_size, cipher.channels, [BLOCK_SCRAMBLE])
    assert torch.equal(blocks(only, only.encrypt(x)), blocks(only, x)[..., only.block_perm, :])


@SETTINGS
@given(case=cases(dtypes=[torch.uint8]))
def test_pixel_shuffle_alone_keeps_blocks_in_place(case):
    cipher, x = case
    only = BlockCipher(cipher.key, (cipher.height, cipher.width), cipher.block_size, cipher.channels, [PIXEL_SHUFFLE])
    assert torch.equal(blocks(only, only.encrypt(x)), blocks(only, x)[..., only.pixel_perm])


def test_no_steps_is_the_identity():
    x = random_image((2, 3, 8, 12), torch.uint8, 0)
    assert torch.equal(BlockCipher(KEY, (8, 12), 4, steps=[]).encrypt(x), x)


@SETTINGS
@given(a=st.binary(min_size=32, max_size=32), b=st.binary(min_size=32, max_size=32))
def test_different_keys_give_different_ciphertexts(a, b):
    assume(a != b)
    x = random_image((3, 8, 8), torch.uint8, 1)
    assert not torch.equal(BlockCipher(a, 8, 4).encrypt(x), BlockCipher(b, 8, 4).encrypt(x))


def test_subkeys_give_different_ciphertexts():
    x = random_image((3, 16, 16), torch.uint8, 2)
    keys = [KEY, KEY.derive("client-a"), KEY.derive("client-b")]
    ciphertexts = {BlockCipher(k, 16, 4).encrypt(x).numpy().tobytes() for k in keys}
    assert len(ciphertexts) == 3


def test_same_key_same_ciphertext_in_a_fresh_process():
    code = (
        "import hashlib, torch\n"
        "from hf_lcrypt import BlockCipher\n"
        "x = (torch.arange(2*3*24*16) * 7 % 256).to(torch.uint8).reshape(2, 3, 24, 16)\n"
        f"y = BlockCipher({KEY.to_hex()!r}, (24, 16), 8).encrypt(x)\n"
        "print(hashlib.sha256(y.numpy().tobytes()).hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    x = (torch.arange(2 * 3 * 24 * 16) * 7 % 256).to(torch.uint8).reshape(2, 3, 24, 16)
    assert out == hashlib.sha256(BlockCipher(KEY, (24, 16), 8).encrypt(x).numpy().tobytes()).hexdigest()


@SETTINGS
@given(case=cases(dtypes=[torch.uint16]))
def test_16_bit_images_match_the_spec_and_invert_bit_exactly(case):
    """16-bit samples flip as 65535 - x (medical images keep their depth); the round trip is exact."""
    cipher, x = case
    y = cipher.encrypt(x)
    assert y.dtype == torch.uint16 and torch.equal(y.int(), reference_encrypt(cipher, x.int()))
    assert_roundtrip(x, cipher.decrypt(y))
    np.testing.assert_array_equal(cipher.encrypt(to_hwc(x)), to_hwc(y))
    assert_roundtrip(to_hwc(x), cipher.decrypt(to_hwc(y)))


@SETTINGS
@given(case=cases(dtypes=[*DTYPES, torch.float16, torch.uint16]))
def test_blockwise_path_for_large_images_matches_the_flat_gather(case):
    """Large images go block by block, in chunks (docs/reliability.md: memory); the result is identical."""
    cipher, x = case
    flat_y, flat_hwc = cipher.encrypt(x), cipher.encrypt(to_hwc(x))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cipher_module, "_BLOCKWISE_MIN_VALUES", 1)
        patch.setattr(cipher_module, "_BLOCKWISE_CHUNK_BYTES", 1)  # one block per chunk
        y, hwc = cipher.encrypt(x), cipher.encrypt(to_hwc(x))
        assert torch.equal(y, flat_y) and np.array_equal(hwc, flat_hwc)
        assert torch.equal(cipher.decrypt(y), cipher.decrypt(flat_y))
        assert np.array_equal(cipher.decrypt(hwc), cipher.decrypt(flat_hwc))
        in_place = x.clone()
        cipher.encrypt(in_place, out=in_place)
        assert torch.equal(in_place, flat_y)


# -- memory layouts, out= and the batched fast path -----------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_buffers(dtype):
    cipher = BlockCipher(KEY, (8, 12), 4)
    x = random_image((2, 3, 8, 12), dtype, 3)
    expected = cipher.encrypt(x)
    out = torch.empty_like(x)
    assert cipher.encrypt(x, out=out) is out and torch.equal(out, expected)
    out_np = np.empty_like(to_hwc(x))
    assert cipher.encrypt(to_hwc(x), out=out_np) is out_np
    np.testing.assert_array_equal(out_np, to_hwc(expected))
    back = torch.empty_like(x)
    cipher.decrypt(out, out=back)
    assert_roundtrip(x, back)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.bfloat16])  # bfloat16 takes torch's gather, the others numpy's
def test_in_place(dtype):
    """out may be the input itself (or overlap it): the result is the same as with a fresh buffer."""
    cipher = BlockCipher(KEY, 8, 4)
    x = random_image((2, 3, 8, 8), dtype, 4)
    y = x.clone()
    cipher.encrypt(y, out=y)
    assert torch.equal(y, cipher.encrypt(x))
    if dtype == torch.bfloat16:
        return
    a = to_hwc(x)
    expected = cipher.encrypt(a)
    cipher.encrypt(a, out=a)
    np.testing.assert_array_equal(a, expected)


def test_out_errors():
    cipher = BlockCipher(KEY, 8, 4)
    x = random_image((2, 3, 8, 8), torch.uint8, 5)
    for bad in (torch.empty(1, 3, 8, 8, dtype=torch.uint8), torch.empty(2, 3, 8, 8)):
        with pytest.raises(ValueError, match="out must match the input"):
            cipher.encrypt(x, out=bad)
    with pytest.raises(ValueError, match="contiguous"):
        cipher.encrypt(x, out=torch.empty(2, 3, 8, 16, dtype=torch.uint8)[..., ::2])
    read_only = np.empty((8, 8, 3), np.uint8)
    read_only.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        cipher.encrypt(np.zeros((8, 8, 3), np.uint8), out=read_only)


def test_non_contiguous_and_read_only_inputs():
    cipher = BlockCipher(KEY, (8, 12), 4)
    x = random_image((2, 3, 8, 12), torch.float32, 6)
    expected = cipher.encrypt(x)
    assert torch.equal(cipher.encrypt(x.contiguous(memory_format=torch.channels_last)), expected)
    assert torch.equal(cipher.encrypt(x.transpose(-1, -2).contiguous().transpose(-1, -2)), expected)
    a = to_hwc(x)
    a.setflags(write=False)  # like numpy.asarray(PIL image)
    np.testing.assert_array_equal(cipher.encrypt(a), to_hwc(expected))
    np.testing.assert_array_equal(cipher.encrypt(np.asfortranarray(to_hwc(x))), to_hwc(expected))


def test_empty_batch():
    cipher = BlockCipher(KEY, 8, 4)
    for dtype in DTYPES:
        assert cipher.encrypt(torch.empty(0, 3, 8, 8, dtype=dtype)).shape == (0, 3, 8, 8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_threaded_batches_match_single_images(dtype, monkeypatch):
    """CPU batches are split across threads in uneven chunks (here 13 images, 3 threads, 12 chunks)."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    monkeypatch.setattr(cipher_module, "_MIN_BYTES_PER_THREAD", 1)
    cipher = BlockCipher(KEY, (32, 48), 8)
    x = random_image((13, 3, 32, 48), dtype, 7)
    y = cipher.encrypt(x)
    for image, encrypted in zip(x, y, strict=True):
        assert torch.equal(cipher.encrypt(image), encrypted)
    assert_roundtrip(x, cipher.decrypt(y))


def test_torch_only_dtype_and_grad_tensors_use_the_torch_path():
    cipher = BlockCipher(KEY, 8, 4)
    x = random_image((2, 3, 8, 8), torch.float32, 8)
    assert torch.equal(cipher.encrypt(x.bfloat16()), reference_encrypt(cipher, x.bfloat16()))
    with torch.no_grad():
        assert torch.equal(cipher.encrypt(x.clone().requires_grad_()), cipher.encrypt(x))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [*DTYPES, torch.uint16])
def test_cuda_matches_cpu(dtype):
    cipher = BlockCipher(KEY, (32, 48), 8)
    x = random_image((4, 3, 32, 48), dtype, 9)
    y = cipher.encrypt(x.cuda())
    assert y.is_cuda and torch.equal(y.cpu(), cipher.encrypt(x))
    assert_roundtrip(x, cipher.decrypt(y).cpu())


# -- errors ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image_size": (8, 10), "block_size": 4}, "does not divide"),
        ({"image_size": 8, "block_size": 0}, "does not divide"),
        ({"image_size": (0, 8), "block_size": 4}, "must be positive"),
        ({"image_size": 8, "block_size": 4, "channels": 0}, "channels must be at least 1"),
        ({"image_size": 8, "block_size": 4, "steps": ["shuffle"]}, "Unknown cipher step"),
        ({"image_size": 8, "block_size": 4, "steps": [PIXEL_SHUFFLE, PIXEL_SHUFFLE]}, "more than once"),
    ],
)
def test_bad_geometry(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BlockCipher(KEY, **kwargs)


def test_key_of_wrong_length():
    with pytest.raises(ValueError, match="32 bytes"):
        BlockCipher(bytes(31), 8, 4)
    with pytest.raises(ValueError, match="64 hexadecimal"):
        BlockCipher("ab" * 16, 8, 4)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (torch.zeros(3, 8, 8, dtype=torch.uint8)[0], "rank 2"),
        (torch.zeros(1, 1, 3, 8, 8, dtype=torch.uint8), "rank 5"),
        (torch.zeros(1, 8, 8, dtype=torch.uint8), "1 channels but this cipher was built for 3"),
        (np.zeros((3, 8, 8), np.uint8), "channels-last"),
        (torch.zeros(3, 8, 12, dtype=torch.uint8), "8x12 but this cipher was built for 8x8"),
        (torch.zeros(3, 12, 12), "12x12"),
        (torch.full((3, 8, 8), 1.5), r"must lie in \[0,1\]"),
        (torch.full((3, 8, 8), -0.25, dtype=torch.float64), r"must lie in \[0,1\]"),
        (torch.full((3, 8, 8), float("nan")), r"must lie in \[0,1\]"),
        (np.full((8, 8, 3), 255.0, np.float32), "divide uint8"),
        (torch.zeros(3, 8, 8, dtype=torch.int64), "Unsupported dtype"),
    ],
)
def test_bad_images(image, match):
    cipher = BlockCipher(KEY, 8, 4)
    for method in (cipher.encrypt, cipher.decrypt):
        with pytest.raises(ValueError, match=match):
            method(image)


def test_not_an_array():
    with pytest.raises(TypeError, match="numpy.asarray"):
        BlockCipher(KEY, 8, 4).encrypt([[0] * 8] * 8)


def test_repr_and_describe_hide_the_key():
    cipher = BlockCipher(KEY, (8, 12), 4, steps=[BLOCK_SCRAMBLE])
    for text in (repr(cipher), str(cipher.describe())):
        assert KEY.key_id in text and KEY.to_hex() not in text
    assert cipher.describe() == {
        "key_id": KEY.key_id,
        "image_size": [8, 12],
        "block_size": 4,
        "channels": 3,
        "steps": [BLOCK_SCRAMBLE],
    }


def test_one_cipher_per_image_size_and_channels():
    key = LCryptKey.generate()
    cache = CipherCache(key, 4, [BLOCK_SCRAMBLE])
    cipher = cache.get(8, 12)
    assert cache.get(8, 12) is cipher and cache.get(8, 12, 1) is not cipher and cache.get(12, 8) is not cipher
    image = np.arange(8 * 12 * 3, dtype=np.uint8).reshape(8, 12, 3)
    expected = BlockCipher(key, (8, 12), 4, steps=[BLOCK_SCRAMBLE]).encrypt(image)
    assert np.array_equal(cipher.encrypt(image), expected)
