"""Assemble the Gradio Space's repository folder: the app and its page (space/), a keyed model, and optionally a
PUBLIC demo key for that model, which the page then offers, labelled as public.

    python scripts/build_space.py outputs/breastmnist-encrypted/model OUT --demo-key outputs/breastmnist-encrypted.key
    HF_HUB_OFFLINE=1 python OUT/app.py        # or upload OUT as a Gradio Space

A demo key is published with the Space: anyone can read it, so use a key made for the demo and never one that
protects real images. Without --demo-key, visitors bring their own key (file, hex or passphrase) or generate one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from hf_lcrypt.hub.checks import check_weights_keep_the_key
from hf_lcrypt.hub.publish import stage_model_folder
from hf_lcrypt.keys import LCryptKey

SPACE = Path(__file__).resolve().parents[1] / "space"
SPACE_FILES = ("app.py", "README.md", "requirements.txt", "static", "examples")


def build_space(
    model_dir: Path, out: Path, demo_key: LCryptKey | None = None, allow_leaky_weights: bool = False
) -> list[str]:
    """Write the Space into `out` (which must not exist yet); returns the files written, relative to `out`. The
    weights pass `hf-lcrypt publish`'s check of what they alone give away of the key."""
    if out.exists():
        raise FileExistsError(f"{out} exists; choose a new folder for the Space.")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name in SPACE_FILES:
            source = SPACE / name
            if source.is_dir():
                shutil.copytree(source, staging / name)
            else:
                shutil.copy2(source, staging / name)
        (staging / "model").mkdir()
        stage_model_folder(model_dir, staging / "model")
        check_weights_keep_the_key(staging / "model", demo_key, allow_leak=allow_leaky_weights)
        if demo_key is not None:
            model_key_id = json.loads((staging / "model" / "config.json").read_text()).get("key_id")
            if demo_key.key_id != model_key_id:
                raise ValueError(
                    f"--demo-key has key_id {demo_key.key_id}, but the model is folded with key_id {model_key_id}: "
                    "the page would offer a key that gives chance-level predictions."
                )
            (staging / "demo.key").write_text(demo_key.to_hex() + "\n")
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="keyed model folder (weights, config, processor, remote code)")
    parser.add_argument("out", type=Path, help="new folder for the Space's repository")
    parser.add_argument("--demo-key", type=Path, help="key file of the model, published as the Space's PUBLIC demo key")
    parser.add_argument(
        "--allow-leaky-weights", action="store_true", help="build even if the weights give part of the key away"
    )
    args = parser.parse_args(argv)
    try:
        demo_key = LCryptKey.load(args.demo_key) if args.demo_key else None
        files = build_space(args.model_dir, args.out, demo_key, args.allow_leaky_weights)
    except (ValueError, OSError) as err:
        print(f"build_space: error: {err}", file=sys.stderr)
        return 1
    demo = " with its PUBLIC demo key (demo.key)" if args.demo_key else ""
    print(f"Space in {args.out}{demo}: {len(files)} files. Run it with: python {args.out / 'app.py'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
