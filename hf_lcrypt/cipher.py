"""The keyed block-wise image cipher: pixel shuffling, negative-positive flips and block scrambling.

One in-block transform (a signed permutation of the C*M*M values of a block) applies to every block, then the
blocks are scrambled. The whole image transform is therefore one gather plus a masked flip, precomputed per key and
geometry; this is also exactly what lets a ViT with patch size M absorb the key into its weights.
"""

from __future__ import annotations

import functools
import operator
import os
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .keys import (
    ALL_STEPS,
    BLOCK_SCRAMBLE,
    NEGATIVE_POSITIVE,
    PIXEL_SHUFFLE,
    PURPOSE_BLOCK_SCRAMBLE,
    PURPOSE_NEGATIVE_POSITIVE,
    PURPOSE_PIXEL_SHUFFLE,
    LCryptKey,
    geometry_label,
)

if TYPE_CHECKING:
    import torch

    Array = torch.Tensor | np.ndarray

# torch is imported only for tensors: numpy arrays (the command line's encrypt/decrypt) never load it.


# On CPU, numpy's take gathers faster than torch's index_select (measured on 64x3x224x224: about 3x for uint8, 1.5x
# for float32), and it releases the GIL, so a large batch is split across threads. Below this size per thread, the
# hand-off costs more than it saves.
@functools.cache
def _numpy_dtypes() -> dict[torch.dtype, type]:
    import torch

    return {
        torch.uint8: np.uint8,
        torch.int16: np.int16,  # 16-bit images, reinterpreted (see BlockCipher._apply)
        torch.float16: np.float16,
        torch.float32: np.float32,
        torch.float64: np.float64,
    }


_MIN_BYTES_PER_THREAD = 1 << 20
# The flat gather needs an int64 index per value (8x a uint8 image, and several times that to build it). Images with
# more values than this are transformed block by block instead, in chunks, with only small key-sized indices: a
# 12000x12000 RGB image then peaks at a few times its own size (docs/reliability.md).
_BLOCKWISE_MIN_VALUES = 1 << 22
_BLOCKWISE_CHUNK_BYTES = 32 << 20
# The integer dtypes flip as XOR with all bits set: 255 ^ x = 255 - x for bytes; for 16-bit images, viewed as
# int16, -1 (0xFFFF) ^ x has the bits of 65535 - x.
_XOR_ALL = {np.dtype(np.uint8): 255, np.dtype(np.int16): -1}
_pools: dict[int, ThreadPoolExecutor] = {}  # by number of threads, which follows torch.get_num_threads()


