"""Helpers shared by the tests: paths, normalisation constants, tiny ViTs, the CLI and fresh processes."""

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def tiny_vit(
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 48,
    layers: int = 2,
    labels: int = 4,
    patch_mlp: int | None = None,
):
    """A random plain ViT classifier, small enough for CPU tests; with `patch_mlp` (a width) its patch embedding is
    an MLP, which takes the keyed class not bound to a key yet."""
    from transformers import ViTConfig, ViTForImageClassification

    from hf_lcrypt import LCryptViTConfig, LCryptViTForImageClassification

    settings = dict(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=3,
        intermediate_size=2 * hidden_size,
        num_labels=labels,
        id2label={i: f"class_{i}" for i in range(labels)},
        label2id={f"class_{i}": i for i in range(labels)},
    )
    if patch_mlp is not None:
        return LCryptViTForImageClassification(LCryptViTConfig(**settings, patch_embedding_mlp_size=patch_mlp)).eval()
    return ViTForImageClassification(ViTConfig(**settings)).eval()


def run_cli(capsys: Any, *argv: object) -> tuple[int, str, str]:
    """`hf-lcrypt ARGV` in-process: (exit status, stdout, stderr); also checks that no key file in the working folder
    has its secret (as written, or as hex for binary files) in anything printed."""
    from hf_lcrypt.cli import main

    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    for key_file in Path.cwd().rglob("*.key"):
        data = key_file.read_bytes()
        for secret in {data.strip().decode(errors="replace"), data.hex()}:
            assert not secret or (secret not in out and secret not in err), f"{key_file}'s secret was printed"
    return rc, out, err


def run_fresh_python(
    script: str, *args: object, cwd: Path, python: str | os.PathLike = sys.executable, **env: str
) -> subprocess.CompletedProcess:
    """`python -c SCRIPT ARGS` in a fresh process, as a Hub user runs it: no checkout on PYTHONPATH and a Hugging Face
    cache of its own (under `cwd`, where it runs), plus the `env` given; fails the test if the process fails."""
    env = {**os.environ, "HF_HOME": str(cwd / "hf-home"), "PYTHONPATH": "", **env}
    command = [str(python), "-c", script, *(str(a) for a in args)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
