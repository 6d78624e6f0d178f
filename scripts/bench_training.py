"""Training throughput with encryption in the input pipeline against the same training without it.

Both arms run the same ViT preset (the keyed arm is the plain initialisation with the key folded in), the same
batches of the same images, the same augmentation and the same optimiser; the only difference is the processor
(`LCryptImageProcessor` with and without `do_encrypt`). Rounds of `--steps` training steps alternate between the
arms so that drift in machine load hits both alike; the median steps/s of each arm are compared.

Target: encrypted / plain >= 0.95. CPU (the README's benchmark figure):
    python scripts/bench_training.py --model tiny --image-size 64 --block-size 8
GPU check (ViT-S/16 at 224x224):
    python scripts/bench_training.py --model small --image-size 224 --block-size 16 --batch-size 128 --workers 8 --bf16
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from datasets import Image as ImageFeature
from torch.utils.data import DataLoader

from hf_lcrypt import LCryptImageProcessor, LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.keys import KEY_ENV_VAR
from hf_lcrypt.plain_augment import Augment
from hf_lcrypt.training import HALF
from hf_lcrypt.training.presets import MODEL_PRESETS, ModelSpec
from hf_lcrypt.training.transforms import ImageTransform

SHARED_MRI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "brain-tumor-mri" / "train"


def image_dataset(count: int, folder: Path = SHARED_MRI) -> tuple[Dataset, str]:
    """Real brain MRI JPEGs when `folder` (../shared/data's by default) holds them, else random 224x224 RGB images."""
    files = sorted(folder.glob("*/*.jpg"))
    files = files[:: max(1, len(files) // count)][:count]  # spread over the classes
    if len(files) == count:
        labels = [sorted(p.name for p in folder.iterdir()).index(f.parent.name) for f in files]
        data = Dataset.from_dict({"image": [str(f) for f in files], "label": labels})
        return data.cast_column("image", ImageFeature()), "brain MRI JPEGs"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(count)]
    return Dataset.from_dict({"image": images, "label": [i % 4 for i in range(count)]}).cast_column(
        "image", ImageFeature()
    ), "random images"


class Arm:
    """One side of the comparison: a model, its optimiser and an endless stream of batches."""

    def __init__(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, bf16: bool, lr: float):
        self.model = model.to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr)
        self.batches = _forever(loader)  # not itertools.cycle, which would replay stored batches unprocessed
        self.device, self.bf16 = device, bf16

    def run(self, steps: int) -> float:
        """Steps per second over `steps` training steps, input pipeline included."""
        start = time.perf_counter()
        for _ in range(steps):
            batch = next(self.batches)
            pixels = batch["pixel_values"].to(self.device, non_blocking=True)
            labels = batch["labels"].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = F.cross_entropy(self.model(pixel_values=pixels).logits.float(), labels)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return steps / (time.perf_counter() - start)


def _forever(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of `loader`, epoch after epoch, each one freshly loaded, augmented and (maybe) encrypted."""
    while True:
        yield from loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=[n for n, p in MODEL_PRESETS.items() if p.foldable])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=512, help="distinct images the batches cycle through")
    parser.add_argument("--data", type=Path, default=SHARED_MRI, help="class folders of JPEGs (default: brain MRI)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per round and arm")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPUs)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args()

    device = torch.device(args.device)
    dataset, source = image_dataset(args.images, args.data)
    key = LCryptKey.generate()
    labels = {i: f"class_{i}" for i in range(4)}
    spec = ModelSpec(args.image_size, args.block_size, labels, {v: k for k, v in labels.items()})
    torch.manual_seed(0)
    plain = MODEL_PRESETS[args.model].build(spec)
    keyed = LCryptViTForImageClassification.from_plain(plain, key, image_mean=HALF, image_std=HALF)
    geometry = {"image_size": args.image_size, "block_size": args.block_size}
    geometry |= {"image_mean": list(HALF), "image_std": list(HALF)}

    def loader(processor: LCryptImageProcessor) -> DataLoader:
        return DataLoader(
            dataset.with_transform(ImageTransform(processor, Augment())),
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
            pin_memory=device.type == "cuda",
            generator=torch.Generator().manual_seed(0),
        )

    key_folder = tempfile.TemporaryDirectory()  # workers find the key here (ImageTransform pickles without it)
    os.environ[KEY_ENV_VAR] = str(key.save(Path(key_folder.name) / "bench.key"))
    arms = {
        "plain": Arm(plain, loader(LCryptImageProcessor(**geometry, do_encrypt=False)), device, args.bf16, 1e-4),
        "encrypted": Arm(keyed, loader(LCryptImageProcessor(**geometry, key=key)), device, args.bf16, 1e-4),
    }
    for arm in arms.values():
        arm.run(args.warmup_steps)
    rates: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.rounds):
        for name, arm in arms.items():
            rates[name].append(arm.run(args.steps))
    median = {name: statistics.median(values) for name, values in rates.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    n_params = sum(p.numel() for p in plain.parameters()) / 1e6
    print(
        f"{args.model} ViT ({n_params:.1f}M), {args.image_size}x{args.image_size} in blocks of {args.block_size}, "
        f"batch {args.batch_size}, {source}, {args.workers} workers, {name}{', bf16' if args.bf16 else ''}"
    )
    for arm_name, rate in median.items():
        print(
            f"{arm_name:>9}: {rate:7.2f} steps/s  {rate * args.batch_size:8.1f} images/s  (rounds: "
            + ", ".join(f"{r:.2f}" for r in rates[arm_name])
            + ")"
        )
    ratio = median["encrypted"] / median["plain"]
    print(f"ratio encrypted / plain: {ratio:.3f}   (target >= 0.95)")
    if args.json:
        figures = {"model": args.model, "image_size": args.image_size, "block_size": args.block_size}
        figures |= {"batch_size": args.batch_size, "bf16": args.bf16, "workers": args.workers, "device": name}
        figures |= {"images_per_second": {arm: rate * args.batch_size for arm, rate in median.items()}}
        args.json.write_text(json.dumps({**figures, "ratio_encrypted_plain": ratio}, indent=2) + "\n")
    key_folder.cleanup()


if __name__ == "__main__":
    main()
