"""A keyed model served as PyTorch (transformers' ViT) vs its ONNX export on ONNX Runtime, on the CPU, in one run.

For each model (`micro` at 28/4, the default config's, and a ViT-S/16 at 224) it folds a key into a random ViT,
exports it with `hf_lcrypt.export.export_onnx` (which checks ONNX Runtime against PyTorch at batch sizes 1 and 32),
then times both on the same encrypted batch, alternating them round by round, and prints images per second (median
of the rounds) and the ratio ONNX Runtime / PyTorch.

    python scripts/bench_export.py --threads 2 --batch 32 --rounds 5
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hf_lcrypt import LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.export import export_onnx, onnx_session
from hf_lcrypt.training.presets import MODEL_PRESETS, ModelSpec

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
MODELS = {"micro": ("micro", 28, 4), "vit-s16": ("small", 224, 16)}  # name: (preset, image size, block size)


def keyed_model(preset: str, image_size: int, block_size: int, key: LCryptKey) -> LCryptViTForImageClassification:
    labels = {i: f"class_{i}" for i in range(4)}
    plain = MODEL_PRESETS[preset].build(ModelSpec(image_size, block_size, labels, {v: k for k, v in labels.items()}))
    return LCryptViTForImageClassification.from_plain(plain.eval(), key, image_mean=MEAN, image_std=STD).eval()


def measure(model: torch.nn.Module, session, pixels: torch.Tensor, rounds: int) -> tuple[dict[str, float], float]:
    """Median images/s of PyTorch and ONNX Runtime on `pixels`, alternating round by round, and their largest logit
    difference."""
    feed = {"pixel_values": pixels.numpy()}

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return model(pixel_values=pixels).logits.numpy()

    def run_onnx() -> np.ndarray:
        return session.run(["logits"], feed)[0]

    diff = float(np.abs(run_torch() - run_onnx()).max())  # also the warm-up
    speeds: dict[str, list[float]] = {"pytorch": [], "onnxruntime": []}
    for _ in range(rounds):
        for arm, run in (("pytorch", run_torch), ("onnxruntime", run_onnx)):
            start = time.perf_counter()
            run()
            speeds[arm].append(len(pixels) / (time.perf_counter() - start))
    return {arm: statistics.median(values) for arm, values in speeds.items()}, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op threads of both")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    key = LCryptKey.generate()
    print(f"CPU, {args.threads} threads, batch {args.batch}, median of {args.rounds} rounds")
    for name in args.models.split(","):
        preset, size, block = MODELS[name]
        model = keyed_model(preset, size, block, key)
        pixels = ((model.cipher(key).encrypt(torch.rand(args.batch, 3, size, size)) - 0.5) / 0.5).contiguous()
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx(model, Path(tmp) / "onnx")
            session = onnx_session(Path(tmp) / "onnx" / "model.onnx", threads=args.threads)
            medians, diff = measure(model, session, pixels, args.rounds)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        print(f"{name} ({params:.1f} M parameters, {size}x{size} in blocks of {block}):")
        for arm, value in medians.items():
            print(f"  {arm:>11}: {value:9.1f} images/s")
        ratio = medians["onnxruntime"] / medians["pytorch"]
        print(f"  ratio onnxruntime / pytorch: {ratio:.2f}; max logit difference {diff:.2g}")


if __name__ == "__main__":
    main()
