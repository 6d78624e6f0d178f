"""Peak memory of `hf-lcrypt encrypt` and `decrypt` on one large image at full size, as a multiple of the image.

Each command runs in its own process; its peak resident set size (ru_maxrss) is compared with that of a process that
only imports hf_lcrypt and exits, so the difference is what the image costs. Run it against another checkout with
--code-dir to compare versions:

    python scripts/bench_memory.py --size 6000
    python scripts/bench_memory.py --size 6000 --code-dir /path/to/other/checkout
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def peak_rss_mb(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    """Peak RSS (MB) of one child process running `python argv...` (in `cwd`: `-m` imports from there first)."""
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, sys.executable, *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return int(done.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=6000, help="side of the square RGB test image (default 6000)")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--code-dir", type=Path, default=Path(__file__).resolve().parents[1], help="checkout to test")
    args = parser.parse_args()
    side = args.size - args.size % args.block_size
    env = {**os.environ, "PYTHONPATH": str(args.code_dir.resolve())}
    with tempfile.TemporaryDirectory(prefix="hf-lcrypt-mem-") as tmp:
        tmp = Path(tmp)
        # A smooth image with noise: compresses like a photograph, not like pure noise or a flat colour.
        ramp = np.linspace(0, 200, side, dtype=np.float32)
        rng = np.random.default_rng(0)
        pixels = (ramp[:, None, None] + ramp[None, :, None] / 4 + rng.integers(0, 32, (side, side, 3))).astype(np.uint8)
        Image.fromarray(pixels).save(tmp / "big.png", compress_level=1)
        del pixels
        key = tmp / "k.key"
        subprocess.run(
            [sys.executable, "-m", "hf_lcrypt", "keygen", str(key)], env=env, check=True, capture_output=True
        )
        common = ["--key-file", str(key), "--block-size", str(args.block_size)]
        base = peak_rss_mb(["-c", "import hf_lcrypt.cli, hf_lcrypt.cipher"], env, tmp)
        image_mb = side * side * 3 / 2**20
        print(
            f"code: {args.code_dir}  image: {side}x{side} RGB uint8 = {image_mb:.0f} MB  import baseline: {base:.0f} MB"
        )
        for name, argv in (
            ("encrypt", ["-m", "hf_lcrypt", "encrypt", *common, str(tmp / "big.png"), str(tmp / "enc.png")]),
            ("decrypt", ["-m", "hf_lcrypt", "decrypt", *common, str(tmp / "enc.png"), str(tmp / "dec.png")]),
        ):
            peak = peak_rss_mb(argv, env, tmp)
            print(
                f"{name}: peak RSS {peak:.0f} MB, {peak - base:.0f} MB above the baseline = "
                f"{(peak - base) / image_mb:.1f}x the image"
            )


if __name__ == "__main__":
    main()
