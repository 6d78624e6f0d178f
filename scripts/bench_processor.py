"""Batch throughput of LCryptImageProcessor against transformers' ViTImageProcessorPil on the same 64 images.

Target: encryption adds at most 15% to the processor's time. Both processors are timed in the same run,
interleaved, and the median of several repeats is compared (this machine is noisy).
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import ViTImageProcessorPil

from hf_lcrypt import LCryptImageProcessor, LCryptKey

SHARED_MRI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain-tumor-mri" / "train"


def load_images(count: int) -> tuple[list[Image.Image], str]:
    """Real MRI images when ../shared/data is present, else random RGB images of the same size."""
    files = sorted(SHARED_MRI.glob("*/*.jpg"))[:count] if SHARED_MRI.is_dir() else []
    if len(files) == count:
        return [Image.open(f).convert("RGB") for f in files], "brain MRI JPEGs (224x224)"
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)) for _ in range(count)], "random"


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    images, source = load_images(args.images)
    size = {"height": args.size, "width": args.size}
    plain = ViTImageProcessorPil(size=size, do_convert_rgb=True)
    keyed = LCryptImageProcessor(image_size=args.size, block_size=args.block_size, key=LCryptKey.generate())
    keyed(images[:1])  # build the cipher index once, as any long-running user would

    plain_times, keyed_times = [], []
    for _ in range(args.repeats):  # interleave so that drift in machine load hits both alike
        plain_times += timed(lambda: plain(images, return_tensors="pt"), 1)
        keyed_times += timed(lambda: keyed(images, return_tensors="pt"), 1)
    plain_median, keyed_median = statistics.median(plain_times), statistics.median(keyed_times)
    geometry = f"{args.size}x{args.size}, block {args.block_size}"
    print(f"{args.images} images ({source}) -> {geometry}, {args.repeats} repeats")
    print(f"ViTImageProcessorPil : {plain_median * 1e3:8.1f} ms  ({args.images / plain_median:7.1f} images/s)")
    print(f"LCryptImageProcessor : {keyed_median * 1e3:8.1f} ms  ({args.images / keyed_median:7.1f} images/s)")
    print(f"ratio keyed / plain  : {keyed_median / plain_median:8.3f}   (target <= 1.15)")


if __name__ == "__main__":
    main()