def _threads() -> int:
    """Threads for one gather: torch's setting once torch is loaded; one without it (the command line, which runs
    several processes instead)."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else 1


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hf-lcrypt")
    return _pools[threads]


# A forked child (e.g. a DataLoader worker) inherits the pool objects but not their threads.
os.register_at_fork(after_in_child=_pools.clear)


def _flip(values: Array, flip: Array | None) -> None:
    """The negative-positive step in place, for numpy arrays and torch tensors alike.

    `flip` is the operand from `BlockCipher._device_plan`: for integers the bits to XOR (255 for bytes: 255 ^ x =
    255 - x; all 16 bits for 16-bit images), for floats a stacked (sign, offset) pair (x * -1 + 1 = 1 - x, exactly
    the rounding of 1 - x; x * 1 + 0 = x).
    """
    if flip is None:
        return
    if flip.ndim == 1:
        values ^= flip
    else:
        values *= flip[0]
        values += flip[1]


def _transform(src: torch.Tensor, index: torch.Tensor, flip: torch.Tensor | None, dst: torch.Tensor) -> None:
    """dst[b, l] = flip_l(src[b, index[l]]) for 2-D src and dst: the whole cipher, once its plan is known."""
    if not _numpy_ok(src):
        import torch

        torch.index_select(src, 1, index, out=dst)
        _flip(dst, flip)
        return
    _gather(src.numpy(), index.numpy(), None if flip is None else flip.numpy(), dst.numpy())


def _gather(s: np.ndarray, i: np.ndarray, f: np.ndarray | None, d: np.ndarray) -> None:
    """`_transform` on numpy arrays: d[b, l] = flip_l(s[b, i[l]])."""

    def run(lo: int, hi: int) -> None:
        # mode="wrap" changes nothing (the indices are valid), but unlike the default "raise" it does not make
        # numpy buffer the output and copy it once more. The flip follows while the rows are still in cache.
        np.take(s[lo:hi], i, axis=1, out=d[lo:hi], mode="wrap")
        _flip(d[lo:hi], f)

    workers = min(_threads(), s.shape[0], s.nbytes // _MIN_BYTES_PER_THREAD)
    if workers <= 1:
        run(0, s.shape[0])
        return
    # Several chunks per thread, so that a thread slowed down by another process holds the others up less.
    bounds = np.linspace(0, s.shape[0], min(s.shape[0], 4 * workers) + 1).astype(int)
    list(_pool(workers).map(run, bounds[:-1], bounds[1:]))  # list() re-raises a worker's exception here


def _numpy_ok(t: torch.Tensor) -> bool:
    """Whether numpy can work on `t` directly (the CPU fast paths)."""
    return t.device.type == "cpu" and t.dtype in _numpy_dtypes() and not t.requires_grad


def _empty(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A new tensor for the result.

    On CPU it comes from numpy, which asks Linux for transparent huge pages for large arrays: writing the result
    then takes far fewer page faults than in torch's allocation (which made encrypt about 1.5x slower).
    """
    import torch

    if like.device.type == "cpu" and like.dtype in _numpy_dtypes():
        return torch.from_numpy(np.empty(shape, dtype=_numpy_dtypes()[like.dtype]))
    return torch.empty(shape, dtype=like.dtype, device=like.device)


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors may share memory (conservatively: whether their storages intersect)."""
    if a.device != b.device:
        return False
    sa, sb = a.untyped_storage(), b.untyped_storage()
    return sa.data_ptr() < sb.data_ptr() + sb.nbytes() and sb.data_ptr() < sa.data_ptr() + sa.nbytes()


def size_pair(size: int | Iterable[int]) -> tuple[int, int]:
    """(height, width) of a size given as one side or as two: the one reading of `image_size` everywhere."""
    if not isinstance(size, Iterable):
        side = operator.index(size)
        return side, side
    h, w = tuple(size)
    return operator.index(h), operator.index(w)


@dataclass(frozen=True)
class _Plan:
    """A flat gather index and the flip mask in output coordinates, for one layout."""

    index: np.ndarray  # int64 (L,)
    flip: np.ndarray  # bool (L,)


class BlockCipher:
    """Encrypt and decrypt images with a secret key, block by block.

    Args:
        key: the secret (an `LCryptKey`, or anything `LCryptKey.coerce` accepts).
        image_size: H (square) or (H, W); the block size must divide both.
        block_size: M, the side of a block; equal it to the ViT patch size so the key can be folded.
        channels: C, the number of colour channels (3 for RGB).
        steps: which of `ALL_STEPS` to apply, in any order of naming (they always run in the order listed there).

    Tensors are (C,H,W) or (B,C,H,W); numpy arrays are (H,W,C) or (B,H,W,C). uint8 values are 0..255 and flip as
    255 - x; uint16 values (16-bit images) are 0..65535 and flip as 65535 - x; float values must lie in [0,1] and
    flip as 1 - x. Integer images round-trip bit-exactly.
    """

    def __init__(
        self,
        key: LCryptKey | str | bytes,
        image_size: int | tuple[int, int],
        block_size: int,
        channels: int = 3,
        steps: Iterable[str] = ALL_STEPS,
    ):
        self.key = LCryptKey.coerce(key)
        self.height, self.width = size_pair(image_size)
        self.block_size = int(block_size)
        self.channels = int(channels)
        steps = tuple(steps)
        unknown = sorted(set(steps) - set(ALL_STEPS))
        if unknown:
            raise ValueError(f"Unknown cipher step(s) {unknown}; choose from {list(ALL_STEPS)}.")
        repeated = sorted({step for step in steps if steps.count(step) > 1})
        if repeated:
            raise ValueError(f"Cipher step(s) {repeated} named more than once; name each step at most once.")
        self.steps = tuple(s for s in ALL_STEPS if s in steps)
        if min(self.height, self.width) < 1:
            raise ValueError(f"The image size must be positive, got {self.height}x{self.width}.")
        if self.block_size < 1 or self.height % self.block_size or self.width % self.block_size:
            raise ValueError(
                f"Block size {self.block_size} does not divide the image size {self.height}x{self.width}; "
                f"resize the images to a multiple of {self.block_size} or choose a block size that divides both sides."
            )
        if self.channels < 1:
            raise ValueError(f"channels must be at least 1, got {self.channels}.")
        self.grid = (self.height // self.block_size, self.width // self.block_size)
        self.num_blocks = self.grid[0] * self.grid[1]
        self.block_dim = self.channels * self.block_size**2
        geometry = geometry_label(self.height, self.width, self.block_size, self.channels)
        n, d = self.num_blocks, self.block_dim
        self.pixel_perm = (
            self.key.permutation(PURPOSE_PIXEL_SHUFFLE, geometry, d) if PIXEL_SHUFFLE in self.steps else np.arange(d)
        )
        self.flip_mask = (
            self.key.mask(PURPOSE_NEGATIVE_POSITIVE, geometry, d)
            if NEGATIVE_POSITIVE in self.steps
            else np.zeros(d, dtype=bool)
        )
        self.block_perm = (
            self.key.permutation(PURPOSE_BLOCK_SCRAMBLE, geometry, n) if BLOCK_SCRAMBLE in self.steps else np.arange(n)
        )
        self._plans: dict[tuple[str, bool], _Plan] = {}
        self._device_cache: dict[tuple[str, bool, str, torch.dtype], tuple[torch.Tensor, torch.Tensor | None]] = {}

    @property
    def key_id(self) -> str:
        return self.key.key_id

    def __repr__(self) -> str:
        return (
            f"BlockCipher(key_id={self.key_id!r}, image_size=({self.height}, {self.width}), "
            f"block_size={self.block_size}, channels={self.channels}, steps={list(self.steps)})"
        )

    # -- index construction (once per layout) -----------------------------------------------------------------
    def block_positions(self, layout: str = "chw") -> np.ndarray:
        """(N, C*M*M) flat positions of every block value: blocks in raster order, values in (c, row, col) order.

        This is the order in which a ViT's Conv2d patch embedding flattens a patch, and in which it numbers tokens.
        """
        c, h, w = self.channels, self.height, self.width
        ci, hi, wi = np.meshgrid(np.arange(c), np.arange(h), np.arange(w), indexing="ij")
        flat = ci * h * w + hi * w + wi if layout == "chw" else (hi * w + wi) * c + ci
        (gh, gw), m = self.grid, self.block_size
        return flat.reshape(c, gh, m, gw, m).transpose(1, 3, 0, 2, 4).reshape(self.num_blocks, self.block_dim)

    def _plan(self, layout: str, inverse: bool) -> _Plan:
        cached = self._plans.get((layout, inverse))
        if cached is not None:
            return cached
        pos = self.block_positions(layout)
        length = pos.size
        src = pos[self.block_perm][:, self.pixel_perm]  # encrypted[n, k] = plain[block_perm[n], pixel_perm[k]]
        index = np.empty(length, dtype=np.int64)
        index[pos.ravel()] = src.ravel()
        flip = np.empty(length, dtype=bool)
        flip[pos.ravel()] = np.broadcast_to(self.flip_mask, pos.shape).ravel()
        if inverse:  # plain[j] = unflip(encrypted[inv[j]]) with the flip of that encrypted position
            inv = np.empty_like(index)
            inv[index] = np.arange(length)
            index, flip = inv, flip[inv]
        plan = _Plan(index=index, flip=flip)
        self._plans[(layout, inverse)] = plan
        return plan

    def _device_plan(
        self, layout: str, inverse: bool, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`_numpy_plan` as tensors on `device` in `dtype` (bfloat16 and other dtypes numpy lacks: from float64)."""
        import torch

        cache_key = (layout, inverse, str(device), dtype)
        cached = self._device_cache.get(cache_key)
        if cached is not None:
            return cached
        numpy_dtype = {torch.uint8: np.uint8, torch.int16: np.int16}.get(dtype, np.float64)
        index, flip = self._numpy_plan(layout, inverse, numpy_dtype)
        index = torch.from_numpy(index).to(device)
        flip = None if flip is None else torch.from_numpy(flip).to(device=device, dtype=dtype)
        self._device_cache[cache_key] = (index, flip)
        return index, flip

    def _numpy_plan(self, layout: str, inverse: bool, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None]:
        """Index and flip operand: XOR bits for integers (`_XOR_ALL`), a (sign, offset) pair stacked for floats."""
        cache_key = (layout, inverse, "numpy", np.dtype(dtype))
        cached = self._device_cache.get(cache_key)
        if cached is not None:
            return cached
        plan = self._plan(layout, inverse)
        flip = None
        if plan.flip.any():
            if np.dtype(dtype) in _XOR_ALL:
                flip = (plan.flip * _XOR_ALL[np.dtype(dtype)]).astype(dtype)
            else:
                flip = np.stack([np.where(plan.flip, -1.0, 1.0), plan.flip.astype(np.float64)]).astype(dtype)
        self._device_cache[cache_key] = (plan.index, flip)
        return plan.index, flip

    # -- public API -------------------------------------------------------------------------------------------
    def encrypt(self, x: Array, out: Array | None = None) -> Array:
        """Encrypt images; returns the input's type, dtype and device (written into `out`, which may be `x`)."""
        return self._apply(x, inverse=False, out=out)

    def decrypt(self, y: Array, out: Array | None = None) -> Array:
        """Exact inverse of `encrypt` (bit-exact for uint8; within one float rounding of x for floats)."""
        return self._apply(y, inverse=True, out=out)

    def _apply(self, x: Array, inverse: bool, out: Array | None) -> Array:
        if isinstance(x, np.ndarray):
            return self._apply_numpy(x, inverse, out)
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(x, torch.Tensor):
            layout, tensor = "chw", x
        else:
            raise TypeError(
                f"Expected a torch.Tensor (C,H,W)/(B,C,H,W) or a numpy array (H,W,C)/(B,H,W,C), got "
                f"{type(x).__name__}; convert PIL images with numpy.asarray(image)."
            )
        self._check(tensor, layout)
        target = None if out is None else self._check_out(out, tensor)
        # 16-bit images work on the same bits viewed as int16, which every backend gathers and XORs.
        work = tensor.view(torch.int16) if tensor.dtype == torch.uint16 else tensor
        target_work = target.view(torch.int16) if target is not None and target.dtype == torch.uint16 else target
        flat = work.reshape(-1, self.channels * self.height * self.width)
        # A gather cannot write over its own input, so an overlapping `out` gets the result by a final copy.
        direct = target_work is not None and not _overlap(target_work, work)
        result = target_work.view(flat.shape) if direct else _empty(flat.shape, flat)

        if flat.shape[1] >= _BLOCKWISE_MIN_VALUES and _numpy_ok(flat):
            self._transform_blockwise(flat.numpy(), result.numpy(), layout, inverse)
        else:
            index, flip = self._device_plan(layout, inverse, flat.device, flat.dtype)
            _transform(flat, index, flip, result)

        if target_work is None:
            return result.view(tensor.shape).view(tensor.dtype)
        if not direct:
            target_work.view(flat.shape).copy_(result)
        return out

    def _apply_numpy(self, x: np.ndarray, inverse: bool, out: np.ndarray | None) -> np.ndarray:
        """`_apply` for (H,W,C)/(B,H,W,C) numpy arrays, in numpy alone: the same gathers on the same plans."""
        x = np.ascontiguousarray(x)
        self._check(x, "hwc")
        if out is not None:
            self._check_out_numpy(out, x)
        # 16-bit images work on the same bits viewed as int16, as the tensor path does.
        work = x.view(np.int16) if x.dtype == np.uint16 else x
        flat = work.reshape(-1, self.channels * self.height * self.width)
        direct = out is not None and not np.shares_memory(out, x)
        result = out.view(work.dtype).reshape(flat.shape) if direct else np.empty(flat.shape, work.dtype)
        if flat.shape[1] >= _BLOCKWISE_MIN_VALUES:
            self._transform_blockwise(flat, result, "hwc", inverse)
        else:
            index, flip = self._numpy_plan("hwc", inverse, flat.dtype)
            _gather(flat, index, flip, result)
        if out is None:
            return result.view(x.dtype).reshape(x.shape)
        if not direct:
            out.reshape(-1).view(work.dtype)[:] = result.reshape(-1)
        return out

    @staticmethod
    def _check_out_numpy(out: np.ndarray, x: np.ndarray) -> None:
        if not isinstance(out, np.ndarray):
            raise ValueError(f"out must be a numpy array like the input, got {type(out).__name__}.")
        if not out.flags.writeable:
            raise ValueError("out is a read-only numpy array; pass a writable one, e.g. numpy.empty_like(x).")
        if out.shape != x.shape or out.dtype != x.dtype:
            raise ValueError(
                f"out must match the input: shape {x.shape}, dtype {x.dtype}; got {out.shape}, {out.dtype}."
            )
        if not out.flags.c_contiguous:
            raise ValueError("out must be contiguous; allocate it with torch.empty_like(x) or numpy.empty_like(x).")

    def _transform_blockwise(self, src: np.ndarray, dst: np.ndarray, layout: str, inverse: bool) -> None:
        """The same transform as the flat gather, a chunk of blocks at a time with key-sized indices only.

        Encryption: encrypted block n, value k = flip_k(plain block block_perm[n], value pixel_perm[k]), values in
        (c, row, col) order. Decryption gathers with the inverse permutations and the flips moved to plain positions.
        """
        (gh, gw), m, c, batch = self.grid, self.block_size, self.channels, src.shape[0]
        block_perm, pixel_perm, flip = self.block_perm, self.pixel_perm, self.flip_mask
        if inverse:
            block_perm, pixel_perm = np.argsort(block_perm), np.argsort(pixel_perm)
            flip = flip[pixel_perm]
        # Two index arrays apart in a subscript put their axis first: a gathered chunk starts with K, its blocks.
        if layout == "hwc":  # (B, gh, M, gw, M, C); a gathered chunk is (K, B, M, M, C)
            src6, dst6 = src.reshape(batch, gh, m, gw, m, c), dst.reshape(batch, gh, m, gw, m, c)
            to_chw, from_chw = (0, 1, 4, 2, 3), (0, 1, 3, 4, 2)
        else:  # (B, C, gh, M, gw, M); a gathered chunk is (K, B, C, M, M)
            src6, dst6 = src.reshape(batch, c, gh, m, gw, m), dst.reshape(batch, c, gh, m, gw, m)
            to_chw = from_chw = (0, 1, 2, 3, 4)
        flip_any = flip.any()
        integer = np.issubdtype(src.dtype, np.integer)
        xor = np.where(flip, ~np.zeros((), src.dtype), 0).astype(src.dtype) if integer else None
        chunk = max(1, _BLOCKWISE_CHUNK_BYTES // max(1, batch * self.block_dim * src.itemsize))
        for lo in range(0, self.num_blocks, chunk):
            hi = min(lo + chunk, self.num_blocks)
            rows, cols = np.divmod(block_perm[lo:hi], gw)
            gathered = src6[:, rows, :, cols] if layout == "hwc" else src6[:, :, rows, :, cols]
            values = np.ascontiguousarray(gathered.transpose(to_chw)).reshape(hi - lo, batch, self.block_dim)
            values = np.take(values, pixel_perm, axis=2)
            if flip_any:
                if integer:
                    values ^= xor
                else:
                    np.subtract(values.dtype.type(1), values, out=values, where=flip)
            values = values.reshape(hi - lo, batch, c, m, m).transpose(from_chw)
            rows, cols = np.divmod(np.arange(lo, hi), gw)
            if layout == "hwc":
                dst6[:, rows, :, cols] = values
            else:
                dst6[:, :, rows, :, cols] = values

    @staticmethod
    def _check_out(out: Array, tensor: torch.Tensor) -> torch.Tensor:
        if isinstance(out, np.ndarray):
            raise ValueError("out must be a torch.Tensor like the input, not a numpy array.")
        target = out
        if target.shape != tensor.shape or target.dtype != tensor.dtype or target.device != tensor.device:
            raise ValueError(
                f"out must match the input: shape {tuple(tensor.shape)}, dtype {tensor.dtype}, device "
                f"{tensor.device}; got {tuple(target.shape)}, {target.dtype}, {target.device}."
            )
        if not target.is_contiguous():
            raise ValueError("out must be contiguous; allocate it with torch.empty_like(x) or numpy.empty_like(x).")
        return target

    def _check(self, x: torch.Tensor | np.ndarray, layout: str) -> None:
        """Shape, channels, size, dtype and float range of a tensor (layout chw) or numpy array (hwc)."""
        if x.ndim not in (3, 4):
            expected = "(C,H,W) or (B,C,H,W)" if layout == "chw" else "(H,W,C) or (B,H,W,C)"
            raise ValueError(
                f"Expected an image of shape {expected}, got rank {x.ndim} {tuple(x.shape)}; "
                "add a channel axis to greyscale images (or convert them to RGB) and stack batches."
            )
        shape = tuple(x.shape[-3:])
        c, h, w = shape if layout == "chw" else (shape[2], shape[0], shape[1])
        if c != self.channels:
            hint = "numpy arrays are channels-last (H,W,C)" if layout == "hwc" else "tensors are channels-first (C,H,W)"
            raise ValueError(
                f"The image has {c} channels but this cipher was built for {self.channels} ({hint}); convert with "
                f"image.convert('RGB') or build the cipher with channels={c}."
            )
        if (h, w) != (self.height, self.width):
            raise ValueError(
                f"The image is {h}x{w} but this cipher was built for {self.height}x{self.width}; resize the image or "
                "build a BlockCipher for this geometry."
            )
        if isinstance(x, np.ndarray):
            integer, floating = x.dtype in (np.uint8, np.uint16), x.dtype in (np.float16, np.float32, np.float64)
        else:
            import torch

            integer, floating = x.dtype in (torch.uint8, torch.uint16), x.is_floating_point()
        if integer:
            return
        if not floating:
            raise ValueError(
                f"Unsupported dtype {x.dtype}: use uint8 (0..255), uint16 (0..65535, 16-bit images) or a float dtype "
                "with values in [0,1]."
            )
        if x.size == 0 if isinstance(x, np.ndarray) else x.numel() == 0:
            return
        if isinstance(x, np.ndarray):
            lo, hi = x.min(), x.max()
        else:
            import torch

            lo, hi = torch.aminmax(x)
        if not (lo >= 0 and hi <= 1):  # written so that NaN fails too
            raise ValueError(
                f"Float images must lie in [0,1], got values in [{float(lo):.4g}, {float(hi):.4g}]; divide uint8 "
                "images by 255 (and encrypt before normalising with mean/std)."
            )

    # -- helpers used by the ViT folding and the attacks ------------------------------------------------------
    def signed_permutation(self) -> tuple[np.ndarray, np.ndarray]:
        """The in-block transform as (perm, flip): encrypted_block[k] = flip[k] ? 1 - x[perm[k]] : x[perm[k]]."""
        return self.pixel_perm.copy(), self.flip_mask.copy()

    def describe(self) -> dict[str, Any]:
        """Public description (no secret): geometry, steps and key fingerprint."""
        return {
            "key_id": self.key_id,
            "image_size": [self.height, self.width],
            "block_size": self.block_size,
            "channels": self.channels,
            "steps": list(self.steps),
        }


class CipherCache:
    """One `BlockCipher` per image size and channel count for one key, block size and steps: a cipher's
    permutations are derived once, then reused for every image of that size (mixed-size folders, batches)."""

    def __init__(self, key: LCryptKey | str | bytes, block_size: int, steps: Iterable[str] = ALL_STEPS):
        self.key = LCryptKey.coerce(key)
        self.block_size = int(block_size)
        self.steps = steps
        self._ciphers: dict[tuple[int, int, int], BlockCipher] = {}

    def get(self, height: int, width: int, channels: int = 3) -> BlockCipher:
        geometry = (int(height), int(width), int(channels))
        if geometry not in self._ciphers:
            self._ciphers[geometry] = BlockCipher(self.key, geometry[:2], self.block_size, geometry[2], self.steps)
        return self._ciphers[geometry]
