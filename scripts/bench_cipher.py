"""Benchmark BlockCipher.encrypt on CPU against a clone, a plain copy and a straightforward Python-loop cipher.

The loop implementation is the baseline a reader would write from the paper: for each image and each block,
shuffle the block's values, flip some, and put the block at its scrambled place. It is checked to give the same
ciphertext, so the table compares like with like. Targets: float32 encrypt within 2x of `clone`, and uint8 costing
no more per image than float32.

    python scripts/bench_cipher.py [--batch 64] [--repeats 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from hf_lcrypt import BlockCipher, LCryptKey

IMAGE_SIZE, BLOCK_SIZE, CHANNELS = 224, 16, 3


def loop_encrypt(cipher: BlockCipher, x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-block reference: encrypted block n = flip(plain block block_perm[n] at pixel_perm)."""
    m, (_, gw) = cipher.block_size, cipher.grid
    perm = torch.from_numpy(cipher.pixel_perm)
    mask = torch.from_numpy(cipher.flip_mask)
    out = torch.empty_like(x)
    for b in range(x.shape[0]):
        for n, src in enumerate(cipher.block_perm.tolist()):
            si, sj = divmod(src, gw)
            di, dj = divmod(n, gw)
            values = x[b, :, si * m : (si + 1) * m, sj * m : (sj + 1) * m].reshape(-1)[perm]
            flipped = 255 - values if x.dtype == torch.uint8 else 1 - values
            values = torch.where(mask, flipped, values)
            out[b, :, di * m : (di + 1) * m, dj * m : (dj + 1) * m] = values.view(x.shape[1], m, m)
    return out


def median_times(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per call; the functions take turns so that a noisy neighbour slows all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up: plans, thread pool, allocator
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench(dtype: torch.dtype, batch: int, repeats: int) -> dict[str, float]:
    cipher = BlockCipher(LCryptKey(bytes(range(32))), IMAGE_SIZE, BLOCK_SIZE, CHANNELS)
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (batch, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8, generator=generator)
    if dtype != torch.uint8:
        x = x.to(dtype) / 255
    buffer = torch.empty_like(x)
    few = x[:4]
    if not torch.equal(cipher.encrypt(x)[:4], loop_encrypt(cipher, few)):
        raise SystemExit(f"{dtype}: the vectorised cipher and the loop baseline disagree")
    fast = median_times(
        {
            "clone": x.clone,
            "copy_": lambda: buffer.copy_(x),
            "encrypt": lambda: cipher.encrypt(x),
            "encrypt_out": lambda: cipher.encrypt(x, out=buffer),
        },
        repeats,
    )
    # The loop is ~1000x slower: time it on a few images and scale, with fewer repeats.
    fast["loop"] = median_times({"loop": lambda: loop_encrypt(cipher, few)}, max(1, repeats // 3))["loop"]
    fast["loop"] *= batch / few.shape[0]
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    print(
        f"batch {args.batch}x{CHANNELS}x{IMAGE_SIZE}x{IMAGE_SIZE}, block {BLOCK_SIZE}, CPU, "
        f"{torch.get_num_threads()} torch threads, median of {args.repeats}"
    )
    results = {dtype: bench(dtype, args.batch, args.repeats) for dtype in (torch.float32, torch.uint8)}
    header = (
        f"{'dtype':8} {'encrypt ms':>10} {'ms/image':>9} {'enc/clone':>9} {'loop/clone':>10} {'loop/enc':>9} "
        f"{'bw share':>9} {'bw share out=':>13}"
    )
    print(header)
    for dtype, t in results.items():
        print(
            f"{str(dtype).removeprefix('torch.'):8} {t['encrypt'] * 1e3:10.2f} {t['encrypt'] * 1e3 / args.batch:9.3f} "
            f"{t['encrypt'] / t['clone']:9.2f} {t['loop'] / t['clone']:10.0f} {t['loop'] / t['encrypt']:9.0f} "
            f"{t['copy_'] / t['encrypt']:9.0%} {t['copy_'] / t['encrypt_out']:13.0%}"
        )
    f32, u8 = results[torch.float32], results[torch.uint8]
    print(
        f"targets: float32 encrypt/clone {f32['encrypt'] / f32['clone']:.2f} (<= 2.0), "
        f"uint8/float32 per image {u8['encrypt'] / f32['encrypt']:.2f} (<= 1.0)"
    )
    print("bw share: bytes moved per second as a share of copy_ into a preallocated buffer (same bytes).")


if __name__ == "__main__":
    main()
