"""`hf-lcrypt export`: a keyed model as a plain ViT checkpoint or an ONNX graph, for servers without remote code."""

from __future__ import annotations

import argparse
from pathlib import Path

from .options import add_command


def add_export(sub: argparse._SubParsersAction) -> None:
    parser = add_command(
        sub,
        "export",
        run_export,
        "write a keyed model as a plain ViT checkpoint or ONNX graph, for servers without remote code",
        "Write the keyed model in MODEL_DIR to OUT (new or empty) in a form any server runs: --format vit, a plain "
        "`model_type: vit` checkpoint (safetensors, a ViTImageProcessor config that only rescales and normalises "
        "ciphertexts of the model's size, a model card) that AutoModelForImageClassification loads without "
        "trust_remote_code on transformers 4.x and 5.x; --format onnx, model.onnx with a dynamic batch size, "
        "checked with ONNX Runtime (needs hf-lcrypt[onnx]). Either gives the keyed model's logits on encrypted "
        "inputs and holds no key; the key holder's client still encrypts (hf-lcrypt classify). A model with an "
        "MLP patch embedding exports to ONNX only.",
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", type=Path, help="folder of a keyed model")
    parser.add_argument("out", metavar="OUT", type=Path, help="new or empty folder for the export")
    parser.add_argument("--format", choices=("vit", "onnx"), default="vit", help="vit (default) or onnx")
    parser.add_argument("--repo-id", help="Hub repository the card's examples name (default: your-name/OUT)")


def run_export(args: argparse.Namespace) -> int:
    from ..export import export_model

    out = export_model(args.model_dir, args.out, args.format, repo_id=args.repo_id)
    print(f"hf-lcrypt export: wrote {args.format} export to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0
