"""Keyed model on encrypted images vs the plain model on plain images: same batch, same run.

Prints the time ratio (target <= 1.01: folding adds no computation), the largest logit difference, and the time
to fold a key into a ViT-Base-sized model (target under 1 s).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from transformers import ViTForImageClassification

from hf_lcrypt import LCryptKey, LCryptViTForImageClassification
from hf_lcrypt.training.presets import ModelSpec, vit_preset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def vit(hidden: int, layers: int, heads: int) -> ViTForImageClassification:
    """The training presets' ViT layout at 224/16 with random weights."""
    labels = {i: f"class_{i}" for i in range(4)}
    spec = ModelSpec(224, 16, labels, {name: i for i, name in labels.items()})
    return vit_preset(hidden, layers, heads).build(spec).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--hidden", type=int, default=384, help="width of the timed model (ViT-S/16 by default)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPUs)")
    parser.add_argument("--fold-layers", type=int, default=12, help="depth of the ViT-Base whose folding is timed")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)

    key = LCryptKey.generate()
    plain = vit(args.hidden, args.layers, args.heads)
    keyed = LCryptViTForImageClassification.from_plain(plain, key, image_mean=MEAN, image_std=STD).eval()
    plain, keyed = plain.to(device), keyed.to(device)
    x = torch.rand(args.batch, 3, 224, 224)
    plain_in, keyed_in = normalise(x).to(device), normalise(keyed.cipher(key).encrypt(x)).to(device)

    def timed(model: torch.nn.Module, inputs: torch.Tensor) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            logits = model(inputs).logits
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, logits.float().cpu()

    plain_times, keyed_times = [], []
    with torch.inference_mode():
        timed(plain, plain_in), timed(keyed, keyed_in)  # warm-up
        for repeat in range(args.repeats):  # interleaved, alternating order, so load drift hits both alike
            runs = [(plain, plain_in, plain_times), (keyed, keyed_in, keyed_times)]
            for model, inputs, times in runs if repeat % 2 == 0 else runs[::-1]:
                times.append(timed(model, inputs)[0])
        plain_logits, keyed_logits = timed(plain, plain_in)[1], timed(keyed, keyed_in)[1]
    ratio = statistics.median(keyed_times) / statistics.median(plain_times)
    precision = "bf16" if args.bf16 else "fp32"
    max_diff = (keyed_logits - plain_logits).abs().max().item()
    print(f"ViT hidden={args.hidden} depth={args.layers}, batch {args.batch} at 224/16, {args.repeats} repeats")
    print(f"plain model, plain images  : {statistics.median(plain_times) * 1e3:8.1f} ms")
    print(f"keyed model, encrypted imgs: {statistics.median(keyed_times) * 1e3:8.1f} ms")
    print(f"time ratio keyed / plain   : {ratio:8.3f}   (target <= 1.01)")
    print(f"max |logit difference|     : {max_diff:.2e}   ({precision}, {device.type})")

    base = vit(768, args.fold_layers, 12)
    fold_times = []
    for _ in range(3):
        start = time.perf_counter()
        LCryptViTForImageClassification.from_plain(base, key, image_mean=MEAN, image_std=STD)
        fold_times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in base.parameters()) / 1e6
    print(f"fold a ViT-Base ({params:.0f}M params): {min(fold_times):.3f} s   (target < 1 s; includes copying weights)")
    if args.json:
        figures = {"hidden": args.hidden, "layers": args.layers, "batch": args.batch, "device": str(device)}
        figures |= {"bf16": args.bf16, "ratio_keyed_plain": ratio, "max_abs_logit_diff": max_diff}
        figures |= {"fold_seconds": min(fold_times), "fold_parameters": round(params * 1e6)}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
